"""Build ``ifeval_med.jsonl``: instruction-following prompts over real PubMedQA questions.

Over 500 lines because most of it is data: the prompt and instruction tables the set is built from.

Each prompt is a clinical or biomedical request about one PubMedQA test-set question (the 500
ids of ``test_ground_truth.json``), followed by one to three verifiable instructions taken from
lm-eval's IFEval registry (``lm_eval.tasks.ifeval.instructions_registry``), phrased here in our
own words and with explicit checker arguments. The output uses IFEval's record format
(``key``, ``prompt``, ``instruction_id_list``, ``kwargs``), so lm-eval's IFEval checkers score
it unchanged; ``key`` is the PubMed id of the question.

Generation uses only the standard library and is deterministic: every choice comes from
``random.Random`` seeded with a fixed string, so two runs write the same bytes. After
generating, the script checks every record against lm-eval's registry (each id exists, its
``build_description`` accepts the kwargs, no two instructions of a prompt conflict in
``INSTRUCTION_CONFLICTS``); that check needs lm-eval and is skipped only with
``--no-validate``.

Usage::

    python evaluations/forgetting/ifeval_med/build.py [--pubmedqa DIR] [--output FILE]

``DIR`` holds PubMedQA's test questions (MIT licence): either ``test.jsonl`` as written by
``evaluations/data/pubmedqa/convert.py``, or the release's ``ori_pqal.json`` and
``test_ground_truth.json``. By default the repository copy ``evaluations/data/pubmedqa/`` is
used, else ``$PUBMEDQA_DIR``, else ``/work/shared/data/pubmedqa``; all give the same output.

Licences: the prompt texts written here are Apache-2.0 (the project licence); the PubMedQA
questions they quote are MIT (see ``evaluations/data/pubmedqa/LICENSE``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
OUTPUT = HERE / "ifeval_med.jsonl"
SEED = "mergemed/ifeval_med/v1"
NUM_PROMPTS = 200
INSTRUCTIONS_PER_PROMPT = ((1, 30), (2, 45), (3, 25))
"""(how many instructions, weight)."""

DEFAULT_SOURCES = (
    REPO / "evaluations" / "data" / "pubmedqa",
    Path(os.environ["PUBMEDQA_DIR"]) if os.environ.get("PUBMEDQA_DIR") else None,
    Path("/work/shared/data/pubmedqa"),
)

# --------------------------------------------------------------------------------------------
# Requests. "{q}" is the PubMedQA question. Templates tagged "letter" are messages to a person,
# the only ones where fill-in placeholders make sense.
# --------------------------------------------------------------------------------------------

REQUESTS: tuple[tuple[str, str], ...] = (
    (
        "plain",
        'A patient has read about the research question "{q}" and asks what it means for '
        "people like them. Explain it in plain language and say what kind of answer the "
        "evidence could give.",
    ),
    (
        "plain",
        'Summarise for a busy general practitioner how a clinical study could answer "{q}" '
        "and what the main limitations of such a study would be.",
    ),
    (
        "plain",
        'You are preparing teaching material for medical students. Introduce the question "{q}" '
        "and describe the evidence that would be needed to settle it.",
    ),
    (
        "plain",
        'A colleague on the ward asks you: "{q}" Give a short and balanced reply that mentions '
        "which study design would best address it.",
    ),
    (
        "plain",
        'Write a brief introduction for a journal club session on the paper that asked "{q}" '
        "and suggest two points the group should discuss.",
    ),
    (
        "plain",
        'Explain to a team of nurses why the question "{q}" matters for everyday clinical '
        "practice.",
    ),
    (
        "plain",
        'Write a plain-language summary for a patient information leaflet on the topic "{q}" '
        "without overstating what research can show.",
    ),
    (
        "plain",
        'Outline how you would design a study to answer "{q}" including who you would enrol '
        "and what you would measure.",
    ),
    (
        "plain",
        'A medical student is unsure how to approach the question "{q}" Explain the key '
        "concepts they need to understand first.",
    ),
    (
        "plain",
        'List what a careful reader should check when judging a paper that asks "{q}"',
    ),
    (
        "plain",
        'Prepare talking points for a ward round discussion of the question "{q}"',
    ),
    (
        "plain",
        'A hospital manager wants to know whether the question "{q}" is relevant to how the '
        "service is run. Give them a short briefing.",
    ),
    (
        "letter",
        'Draft a short message from a clinic to a patient who asked us "{q}" The message should '
        "explain what is currently known in everyday words.",
    ),
    (
        "letter",
        "Write an email replying to a colleague at another hospital who asked for your view on "
        '"{q}" and propose how the two teams could look into it together.',
    ),
    (
        "letter",
        "Write a short letter to a patient's family doctor explaining that the patient keeps "
        'asking "{q}" and summarising how you answered them.',
    ),
)

# --------------------------------------------------------------------------------------------
# Instruction vocabulary (ours).
# --------------------------------------------------------------------------------------------

END_PHRASES = (
    "Please talk this over with your own doctor.",
    "Let me know if you have any further questions.",
    "This summary does not replace individual medical advice.",
    "That is the evidence in brief.",
    "I hope this helps your decision.",
)
GENERIC_KEYWORDS = (
    "evidence",
    "outcome",
    "limitation",
    "uncertainty",
    "benefit",
    "clinician",
    "sample",
    "follow-up",
)
FREQUENT_WORDS = ("evidence", "study", "patients", "risk")
RARE_WORDS = ("trial", "significant", "risk", "study")
FORBIDDEN = (
    "cure",
    "guarantee",
    "definitely",
    "miracle",
    "obviously",
    "proven",
    "always",
    "never",
    "simply",
    "basically",
)
FIRST_WORDS = ("overall", "however", "importantly", "finally", "clinically", "briefly")
LANGUAGES = (("es", "Spanish"), ("fr", "French"), ("de", "German"), ("pt", "Portuguese"))
ORDINALS = ("first", "second", "third", "fourth", "fifth")
STOPWORDS = frozenset(
    (
        "about",
        "above",
        "after",
        "again",
        "against",
        "before",
        "being",
        "below",
        "between",
        "could",
        "during",
        "effect",
        "effects",
        "further",
        "having",
        "however",
        "might",
        "other",
        "patients",
        "should",
        "their",
        "there",
        "these",
        "those",
        "through",
        "under",
        "until",
        "whether",
        "which",
        "while",
        "would",
    )
)


def _quote_list(words: list[str], joiner: str = "and") -> str:
    quoted = [f'"{w}"' for w in words]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + f" {joiner} " + quoted[-1]


def _bullets(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(2, 5)
    text = rng.choice(
        (
            f"Format the answer as exactly {n} markdown bullet points, each on its own line "
            'starting with "* ", and use no other list items.',
            f'Give exactly {n} points as a markdown list (each line begins with "* "); do not '
            "add any further bullets.",
        )
    )
    return text, {"num_bullets": n}


def _no_comma(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "Do not use a single comma anywhere in your reply.",
            "Write the whole reply without any commas.",
        )
    )
    return text, {}


def _end_phrase(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    phrase = rng.choice(END_PHRASES)
    text = rng.choice(
        (
            f'End your reply with the exact sentence "{phrase}" and write nothing after it.',
            f'The very last words of your answer must be "{phrase}" with nothing following.',
        )
    )
    return text, {"end_phrase": phrase}


def _json(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "Reply only with a JSON object (a ```json code block is fine) with keys such as "
            '"summary" and "evidence_needed".',
            "Return the whole answer as valid JSON, for example an object with the fields "
            '"question", "key_points" and "caveats". Put nothing outside the JSON.',
        )
    )
    return text, {}


def _num_words(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if rng.random() < 0.55:
        n = rng.choice((50, 80, 100, 150))
        text = rng.choice((f"Keep it under {n} words.", f"Use fewer than {n} words in total."))
        return text, {"num_words": n, "relation": "less than"}
    n = rng.choice((100, 150, 200, 300))
    text = rng.choice(
        (f"Write at least {n} words.", f"The answer should be {n} words long or longer.")
    )
    return text, {"num_words": n, "relation": "at least"}


def _lowercase(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "Write your entire reply in English using lowercase letters only; no capital "
            "letters at all.",
            "Answer in English, all in lowercase, without a single capital letter.",
        )
    )
    return text, {}


def _capitals(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "It will be printed on a warning poster, so write the whole reply in English "
            "capital letters only.",
            "Write everything in English and in upper case letters.",
        )
    )
    return text, {}


def _capital_words(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if rng.random() < 0.6:
        n = rng.choice((2, 3, 4))
        text = (
            f"Stress the most important terms by writing at least {n} words entirely in "
            "capital letters."
        )
        return text, {"capital_frequency": n, "capital_relation": "at least"}
    n = rng.choice((4, 6))
    text = (
        f"Use fewer than {n} words written entirely in capital letters (abbreviations and the "
        'word "I" count as well).'
    )
    return text, {"capital_frequency": n, "capital_relation": "less than"}


def _question_keyword(ctx: dict, rng: random.Random) -> str | None:
    words = sorted(
        {
            w.lower()
            for w in re.findall(r"[A-Za-z]+", ctx["question"])
            if len(w) >= 6 and w.lower() not in STOPWORDS
        }
    )
    return rng.choice(words) if words else None


def _existence(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    words = [rng.choice(GENERIC_KEYWORDS)]
    from_question = _question_keyword(ctx, rng)
    if from_question and from_question not in words and rng.random() < 0.7:
        words.append(from_question)
    words.sort()
    text = rng.choice(
        (
            f"Make sure your answer contains the word{'s' if len(words) > 1 else ''} "
            f"{_quote_list(words)}.",
            f"Include {_quote_list(words)} somewhere in the text.",
        )
    )
    return text, {"keywords": words}


def _frequency(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if rng.random() < 0.65:
        word = rng.choice(FREQUENT_WORDS)
        n = rng.choice((2, 3))
        text = f'Use the word "{word}" at least {n} times.'
        return text, {"keyword": word, "frequency": n, "relation": "at least"}
    choices = [w for w in RARE_WORDS if not re.search(w, ctx["request"], re.IGNORECASE)]
    word = rng.choice(choices)
    n = rng.choice((2, 3))
    text = f'Mention the word "{word}" fewer than {n} times.'
    return text, {"keyword": word, "frequency": n, "relation": "less than"}


def _forbidden(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    allowed = [w for w in FORBIDDEN if not re.search(rf"\b{w}\b", ctx["request"], re.IGNORECASE)]
    words = sorted(rng.sample(allowed, rng.choice((1, 2))))
    text = rng.choice(
        (
            f"Avoid the word{'s' if len(words) > 1 else ''} {_quote_list(words, 'and')} "
            "completely.",
            f"Do not use {_quote_list(words, 'or')} anywhere in the reply.",
        )
    )
    return text, {"forbidden_words": words}


def _sentences(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if rng.random() < 0.5:
        n = rng.choice((3, 4, 5, 6))
        text = rng.choice(
            (f"Answer in fewer than {n} sentences.", f"Use at most {n - 1} sentences.")
        )
        return text, {"num_sentences": n, "relation": "less than"}
    n = rng.choice((4, 5, 6, 8))
    text = rng.choice((f"Write at least {n} sentences.", f"Use {n} or more full sentences."))
    return text, {"num_sentences": n, "relation": "at least"}


def _paragraphs(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(2, 4)
    text = (
        f"Split the response into exactly {n} paragraphs and put the markdown divider *** "
        "between consecutive paragraphs."
    )
    return text, {"num_paragraphs": n}


def _nth_paragraph(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(2, 4)
    k = rng.randint(1, n)
    word = rng.choice(FIRST_WORDS)
    text = (
        f"Write exactly {n} paragraphs separated by single blank lines (no other blank lines), "
        f'and start the {ORDINALS[k - 1]} paragraph with the word "{word}".'
    )
    return text, {"num_paragraphs": n, "nth_paragraph": k, "first_word": word}


def _highlights(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(1, 3)
    text = (
        f"Highlight at least {n} key phrase{'s' if n > 1 else ''} with markdown emphasis, "
        "for example *main finding*."
    )
    return text, {"num_highlights": n}


def _sections(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(2, 4)
    marker = rng.choice(("Section", "SECTION"))
    text = (
        f"Organise the answer into {n} sections, each opening with a heading line "
        f'"{marker} 1", "{marker} 2" and so on.'
    )
    return text, {"section_spliter": marker, "num_sections": n}


def _postscript(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    marker = rng.choice(("P.S.", "P.P.S"))
    text = rng.choice(
        (
            f'After the main answer, add a postscript that begins with "{marker}".',
            f'Close with a short postscript starting with "{marker}".',
        )
    )
    return text, {"postscript_marker": marker}


def _placeholders(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(1, 3)
    text = (
        f"Leave at least {n} placeholder{'s' if n > 1 else ''} in square brackets, such as "
        "[patient name] or [clinic phone number], for details to be filled in later."
    )
    return text, {"num_placeholders": n}


def _title(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "Give the answer a title wrapped in double angle brackets, like <<What we know>>.",
            "Start with a title inside double angular brackets, for example <<Evidence in brief>>.",
        )
    )
    return text, {}


def _quotation(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = "Put your whole reply inside one pair of double quotation marks."
    return text, {}


def _two_responses(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = (
        "Give two different answers, the first for a patient and the second for a clinician, "
        "separated by a line of six asterisks (******) and nothing else."
    )
    return text, {}


def _constrained(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = (
        "Give only your overall verdict, using exactly one of these sentences: "
        '"My answer is yes.", "My answer is no." or "My answer is maybe."'
    )
    return text, {}


def _language(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    code, name = rng.choice(LANGUAGES)
    text = rng.choice(
        (
            f"The reader only speaks {name}, so write your entire answer in {name} and in no "
            "other language.",
            f"Respond entirely in {name}.",
        )
    )
    return text, {"language": code}


def _repeat(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    # The prompt_to_repeat kwarg is filled in when the prompt is assembled: it is all the text
    # before this sentence.
    text = (
        "Before answering, copy everything I wrote before this sentence word for word, then "
        "give your answer; do not copy this sentence."
    )
    return text, {"prompt_to_repeat": None}


# id -> (weight, generator, required request tag or None)
INSTRUCTIONS = {
    "detectable_format:number_bullet_lists": (10, _bullets, None),
    "punctuation:no_comma": (10, _no_comma, None),
    "startend:end_checker": (9, _end_phrase, None),
    "detectable_format:json_format": (10, _json, None),
    "length_constraints:number_words": (10, _num_words, None),
    "change_case:english_lowercase": (11, _lowercase, None),
    "change_case:english_capital": (4, _capitals, None),
    "change_case:capital_word_frequency": (4, _capital_words, None),
    "keywords:existence": (10, _existence, None),
    "keywords:frequency": (7, _frequency, None),
    "keywords:forbidden_words": (8, _forbidden, None),
    "length_constraints:number_sentences": (7, _sentences, None),
    "length_constraints:number_paragraphs": (7, _paragraphs, None),
    "length_constraints:nth_paragraph_first_word": (5, _nth_paragraph, None),
    "detectable_format:number_highlighted_sections": (7, _highlights, None),
    "detectable_format:multiple_sections": (9, _sections, None),
    "detectable_content:postscript": (7, _postscript, None),
    "detectable_content:number_placeholders": (40, _placeholders, "letter"),
    "detectable_format:title": (8, _title, None),
    "startend:quotation": (6, _quotation, None),
    "combination:two_responses": (8, _two_responses, None),
    "combination:repeat_prompt": (7, _repeat, None),
    "detectable_format:constrained_response": (7, _constrained, None),
    "language:response_language": (4, _language, None),
}

# Instructions that leave room for only a few companions (whole-response formats).
ONLY_WITH = {
    "detectable_format:constrained_response": set(),
    "detectable_format:json_format": {"keywords:existence", "keywords:forbidden_words"},
    "combination:two_responses": {
        "keywords:existence",
        "keywords:forbidden_words",
        "detectable_format:title",
        "punctuation:no_comma",
    },
    "combination:repeat_prompt": {
        "keywords:existence",
        "detectable_format:title",
        "punctuation:no_comma",
    },
}

# Pairs that cannot both be followed, or that read as contradictory or confusing.
CLASHES = (
    # A response language other than English rules out English words and case rules.
    ("language:response_language", "keywords:existence"),
    ("language:response_language", "keywords:frequency"),
    ("language:response_language", "keywords:forbidden_words"),
    ("language:response_language", "startend:end_checker"),
    ("language:response_language", "change_case:english_capital"),
    ("language:response_language", "change_case:english_lowercase"),
    ("language:response_language", "change_case:capital_word_frequency"),
    ("language:response_language", "detectable_format:multiple_sections"),
    # Case rules.
    ("change_case:english_lowercase", "change_case:english_capital"),
    ("change_case:capital_word_frequency", "change_case:english_lowercase"),
    ("change_case:capital_word_frequency", "change_case:english_capital"),
    ("change_case:english_lowercase", "startend:end_checker"),
    ("change_case:english_lowercase", "detectable_content:postscript"),
    ("change_case:english_lowercase", "detectable_format:multiple_sections"),
    ("change_case:english_capital", "startend:end_checker"),
    ("change_case:english_capital", "detectable_format:multiple_sections"),
    # Layout rules.
    ("length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word"),
    ("length_constraints:number_paragraphs", "length_constraints:number_sentences"),
    ("length_constraints:number_paragraphs", "detectable_format:multiple_sections"),
    ("length_constraints:number_paragraphs", "detectable_content:postscript"),
    ("length_constraints:nth_paragraph_first_word", "detectable_format:multiple_sections"),
    ("length_constraints:nth_paragraph_first_word", "detectable_format:title"),
    ("length_constraints:nth_paragraph_first_word", "detectable_content:postscript"),
    ("length_constraints:number_sentences", "detectable_format:number_bullet_lists"),
    ("length_constraints:number_sentences", "detectable_format:multiple_sections"),
    ("length_constraints:number_sentences", "length_constraints:number_words"),
    ("length_constraints:number_sentences", "length_constraints:nth_paragraph_first_word"),
    ("detectable_format:number_highlighted_sections", "detectable_format:number_bullet_lists"),
    ("detectable_format:number_highlighted_sections", "detectable_format:multiple_sections"),
    ("startend:quotation", "detectable_format:title"),
    ("startend:end_checker", "detectable_content:postscript"),
)


def compatible(a: str, b: str) -> bool:
    """Whether instructions ``a`` and ``b`` may share a prompt (by our own rules)."""
    if a == b:
        return False
    if a in ONLY_WITH and b not in ONLY_WITH[a]:
        return False
    if b in ONLY_WITH and a not in ONLY_WITH[b]:
        return False
    return (a, b) not in CLASHES and (b, a) not in CLASHES


# --------------------------------------------------------------------------------------------
# Assembly.
# --------------------------------------------------------------------------------------------


def _has_source(folder: Path) -> bool:
    return (folder / "test.jsonl").is_file() or (
        (folder / "ori_pqal.json").is_file() and (folder / "test_ground_truth.json").is_file()
    )


def find_source(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else [p for p in DEFAULT_SOURCES if p]
    for folder in candidates:
        if _has_source(folder):
            return folder
    names = ", ".join(str(p) for p in candidates)
    raise SystemExit(f"no PubMedQA test.jsonl or ori_pqal.json + test ids in: {names}")


def load_questions(source: Path) -> dict[str, str]:
    """PubMed id -> question, for the 500 questions of the PubMedQA test split.

    Reads the repository's ``test.jsonl`` (fields ``id`` and ``question``, written by
    ``evaluations/data/pubmedqa/convert.py``) when present, else the original release files."""
    if (source / "test.jsonl").is_file():
        lines = (source / "test.jsonl").read_text(encoding="utf-8").splitlines()
        raw = {r["id"]: r["question"] for r in map(json.loads, filter(str.strip, lines))}
    else:
        records = json.loads((source / "ori_pqal.json").read_text(encoding="utf-8"))
        test_ids = json.loads((source / "test_ground_truth.json").read_text(encoding="utf-8"))
        raw = {pubid: records[pubid]["QUESTION"] for pubid in test_ids}
    questions = {}
    for pubid in sorted(raw):
        text = " ".join(raw[pubid].split())  # also folds no-break spaces
        questions[pubid] = text.replace('"', "'")
    return questions


def _weighted(rng: random.Random, options: list[str]) -> str:
    weights = [INSTRUCTIONS[name][0] for name in options]
    return rng.choices(options, weights=weights, k=1)[0]


def make_doc(pubid: str, question: str) -> dict:
    rng = random.Random(f"{SEED}/{pubid}")
    tag, template = rng.choice(REQUESTS)
    request = template.format(q=question)
    ctx = {"question": question, "request": request}
    count = rng.choices(
        [n for n, _ in INSTRUCTIONS_PER_PROMPT], weights=[w for _, w in INSTRUCTIONS_PER_PROMPT]
    )[0]
    chosen: list[str] = []
    for _ in range(count):
        options = [
            name
            for name, (_, _, needs) in INSTRUCTIONS.items()
            if (needs is None or needs == tag) and all(compatible(name, c) for c in chosen)
        ]
        if not options:
            break
        chosen.append(_weighted(rng, options))
    # The repeat instruction refers to the text before it, so it goes last.
    chosen.sort(key=lambda name: name == "combination:repeat_prompt")
    parts = {name: INSTRUCTIONS[name][1](rng, ctx) for name in chosen}
    if "combination:repeat_prompt" in parts and "punctuation:no_comma" in parts:
        # The copied text (all but the repeat sentence) must be comma-free too, else drop the
        # no-comma rule.
        copied = [request] + [t for n, (t, _) in parts.items() if n != "combination:repeat_prompt"]
        if any("," in text for text in copied):
            chosen.remove("punctuation:no_comma")
            del parts["punctuation:no_comma"]
    prompt = request
    for name in chosen:
        text, args = parts[name]
        if name == "combination:repeat_prompt":
            args["prompt_to_repeat"] = prompt
        prompt = f"{prompt} {text}"
    kwargs = [parts[name][1] for name in chosen]
    _check_consistency(pubid, chosen, kwargs)
    return {"key": int(pubid), "prompt": prompt, "instruction_id_list": chosen, "kwargs": kwargs}


def _check_consistency(pubid: str, ids: list[str], kwargs: list[dict]) -> None:
    """Refuse arguments that contradict each other (the generators are written to avoid it)."""
    args = dict(zip(ids, kwargs, strict=True))
    required = []
    for a in kwargs:
        required += a.get("keywords") or []
        required += [a[k] for k in ("end_phrase", "first_word", "prompt_to_repeat") if k in a]
    for word in args.get("keywords:forbidden_words", {}).get("forbidden_words", []):
        if any(re.search(rf"\b{word}\b", text, re.IGNORECASE) for text in required):
            raise AssertionError(f"{pubid}: forbidden {word!r} is also required")
    if "punctuation:no_comma" in args and any("," in text for text in required):
        raise AssertionError(f"{pubid}: required text with a comma under no_comma")


def build(source: Path) -> list[dict]:
    questions = load_questions(source)
    picked = random.Random(SEED).sample(sorted(questions), NUM_PROMPTS)
    return [make_doc(pubid, questions[pubid]) for pubid in picked]


def serialise(docs: list[dict]) -> str:
    return "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)


# --------------------------------------------------------------------------------------------
# Validation against lm-eval's registry.
# --------------------------------------------------------------------------------------------


def validate(docs: list[dict]) -> None:
    """Check every record against lm-eval's IFEval registry; raise on the first problem."""
    try:  # lm-eval's IFEval utilities download nltk's punkt_tab at import unless it is found
        from mergemed.evaluation.punkt import ensure_punkt
    except ImportError:
        pass
    else:
        ensure_punkt()
    from lm_eval.tasks.ifeval import instructions_registry as registry

    conflicts: dict[str, set[str]] = {}
    for name, others in registry.INSTRUCTION_CONFLICTS.items():
        for other in others:
            conflicts.setdefault(name, set()).add(other)
            conflicts.setdefault(other, set()).add(name)
    keys = set()
    for doc in docs:
        if doc["key"] in keys:
            raise ValueError(f"duplicate key {doc['key']}")
        keys.add(doc["key"])
        ids, kwargs = doc["instruction_id_list"], doc["kwargs"]
        if not 1 <= len(ids) <= 3 or len(ids) != len(kwargs) or len(set(ids)) != len(ids):
            raise ValueError(f"{doc['key']}: bad instruction list {ids}")
        for index, name in enumerate(ids):
            if name not in registry.INSTRUCTION_DICT:
                raise ValueError(f"{doc['key']}: {name} is not in lm-eval's IFEval registry")
            checker = registry.INSTRUCTION_DICT[name](name)
            checker.build_description(**kwargs[index])
            described = checker.get_instruction_args() or {}
            for arg, value in kwargs[index].items():
                if described.get(arg) != value and not (
                    isinstance(value, list) and sorted(described.get(arg) or []) == sorted(value)
                ):
                    raise ValueError(f"{doc['key']}: {name} did not take {arg}={value!r}")
            for other in ids[index + 1 :]:
                if other in conflicts.get(name, ()):
                    raise ValueError(f"{doc['key']}: {name} conflicts with {other}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pubmedqa", type=Path, help="folder with ori_pqal.json and test ids")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--no-validate", action="store_true", help="skip the lm-eval check")
    args = parser.parse_args(argv)
    docs = build(find_source(args.pubmedqa))
    if not args.no_validate:
        validate(docs)
    args.output.write_text(serialise(docs), encoding="utf-8", newline="\n")
    counts = Counter(name for doc in docs for name in doc["instruction_id_list"])
    sizes = Counter(len(doc["instruction_id_list"]) for doc in docs)
    print(f"wrote {len(docs)} prompts to {args.output}", file=sys.stderr)
    print(f"instructions per prompt: {dict(sorted(sizes.items()))}", file=sys.stderr)
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:4d} {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
