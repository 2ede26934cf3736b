"""Build ``ifeval_general.jsonl``: instruction-following prompts on general, non-medical requests.

The general counterpart of ``ifeval_med``, built the same way: each prompt is a request
followed by one to three verifiable instructions from lm-eval's IFEval registry
(``lm_eval.tasks.ifeval.instructions_registry``), phrased here in our own words and with explicit
checker arguments, in IFEval's record format (``key``, ``prompt``, ``instruction_id_list``,
``kwargs``), so lm-eval's IFEval checkers score it unchanged. Requests are of two kinds:

* **word** (``NUM_WORD_PROMPTS``): about one entry of Ambrose Bierce's *The Devil's Dictionary*
  (1911, public domain, ``mergemed/data/devils_dictionary.txt``), quoting the first sentence of
  its definition; ``key`` is 10000 + the entry's position in the dictionary (from 0);
* **topic** (one per entry of ``topics`` in ``wording.json``): about an everyday subject
  (cooking, gardening, travel, hobbies...); ``key`` is 20000 + the topic's position there.

Entries are eligible when their first sentence is 30-160 characters, has no quotation marks,
brackets or italics, and contains none of ``EXCLUDED_WORDS`` (medical vocabulary, so that the
set stays general, and words of Bierce's that target a people, a faith or a sex, which make poor
benchmark prompts). Prompts are shuffled together.

The requests, topics, the wording of every instruction, the word lists and the instruction
weights are data, in ``wording.json`` beside this file; drawing, assembling, checking and
writing is ``ifeval_builder.py`` and ``ifeval_check.py`` in the folder above, shared with
``ifeval_med``. Generation uses only the standard library and is deterministic: every choice
comes from ``random.Random`` seeded with a fixed string, so two runs write the same bytes. After
generating, the script checks every record against lm-eval's registry (each id exists, its
``build_description`` accepts the kwargs, no two instructions of a prompt conflict in
``INSTRUCTION_CONFLICTS``) and that no prompt contains a word of ``EXCLUDED_WORDS``; the
registry check needs lm-eval and is skipped only with ``--no-validate``.

Usage::

    python evaluations/forgetting/ifeval_general/build.py [--output FILE] [--no-validate]

Licences: the prompt texts written here are Apache-2.0 (the project licence); the quoted
definitions are public domain.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(
    0, str(HERE.parent)
)  # ifeval_builder.py and ifeval_check.py, also when run as a script

import ifeval_builder  # noqa: E402
import ifeval_check  # noqa: E402

DICTIONARY = HERE.parents[2] / "data" / "devils_dictionary.txt"
OUTPUT = HERE / "ifeval_general.jsonl"
WORDING = ifeval_builder.Wording.read(HERE / "wording.json")
SEED = WORDING["seed"]

EXCLUDED_WORDS = re.compile(
    r"\b("
    # medical vocabulary: the set must measure general instruction following
    r"patients?|doctors?|physicians?|surgeons?|surgery|surgical|nurses?|hospitals?|clinics?|"
    r"clinical|medic\w*|diseases?|diagnos\w*|symptoms?|therap\w*|treatments?|drugs?|"
    r"pills?|dose|doses|health\w*|illness\w*|sick\w*|pains?|painful|cures?|cured|wounds?|"
    r"blood|poison\w*|plagues?|disorders?|bowels?|hypochondr\w*|infect\w*|cerebral|itch|"
    r"measles|convuls\w*|dyspep\w*|bilious|liver|organs?|trichin\w*|digest\w*|"
    r"imbecil\w*|idio[ct]\w*|lunatic\w*|insan\w*|"
    # death and violence, which Bierce jokes about often
    r"death|dead|die|dies|died|dying|kill\w*|corpses?|graves?|coffins?|sacrific\w*|"
    r"murder\w*|homicid\w*|slay\w*|hang\w*|bomb\w*|dynamite|"
    # Bierce's jokes at the expense of a people, a faith or a sex; swearing
    r"wom[ae]n|wi[fv]es?|female|male|sex|lady|ladies|hags?|bawd\w*|negro\w*|jews?|jewish|"
    r"heathens?|indians?|chin\w*|aborig\w*|savages?|slaves?|race|races|christians?|pagans?|"
    r"turks?|mohammed\w*|hindus?|caucasian|mongolian|afro\w*|scotch\w*|damn\w*|ass"
    r")\b",
    re.IGNORECASE,
)


ENTRY = re.compile(r"([A-Z][A-Z'\-]+), ((?:[a-z]+\.)+(?: ?[a-z]+\.)*)\s+(.+)", re.DOTALL)
"""A dictionary entry's opening paragraph: ``HEADWORD, pos.  Definition...``."""


