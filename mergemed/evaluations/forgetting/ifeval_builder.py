"""What ``ifeval_med/build.py`` and ``ifeval_general/build.py`` share: IFEval-style prompts from
requests and verifiable instructions.

A prompt set is one ``wording.json`` (its requests, the phrasing of every instruction, its word
lists, numbers and instruction weights: data, not code) plus a ``build.py`` that reads its own
source texts and picks a request for each. This module draws the instructions, phrases them from
the wording, assembles the prompt with lm-eval's checker arguments and checks the arguments
against each other; ``ifeval_check.py`` validates the records against lm-eval's IFEval registry
and writes the JSONL.

Every choice comes from the ``random.Random`` the caller passes, so a set is rebuilt to the same
bytes. Only the standard library is used.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORDINALS = ("first", "second", "third", "fourth", "fifth")
REPEAT = "combination:repeat_prompt"
NO_COMMA = "punctuation:no_comma"

# Instructions that leave room for only a few companions (whole-response formats).
ONLY_WITH: Mapping[str, frozenset[str]] = {
    "detectable_format:constrained_response": frozenset(),
    "detectable_format:json_format": frozenset({"keywords:existence", "keywords:forbidden_words"}),
    "combination:two_responses": frozenset(
        {"keywords:existence", "keywords:forbidden_words", "detectable_format:title", NO_COMMA}
    ),
    REPEAT: frozenset({"keywords:existence", "detectable_format:title", NO_COMMA}),
}

# Pairs that cannot both be followed, or that read as contradictory or confusing.
CLASHES = frozenset(
    {
        # A response language other than English rules out English words, letters and case.
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
    }
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


@dataclass(frozen=True)
class Wording:
    """One prompt set's ``wording.json``: how its instructions read and what they draw from.

    ``texts`` maps a phrasing name to one template or a list to draw one from (drawing consumes
    the generator, a single template does not); templates are ``str.format`` strings over the
    fields the instruction passes plus the request context.
    """

    data: Mapping[str, Any]

    @classmethod
    def read(cls, path: Path) -> Wording:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def weights(self) -> Mapping[str, int]:
        """Instruction id -> draw weight, in the order options are listed when drawing."""
        return self.data["weights"]

    def phrase(self, rng: random.Random, text: str, /, **fields: Any) -> str:
        """The phrasing ``text`` with ``fields`` filled in (drawn from ``rng`` if it has two)."""
        options = self.data["texts"][text]
        template = options if isinstance(options, str) else rng.choice(options)
        return template.format(**fields)


def quote_list(words: list[str], joiner: str = "and") -> str:
    """``"a"``, ``"a" and "b"``, ``"a", "b" or "c"``."""
    quoted = [f'"{w}"' for w in words]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + f" {joiner} " + quoted[-1]


def _plural(words: list[str]) -> dict[str, str]:
    many = len(words) > 1
    return {
        "s": "s" if many else "",
        "verb_s": "" if many else "s",
        "words": quote_list(words),
        "words_or": quote_list(words, "or"),
    }


# --------------------------------------------------------------------------------------------
# One generator per instruction: (rng, request context, wording) -> (sentence, checker kwargs).
# --------------------------------------------------------------------------------------------

Generated = tuple[str, dict]


def _bullets(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    n = rng.randint(2, 5)
    return w.phrase(rng, "bullets", n=n, **ctx), {"num_bullets": n}


def _no_comma(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    return w.phrase(rng, "no_comma", **ctx), {}


def _end_phrase(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    phrase = rng.choice(w["end_phrases"])
    return w.phrase(rng, "end_phrase", phrase=phrase, **ctx), {"end_phrase": phrase}


def _json(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    return w.phrase(rng, "json", **ctx), {}


def _num_words(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    if rng.random() < 0.55:
        n = rng.choice(w["few_words"])
        return w.phrase(rng, "words_under", n=n), {"num_words": n, "relation": "less than"}
    n = rng.choice(w["many_words"])
    return w.phrase(rng, "words_over", n=n), {"num_words": n, "relation": "at least"}


def _lowercase(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    return w.phrase(rng, "lowercase", **ctx), {}


def _capitals(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    return w.phrase(rng, "capitals", **ctx), {}


def _capital_words(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    if rng.random() < 0.6:
        n = rng.choice((2, 3, 4))
        text = w.phrase(rng, "capital_words_over", n=n)
        return text, {"capital_frequency": n, "capital_relation": "at least"}
    n = rng.choice(w["few_capital_words"])
    text = w.phrase(rng, "capital_words_under", n=n)
    return text, {"capital_frequency": n, "capital_relation": "less than"}


def _subject_keyword(rng: random.Random, ctx: dict, w: Wording) -> str | None:
    stopwords = set(w["stopwords"])
    words = sorted(
        {
            word.lower()
            for word in re.findall(r"[A-Za-z]+", ctx["subject"])
            if len(word) >= w["keyword_min_length"] and word.lower() not in stopwords
        }
    )
    return rng.choice(words) if words else None


def _existence(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    words = [rng.choice(w["generic_keywords"])]
    own = _subject_keyword(rng, ctx, w)
    if own and own not in words and rng.random() < 0.7:
        words.append(own)
    words.sort()
    return w.phrase(rng, "existence", **_plural(words)), {"keywords": words}


def _frequency(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    if rng.random() < 0.65:
        word = rng.choice(w["frequent_words"])
        n = rng.choice((2, 3))
        text = w.phrase(rng, "frequency_over", word=word, n=n)
        return text, {"keyword": word, "frequency": n, "relation": "at least"}
    pattern = w["rare_word_pattern"]
    choices = [
        word
        for word in w["rare_words"]
        if not re.search(pattern.format(w=word), ctx["request"], re.IGNORECASE)
    ]
    word = rng.choice(choices)
    n = rng.choice((2, 3))
    text = w.phrase(rng, "frequency_under", word=word, n=n)
    return text, {"keyword": word, "frequency": n, "relation": "less than"}


def _forbidden(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    allowed = [
        word
        for word in w["forbidden_words"]
        if not re.search(rf"\b{word}\b", ctx["request"], re.IGNORECASE)
    ]
    words = sorted(rng.sample(allowed, rng.choice((1, 2))))
    return w.phrase(rng, "forbidden", **_plural(words)), {"forbidden_words": words}


def _letters(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    absent = [c for c in w["rare_letters"] if c not in ctx["request"].lower()]
    if absent and rng.random() < 0.4:
        letter = rng.choice(absent)
        n = rng.choice((2, 3))
        text = w.phrase(rng, "letters_under", letter=letter, n=n)
        return text, {"letter": letter, "let_frequency": n, "let_relation": "less than"}
    letter = rng.choice(w["common_letters"])
    n = rng.choice((5, 8, 10))
    text = w.phrase(rng, "letters_over", letter=letter, n=n)
    return text, {"letter": letter, "let_frequency": n, "let_relation": "at least"}


def _sentences(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    if rng.random() < 0.5:
        n = rng.choice((3, 4, 5, 6))
        text = w.phrase(rng, "sentences_under", n=n, at_most=n - 1)
        return text, {"num_sentences": n, "relation": "less than"}
    n = rng.choice((4, 5, 6, 8))
    return w.phrase(rng, "sentences_over", n=n), {"num_sentences": n, "relation": "at least"}


def _paragraphs(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    n = rng.randint(2, 4)
    return w.phrase(rng, "paragraphs", n=n), {"num_paragraphs": n}


def _nth_paragraph(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    n = rng.randint(2, 4)
    k = rng.randint(1, n)
    word = rng.choice(w["first_words"])
    text = w.phrase(rng, "nth_paragraph", n=n, ordinal=ORDINALS[k - 1], word=word)
    return text, {"num_paragraphs": n, "nth_paragraph": k, "first_word": word}


def _highlights(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    n = rng.randint(1, 3)
    return w.phrase(rng, "highlights", n=n, s="s" if n > 1 else ""), {"num_highlights": n}


def _sections(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    n = rng.randint(2, 4)
    marker = rng.choice(w["section_markers"])
    text = w.phrase(rng, "sections", n=n, marker=marker)
    return text, {"section_spliter": marker, "num_sections": n}


def _postscript(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    marker = rng.choice(("P.S.", "P.P.S"))
    return w.phrase(rng, "postscript", marker=marker), {"postscript_marker": marker}


def _placeholders(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    n = rng.randint(1, 3)
    return w.phrase(rng, "placeholders", n=n, s="s" if n > 1 else ""), {"num_placeholders": n}


def _title(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    return w.phrase(rng, "title", **ctx), {}


def _quotation(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    return w.phrase(rng, "quotation", **ctx), {}


def _two_responses(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    return w.phrase(rng, "two_responses", **ctx), {}


def _constrained(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    return w.phrase(rng, "constrained", **ctx), {}


def _language(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    code, name = rng.choice(w["languages"])
    return w.phrase(rng, "language", name=name), {"language": code}


def _repeat(rng: random.Random, ctx: dict, w: Wording) -> Generated:
    # prompt_to_repeat is filled in when the prompt is assembled: all the text before this.
    return w.phrase(rng, "repeat", **ctx), {"prompt_to_repeat": None}


GENERATORS: Mapping[str, Callable[[random.Random, dict, Wording], Generated]] = {
    "detectable_format:number_bullet_lists": _bullets,
    NO_COMMA: _no_comma,
    "startend:end_checker": _end_phrase,
    "detectable_format:json_format": _json,
    "length_constraints:number_words": _num_words,
    "change_case:english_lowercase": _lowercase,
    "change_case:english_capital": _capitals,
    "change_case:capital_word_frequency": _capital_words,
    "keywords:existence": _existence,
    "keywords:frequency": _frequency,
    "keywords:forbidden_words": _forbidden,
    "keywords:letter_frequency": _letters,
    "length_constraints:number_sentences": _sentences,
    "length_constraints:number_paragraphs": _paragraphs,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph,
    "detectable_format:number_highlighted_sections": _highlights,
    "detectable_format:multiple_sections": _sections,
    "detectable_content:postscript": _postscript,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_format:title": _title,
    "startend:quotation": _quotation,
    "combination:two_responses": _two_responses,
    REPEAT: _repeat,
    "detectable_format:constrained_response": _constrained,
    "language:response_language": _language,
}


# --------------------------------------------------------------------------------------------
# Assembly.
# --------------------------------------------------------------------------------------------


def _draw_instructions(rng: random.Random, tag: str, wording: Wording) -> list[str]:
    counts = wording["instructions_per_prompt"]
    count = rng.choices([n for n, _ in counts], weights=[weight for _, weight in counts])[0]
    needs = wording["needs"]
    chosen: list[str] = []
    for _ in range(count):
        options = [
            name
            for name in wording.weights
            if needs.get(name, tag) == tag and all(compatible(name, c) for c in chosen)
        ]
        if not options:
            break
        weights = [wording.weights[name] for name in options]
        chosen.append(rng.choices(options, weights=weights, k=1)[0])
    # The repeat instruction refers to the text before it, so it goes last.
    chosen.sort(key=lambda name: name == REPEAT)
    return chosen


def instructed_record(
    rng: random.Random, key: int, request: str, tag: str, ctx: dict, wording: Wording
) -> dict:
    """One IFEval record: ``request`` followed by one to three instructions drawn from ``rng``.

    ``tag`` is the request's kind (an instruction listed in ``needs`` is drawn only for its
    tag); ``ctx`` carries ``request``, ``subject`` (where a required keyword may come from) and
    any field the wording's templates name."""
    chosen = _draw_instructions(rng, tag, wording)
    parts = {name: GENERATORS[name](rng, ctx, wording) for name in chosen}
    if REPEAT in parts and NO_COMMA in parts:
        # The copied text must be comma-free too, else the no-comma rule is dropped.
        copied = [request] + [text for name, (text, _) in parts.items() if name != REPEAT]
        if any("," in text for text in copied):
            chosen.remove(NO_COMMA)
            del parts[NO_COMMA]
    prompt = request
    for name in chosen:
        text, args = parts[name]
        if name == REPEAT:
            args["prompt_to_repeat"] = prompt
        prompt = f"{prompt} {text}"
    kwargs = [parts[name][1] for name in chosen]
    check_consistency(key, chosen, kwargs)
    return {"key": key, "prompt": prompt, "instruction_id_list": chosen, "kwargs": kwargs}


def check_consistency(key: int, ids: list[str], kwargs: list[dict]) -> None:
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
    if NO_COMMA in args and any("," in text for text in required):
        raise AssertionError(f"{key}: required text with a comma under no_comma")
    letter = args.get("keywords:letter_frequency")
    if letter and letter["let_relation"] == "less than":
        if any(letter["letter"] in text.lower() for text in required):
            raise AssertionError(f"{key}: required text has the rare letter {letter['letter']!r}")
