"""Build ``ifeval_general.jsonl``: instruction-following prompts on general, non-medical requests.

Over 500 lines because most of it is data: the prompt and instruction tables the set is built from.

The general counterpart of ``ifeval_med``, built the same way: each prompt is a request
followed by one to three verifiable instructions from lm-eval's IFEval registry
(``lm_eval.tasks.ifeval.instructions_registry``), phrased here in our own words and with explicit
checker arguments, in IFEval's record format (``key``, ``prompt``, ``instruction_id_list``,
``kwargs``), so lm-eval's IFEval checkers score it unchanged. Requests are of two kinds:

* **word** (``NUM_WORD_PROMPTS``): about one entry of Ambrose Bierce's *The Devil's Dictionary*
  (1911, public domain, ``mergemed/data/devils_dictionary.txt``), quoting the first sentence of
  its definition; ``key`` is 10000 + the entry's position in the dictionary (from 0);
* **topic** (one per entry of ``TOPICS``): about an everyday subject (cooking, gardening,
  travel, hobbies...); ``key`` is 20000 + the topic's position in ``TOPICS``.

Entries are eligible when their first sentence is 30-160 characters, has no quotation marks,
brackets or italics, and contains none of ``EXCLUDED_WORDS`` (medical vocabulary, so that the
set stays general, and words of Bierce's that target a people, a faith or a sex, which make poor
benchmark prompts). Prompts are shuffled together.

Generation uses only the standard library and is deterministic: every choice comes from
``random.Random`` seeded with a fixed string, so two runs write the same bytes. After
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
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DICTIONARY = HERE.parents[2] / "data" / "devils_dictionary.txt"
OUTPUT = HERE / "ifeval_general.jsonl"
SEED = "mergemed/ifeval_general/v1"
NUM_WORD_PROMPTS = 100
INSTRUCTIONS_PER_PROMPT = ((1, 30), (2, 45), (3, 25))
"""(how many instructions, weight)."""

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

TOPICS = (
    "keeping a small vegetable garden",
    "planning a train journey across several countries",
    "learning to play the guitar",
    "saving money on the weekly shopping",
    "organising a home library",
    "baking bread at home",
    "choosing a first bicycle",
    "looking after a pet rabbit",
    "running a neighbourhood book swap",
    "writing a good thank-you letter",
    "planning a birthday party for a child",
    "learning a second language as an adult",
    "repairing a flat bicycle tyre",
    "keeping a diary",
    "buying a used car",
    "hosting a board game evening",
    "packing for a weekend camping trip",
    "painting a bedroom",
    "starting a chess club",
    "composting kitchen scraps",
    "cutting household energy bills",
    "making a family budget",
    "taking better photographs with a phone",
    "watching birds in a city park",
    "brewing a good pot of tea",
    "organising a street party",
    "preparing for a job interview",
    "moving to a new city",
    "teaching a dog to sit",
    "visiting a museum with children",
    "writing a short poem",
    "keeping houseplants alive in winter",
    "planning a picnic",
    "clearing out a garage",
    "learning to knit",
    "building a simple bookshelf",
    "choosing books for a long flight",
    "sorting household recycling",
    "making friends in a new town",
    "organising old digital photos",
    "cooking a simple vegetable curry",
    "reading a bus timetable",
    "learning to juggle",
    "planting a tree",
    "tidying a messy desk",
    "making pizza at home",
    "writing a first short story",
    "preparing a family quiz night",
    "learning to touch-type",
    "decorating a small flat on a budget",
)

# --------------------------------------------------------------------------------------------
# Requests. "{word}" is a headword in lowercase, "{definition}" the first sentence of its
# definition, "{topic}" an entry of TOPICS. Templates tagged "letter" are messages to a person,
# the only ones where fill-in placeholders make sense.
# --------------------------------------------------------------------------------------------

WORD_REQUESTS: tuple[tuple[str, str], ...] = (
    (
        "plain",
        'In The Devil\'s Dictionary (1911) Ambrose Bierce defined "{word}" as '
        '"{definition}" Explain the joke to a reader who has never heard of Bierce.',
    ),
    (
        "plain",
        'Write a new satirical definition of the word "{word}" for the present day, in the '
        'spirit of Ambrose Bierce, who wrote: "{definition}"',
    ),
    (
        "plain",
        'Ambrose Bierce\'s definition of "{word}" reads: "{definition}" Is it fair? Argue '
        "for one side.",
    ),
    (
        "plain",
        'Give the ordinary dictionary meaning of "{word}" and compare it with the cynical '
        'version in The Devil\'s Dictionary: "{definition}"',
    ),
    (
        "plain",
        "Write a short story about everyday life that illustrates this definition of "
        '"{word}" from The Devil\'s Dictionary: "{definition}"',
    ),
    (
        "plain",
        "A student is presenting The Devil's Dictionary to the class, starting with its entry "
        'for "{word}": "{definition}" Write what the student could say.',
    ),
    (
        "plain",
        'Describe how the way people use the word "{word}" has changed since 1911, when '
        'Ambrose Bierce defined it as "{definition}"',
    ),
    (
        "letter",
        "Write an email to a friend recommending The Devil's Dictionary, quoting its entry for "
        '"{word}": "{definition}"',
    ),
    (
        "letter",
        "Draft a note to the members of a book club announcing that the next meeting will "
        'discuss Bierce\'s definition of "{word}": "{definition}"',
    ),
    (
        "letter",
        "Write a letter to the editor of a local newspaper arguing that Bierce's definition of "
        '"{word}" still fits life in your town. He wrote: "{definition}"',
    ),
)

TOPIC_REQUESTS: tuple[tuple[str, str], ...] = (
    ("plain", "Give a friend practical advice on {topic}."),
    ("plain", "Write a short blog post for beginners about {topic}."),
    ("plain", "Explain the basics of {topic} to a twelve-year-old."),
    ("plain", "What are the most common mistakes people make when {topic}?"),
    ("plain", "Describe a weekend plan for someone who wants to start {topic}."),
    ("plain", "Compare the costs and the rewards of {topic}."),
    ("letter", "Write an email to a neighbour who has asked for your tips on {topic}."),
    (
        "letter",
        "Draft a notice for a community noticeboard inviting people to a free evening "
        "workshop on {topic}.",
    ),
    ("letter", "Write a short letter to a younger cousin encouraging them to try {topic}."),
)

# --------------------------------------------------------------------------------------------
# Instruction vocabulary (ours). None of it contains the letters of RARE_LETTERS, so a
# "fewer than N" letter rule never clashes with a required word.
# --------------------------------------------------------------------------------------------

END_PHRASES = (
    "I hope this helps.",
    "Thank you for reading.",
    "That is all for today.",
    "Let me know what you think.",
    "Have a lovely week.",
)
GENERIC_KEYWORDS = (
    "history",
    "habit",
    "friend",
    "reason",
    "humour",
    "practical",
    "simple",
    "morning",
)
FREQUENT_WORDS = ("people", "time", "good", "way")
RARE_WORDS = ("very", "really", "thing", "just")
FORBIDDEN = (
    "very",
    "really",
    "actually",
    "basically",
    "literally",
    "amazing",
    "awesome",
    "stuff",
    "nice",
    "totally",
)
FIRST_WORDS = ("today", "however", "finally", "meanwhile", "sometimes", "honestly")
COMMON_LETTERS = ("b", "k", "v", "w", "y")
RARE_LETTERS = ("q", "z")
LANGUAGES = (("es", "Spanish"), ("fr", "French"), ("de", "German"), ("it", "Italian"))
ORDINALS = ("first", "second", "third", "fourth", "fifth")
STOPWORDS = frozenset(
    (
        "about",
        "after",
        "again",
        "against",
        "ambrose",
        "before",
        "being",
        "bierce",
        "between",
        "could",
        "definition",
        "dictionary",
        "during",
        "every",
        "other",
        "should",
        "their",
        "there",
        "these",
        "those",
        "through",
        "under",
        "which",
        "while",
        "whose",
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
            f"Answer with exactly {n} markdown bullet points, each on its own line and starting "
            'with "* ", and no other list items.',
            f'Make it a markdown list of exactly {n} points (each line begins with "* "), with '
            "no further bullets.",
        )
    )
    return text, {"num_bullets": n}


def _no_comma(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        ("Do not use any commas in your reply.", "Your whole answer must be free of commas.")
    )
    return text, {}


def _end_phrase(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    phrase = rng.choice(END_PHRASES)
    text = rng.choice(
        (
            f'Finish with the exact sentence "{phrase}" and write nothing after it.',
            f'The last words of your reply must be "{phrase}" with nothing following them.',
        )
    )
    return text, {"end_phrase": phrase}


def _json(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "Reply only with a JSON object (a ```json code block is fine) with keys such as "
            '"summary" and "details".',
            "Return the whole answer as valid JSON, for example an object with the fields "
            '"title", "points" and "conclusion". Put nothing outside the JSON.',
        )
    )
    return text, {}


def _num_words(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if rng.random() < 0.55:
        n = rng.choice((40, 60, 80, 120))
        text = rng.choice((f"Keep it under {n} words.", f"Use fewer than {n} words."))
        return text, {"num_words": n, "relation": "less than"}
    n = rng.choice((100, 150, 200, 250))
    text = rng.choice((f"Write at least {n} words.", f"Make the reply {n} words or longer."))
    return text, {"num_words": n, "relation": "at least"}


def _lowercase(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "Write the entire reply in English and in lowercase letters only; no capitals at all.",
            "Answer in English, all in lowercase, without one capital letter.",
        )
    )
    return text, {}


def _capitals(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "It is going on a poster, so write the whole reply in English and in capital "
            "letters only.",
            "Write everything in English and in upper case.",
        )
    )
    return text, {}


def _capital_words(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if rng.random() < 0.6:
        n = rng.choice((2, 3, 4))
        text = f"Emphasise the key ideas by writing at least {n} words entirely in capitals."
        return text, {"capital_frequency": n, "capital_relation": "at least"}
    n = rng.choice((3, 5))
    text = (
        f'Use fewer than {n} words written entirely in capital letters (the word "I" and '
        "abbreviations count too)."
    )
    return text, {"capital_frequency": n, "capital_relation": "less than"}


def _request_keyword(ctx: dict, rng: random.Random) -> str | None:
    words = sorted(
        {
            w.lower()
            for w in re.findall(r"[A-Za-z]+", ctx["subject"])
            if len(w) >= 5 and w.lower() not in STOPWORDS
        }
    )
    return rng.choice(words) if words else None


def _existence(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    words = [rng.choice(GENERIC_KEYWORDS)]
    own = _request_keyword(ctx, rng)
    if own and own not in words and rng.random() < 0.7:
        words.append(own)
    words.sort()
    text = rng.choice(
        (
            f"Make sure the word{'s' if len(words) > 1 else ''} {_quote_list(words)} "
            f"appear{'' if len(words) > 1 else 's'} in your answer.",
            f"Use {_quote_list(words)} somewhere in the text.",
        )
    )
    return text, {"keywords": words}


def _frequency(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if rng.random() < 0.65:
        word = rng.choice(FREQUENT_WORDS)
        n = rng.choice((2, 3))
        text = f'Use the word "{word}" at least {n} times.'
        return text, {"keyword": word, "frequency": n, "relation": "at least"}
    choices = [w for w in RARE_WORDS if not re.search(rf"\b{w}\b", ctx["request"], re.I)]
    word = rng.choice(choices)
    n = rng.choice((2, 3))
    text = f'Use the word "{word}" fewer than {n} times.'
    return text, {"keyword": word, "frequency": n, "relation": "less than"}


def _forbidden(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    allowed = [w for w in FORBIDDEN if not re.search(rf"\b{w}\b", ctx["request"], re.I)]
    words = sorted(rng.sample(allowed, rng.choice((1, 2))))
    text = rng.choice(
        (
            f"Avoid the word{'s' if len(words) > 1 else ''} {_quote_list(words)} entirely.",
            f"Do not write {_quote_list(words, 'or')} anywhere in the reply.",
        )
    )
    return text, {"forbidden_words": words}


def _letters(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    absent = [c for c in RARE_LETTERS if c not in ctx["request"].lower()]
    if absent and rng.random() < 0.4:
        letter = rng.choice(absent)
        n = rng.choice((2, 3))
        text = f'Use the letter "{letter}" fewer than {n} times in the whole reply.'
        return text, {"letter": letter, "let_frequency": n, "let_relation": "less than"}
    letter = rng.choice(COMMON_LETTERS)
    n = rng.choice((5, 8, 10))
    text = f'The letter "{letter}" should appear at least {n} times in your reply.'
    return text, {"letter": letter, "let_frequency": n, "let_relation": "at least"}


def _sentences(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if rng.random() < 0.5:
        n = rng.choice((3, 4, 5, 6))
        text = rng.choice(
            (f"Answer in fewer than {n} sentences.", f"Use at most {n - 1} sentences.")
        )
        return text, {"num_sentences": n, "relation": "less than"}
    n = rng.choice((4, 5, 6, 8))
    text = rng.choice((f"Write at least {n} sentences.", f"Use {n} or more complete sentences."))
    return text, {"num_sentences": n, "relation": "at least"}


def _paragraphs(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(2, 4)
    text = (
        f"Write exactly {n} paragraphs and separate consecutive paragraphs with the markdown "
        "divider ***."
    )
    return text, {"num_paragraphs": n}


def _nth_paragraph(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(2, 4)
    k = rng.randint(1, n)
    word = rng.choice(FIRST_WORDS)
    text = (
        f"Use exactly {n} paragraphs separated by single blank lines (no other blank lines), "
        f'and begin the {ORDINALS[k - 1]} paragraph with the word "{word}".'
    )
    return text, {"num_paragraphs": n, "nth_paragraph": k, "first_word": word}


def _highlights(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(1, 3)
    text = (
        f"Highlight at least {n} phrase{'s' if n > 1 else ''} with markdown emphasis, *like this*."
    )
    return text, {"num_highlights": n}


def _sections(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(2, 4)
    marker = rng.choice(("Section", "PART"))
    text = (
        f"Divide the reply into {n} sections, each opening with a heading line "
        f'"{marker} 1", "{marker} 2" and so on.'
    )
    return text, {"section_spliter": marker, "num_sections": n}


def _postscript(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    marker = rng.choice(("P.S.", "P.P.S"))
    text = rng.choice(
        (
            f'After the main text, add a postscript beginning with "{marker}".',
            f'End with a short postscript that starts with "{marker}".',
        )
    )
    return text, {"postscript_marker": marker}


def _placeholders(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    n = rng.randint(1, 3)
    text = (
        f"Leave at least {n} placeholder{'s' if n > 1 else ''} in square brackets, such as "
        "[name] or [date], to be filled in later."
    )
    return text, {"num_placeholders": n}


def _title(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    text = rng.choice(
        (
            "Give the reply a title in double angle brackets, like <<A short guide>>.",
            "Begin with a title inside double angular brackets, for example <<In brief>>.",
        )
    )
    return text, {}


def _quotation(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    return "Wrap your entire reply in one pair of double quotation marks.", {}


def _two_responses(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    if ctx["kind"] == "word":
        who = "the first serious and the second playful"
    else:
        who = "the first for a complete beginner and the second for someone with experience"
    text = (
        f"Give two different answers, {who}, separated by a line of six asterisks (******) "
        "and nothing else."
    )
    return text, {}


def _constrained(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    question = (
        "whether the definition is fair" if ctx["kind"] == "word" else "whether it is worth trying"
    )
    text = (
        f"Give only your verdict on {question}, using exactly one of these sentences: "
        '"My answer is yes.", "My answer is no." or "My answer is maybe."'
    )
    return text, {}


def _language(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    code, name = rng.choice(LANGUAGES)
    text = rng.choice(
        (
            f"The reader only understands {name}, so write the whole answer in {name} and in "
            "no other language.",
            f"Respond entirely in {name}.",
        )
    )
    return text, {"language": code}


def _repeat(rng: random.Random, ctx: dict) -> tuple[str, dict]:
    # prompt_to_repeat is filled in when the prompt is assembled: all the text before this.
    text = (
        "First copy everything I wrote before this sentence word for word, then give your "
        "answer; do not copy this sentence."
    )
    return text, {"prompt_to_repeat": None}


# id -> (weight, generator, required request tag or None)
INSTRUCTIONS = {
    "detectable_format:number_bullet_lists": (10, _bullets, None),
    "punctuation:no_comma": (10, _no_comma, None),
    "startend:end_checker": (9, _end_phrase, None),
    "detectable_format:json_format": (9, _json, None),
    "length_constraints:number_words": (10, _num_words, None),
    "change_case:english_lowercase": (10, _lowercase, None),
    "change_case:english_capital": (4, _capitals, None),
    "change_case:capital_word_frequency": (5, _capital_words, None),
    "keywords:existence": (10, _existence, None),
    "keywords:frequency": (7, _frequency, None),
    "keywords:forbidden_words": (8, _forbidden, None),
    "keywords:letter_frequency": (6, _letters, None),
    "length_constraints:number_sentences": (7, _sentences, None),
    "length_constraints:number_paragraphs": (7, _paragraphs, None),
    "length_constraints:nth_paragraph_first_word": (5, _nth_paragraph, None),
    "detectable_format:number_highlighted_sections": (7, _highlights, None),
    "detectable_format:multiple_sections": (8, _sections, None),
    "detectable_content:postscript": (7, _postscript, None),
    "detectable_content:number_placeholders": (35, _placeholders, "letter"),
    "detectable_format:title": (8, _title, None),
    "startend:quotation": (6, _quotation, None),
    "combination:two_responses": (7, _two_responses, None),
    "combination:repeat_prompt": (7, _repeat, None),
    "detectable_format:constrained_response": (6, _constrained, None),
    "language:response_language": (5, _language, None),
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
    # A response language other than English rules out English words, letters and case rules.
    ("language:response_language", "keywords:existence"),
    ("language:response_language", "keywords:frequency"),
    ("language:response_language", "keywords:forbidden_words"),
    ("language:response_language", "keywords:letter_frequency"),
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
# Sources.
# --------------------------------------------------------------------------------------------

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
    """The dictionary entries the word prompts are about: the ``NUM_WORD_PROMPTS`` eligible
    ones whose seeded hash is smallest (so excluding one entry changes no other choice)."""
    candidates = [
        (number, word, definition)
        for number, word, definition in dictionary_entries(text)
        if eligible(definition) and not EXCLUDED_WORDS.search(word) and "-" not in word
    ]
    candidates.sort(key=lambda c: hashlib.sha256(f"{SEED}/{c[1]}".encode()).hexdigest())
    picked = candidates[:NUM_WORD_PROMPTS]
    return [
        {"key": 10000 + number, "kind": "word", "word": word.lower(), "definition": definition}
        for number, word, definition in picked
    ]


def topic_sources() -> list[dict]:
    """One source per everyday topic."""
    return [{"key": 20000 + i, "kind": "topic", "topic": t} for i, t in enumerate(TOPICS)]


# --------------------------------------------------------------------------------------------
# Assembly.
# --------------------------------------------------------------------------------------------


def _weighted(rng: random.Random, options: list[str]) -> str:
    weights = [INSTRUCTIONS[name][0] for name in options]
    return rng.choices(options, weights=weights, k=1)[0]


def make_doc(source: dict) -> dict:
    """One IFEval record for one source (deterministic: seeded by the source's key)."""
    rng = random.Random(f"{SEED}/{source['key']}")
    if source["kind"] == "word":
        tag, template = rng.choice(WORD_REQUESTS)
        request = template.format(word=source["word"], definition=source["definition"])
        subject = f"{source['word']} {source['definition']}"
    else:
        tag, template = rng.choice(TOPIC_REQUESTS)
        request = template.format(topic=source["topic"])
        subject = source["topic"]
    ctx = {"kind": source["kind"], "request": request, "subject": subject}
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
        # The copied text must be comma-free too, else the no-comma rule is dropped.
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
    _check_consistency(source["key"], chosen, kwargs)
    return {"key": source["key"], "prompt": prompt, "instruction_id_list": chosen, "kwargs": kwargs}


def _check_consistency(key: int, ids: list[str], kwargs: list[dict]) -> None:
    """Refuse arguments that contradict each other (the generators are written to avoid it)."""
    args = dict(zip(ids, kwargs, strict=True))
    required = []
    for a in kwargs:
        required += a.get("keywords") or []
        required += [a[k] for k in ("end_phrase", "first_word", "prompt_to_repeat") if k in a]
        required += [a["postscript_marker"]] if "postscript_marker" in a else []
        if "keyword" in a and a["relation"] == "at least":
            required.append(a["keyword"])
    for word in args.get("keywords:forbidden_words", {}).get("forbidden_words", []):
        if any(re.search(rf"\b{word}\b", text, re.IGNORECASE) for text in required):
            raise AssertionError(f"{key}: forbidden {word!r} is also required")
    if "punctuation:no_comma" in args and any("," in text for text in required):
        raise AssertionError(f"{key}: required text with a comma under no_comma")
    letter = args.get("keywords:letter_frequency")
    if letter and letter["let_relation"] == "less than":
        if any(letter["letter"] in text.lower() for text in required):
            raise AssertionError(f"{key}: required text has the rare letter {letter['letter']!r}")


def build(text: str) -> list[dict]:
    """All records, from the dictionary's text (deterministic)."""
    sources = word_sources(text) + topic_sources()
    random.Random(SEED).shuffle(sources)
    return [make_doc(source) for source in sources]


def serialise(docs: list[dict]) -> str:
    """One JSON object a line, as shipped."""
    return "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)


# --------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------


def validate(docs: list[dict]) -> None:
    """Check every record against lm-eval's IFEval registry and our own rules; raise on the
    first problem."""
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
    keys, prompts = set(), set()
    for doc in docs:
        if doc["key"] in keys or doc["prompt"] in prompts:
            raise ValueError(f"{doc['key']}: duplicate key or prompt")
        keys.add(doc["key"])
        prompts.add(doc["prompt"])
        if EXCLUDED_WORDS.search(doc["prompt"]):
            raise ValueError(f"{doc['key']}: excluded word in the prompt")
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
    """Build, validate and write the prompts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--no-validate", action="store_true", help="skip the lm-eval check")
    args = parser.parse_args(argv)
    docs = build(DICTIONARY.read_text(encoding="utf-8"))
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