def _unwrap(paragraph: str) -> str:
    """A wrapped paragraph as one line; a word hyphenated across a line break is rejoined
    keeping its hyphen (``cannon-\\nshot`` -> ``cannon-shot``)."""
    return " ".join(re.sub(r"-\n(?=\S)", "-", paragraph).split())


def dictionary_entries(text: str) -> list[tuple[int, str, str]]:
    """``(entry number, headword, first sentence of the definition)`` of every entry whose
    opening paragraph has the usual shape; entry numbers count every entry from 0."""
    paragraphs = re.split(r"\n[ \t]*\n", text)
    entries = []
    number = -1
    for paragraph in paragraphs:
        if not re.match(r"[A-Z][A-Z'\-]*\b", paragraph):
            continue  # verse, attributions, continuations
        number += 1
        match = ENTRY.match(paragraph)
        if match:
            definition = _unwrap(match.group(3))
            first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", definition)[0]
            entries.append((number, match.group(1), first))
    return entries


def eligible(definition: str) -> bool:
    """Whether a definition's first sentence may be quoted in a prompt (see the docstring)."""
    return (
        30 <= len(definition) <= 160
        and definition[0].isupper()
        and definition[-1] in ".!?"
        and not re.search(r"[\"_\[\]()]", definition)
        and not EXCLUDED_WORDS.search(definition)
    )


def word_sources(text: str) -> list[dict]:
    """The dictionary entries the word prompts are about: the ``num_word_prompts`` eligible
    ones whose seeded hash is smallest (so excluding one entry changes no other choice)."""
    candidates = [
        (number, word, definition)
        for number, word, definition in dictionary_entries(text)
        if eligible(definition) and not EXCLUDED_WORDS.search(word) and "-" not in word
    ]
    candidates.sort(key=lambda c: hashlib.sha256(f"{SEED}/{c[1]}".encode()).hexdigest())
    picked = candidates[: WORDING["num_word_prompts"]]
    return [
        {"key": 10000 + number, "kind": "word", "word": word.lower(), "definition": definition}
        for number, word, definition in picked
    ]


def topic_sources() -> list[dict]:
    """One source per everyday topic."""
    topics = WORDING["topics"]
    return [{"key": 20000 + i, "kind": "topic", "topic": t} for i, t in enumerate(topics)]


def make_doc(source: dict) -> dict:
    """One IFEval record for one source (deterministic: seeded by the source's key)."""
    rng = random.Random(f"{SEED}/{source['key']}")
    if source["kind"] == "word":
        tag, template = rng.choice(WORDING["word_requests"])
        request = template.format(word=source["word"], definition=source["definition"])
        subject = f"{source['word']} {source['definition']}"
    else:
        tag, template = rng.choice(WORDING["topic_requests"])
        request = template.format(topic=source["topic"])
        subject = source["topic"]
    ctx = {"kind": source["kind"], "request": request, "subject": subject}
    ctx.update(WORDING["by_kind"][source["kind"]])
    return ifeval_builder.instructed_record(rng, source["key"], request, tag, ctx, WORDING)


def build(text: str) -> list[dict]:
    """All records, from the dictionary's text (deterministic)."""
    sources = word_sources(text) + topic_sources()
    random.Random(SEED).shuffle(sources)
    return [make_doc(source) for source in sources]


def main(argv: list[str] | None = None) -> int:
    """Build, validate (also: no prompt has a word of ``EXCLUDED_WORDS``) and write the prompts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    return ifeval_check.command_line(
        parser,
        OUTPUT,
        lambda args: build(DICTIONARY.read_text(encoding="utf-8")),
        argv,
        excluded=EXCLUDED_WORDS,
    )


if __name__ == "__main__":
    sys.exit(main())
