"""Build the documents of ``general_ppl`` and ``pubmedqa_ppl`` (text perplexity tasks).

Both corpora are cut into documents the same way:

1. the text is split into *units*: one Devil's Dictionary entry (its headword paragraph and any
   indented verse or continuation paragraphs after it), or one PubMedQA abstract (a test
   record's ``contexts`` joined by single spaces, records in PubMed-id order);
2. a unit longer than ``MAX_CHARS`` is cut at paragraph breaks, else line breaks, else spaces,
   into pieces of at most ``MAX_CHARS`` (only a few long dictionary entries are);
3. units are packed in order into documents, joined by a blank line: a document is closed as
   soon as it reaches ``MIN_CHARS``, or before a unit that would take it past ``MAX_CHARS``;
   a document still under ``MIN_CHARS // 2`` at that point is instead filled from that unit,
   cut as in step 2 (:func:`cut`), and the rest of the unit starts the next document;
4. documents are numbered from 0 and every ``STRIDE``-th one (``index % STRIDE == STRIDE - 1``)
   is *held out*: those are the evaluation documents, written to ``<task>.jsonl``.

For ``general_ppl`` the other documents may be used for training (``--train-output`` writes
them); for ``pubmedqa_ppl`` they are PubMedQA test abstracts as well and must never be trained
on. Lines of the dictionary are right-stripped (the etext has stray trailing spaces) and every
document is stripped, so lm-eval's word count (``len(re.split(r"\\s+", text))``) is the number
of whitespace-separated words.

Each JSONL record: ``id`` (``<task>/<4-digit document index>``), ``text`` and ``sources``
(the first word of each dictionary headword, or the PubMed ids, in the document). The output
depends only on the two source files; the standard library is all this needs.

Usage::

    python evaluations/forgetting/text_perplexity/build.py [--task general_ppl|pubmedqa_ppl]
        [--output FILE] [--train-output FILE]

Licences: The Devil's Dictionary (Ambrose Bierce, 1911) is in the public domain; PubMedQA is
MIT licensed (``evaluations/data/pubmedqa/LICENSE``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parents[2]
DICTIONARY = PACKAGE / "data" / "devils_dictionary.txt"
PUBMEDQA_TEST = PACKAGE / "evaluations" / "data" / "pubmedqa" / "test.jsonl"

MIN_CHARS = 1500
MAX_CHARS = 3000
STRIDE = 5
JOINER = "\n\n"
SEPARATORS = ("\n\n", "\n", " ")
"""Where an over-long unit may be cut, most preferred first."""

HEADWORD = re.compile(r"[A-Z][A-Z'\-]*\b")
"""An entry starts with a paragraph at column 0 whose first word is in capitals."""


# --------------------------------------------------------------------------- units


def dictionary_units(text: str) -> list[tuple[str, str]]:
    """``(first word of the headword, entry text)`` for every Devil's Dictionary entry."""
    lines = [line.rstrip() for line in text.splitlines()]
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    entries: list[tuple[str, list[str]]] = []
    for paragraph in paragraphs:
        match = HEADWORD.match(paragraph)
        if match or not entries:
            entries.append((match.group(0) if match else "", [paragraph]))
        else:  # indented verse, attributions, or prose continuing the entry
            entries[-1][1].append(paragraph)
    return [(word, JOINER.join(parts)) for word, parts in entries]


def pubmedqa_units(lines: Iterable[str]) -> list[tuple[str, str]]:
    """``(PubMed id, abstract)`` for every record of PubMedQA's ``test.jsonl``, by id."""
    records = [json.loads(line) for line in lines if line.strip()]
    units = [(r["id"], " ".join(" ".join(part.split()) for part in r["contexts"])) for r in records]
    return sorted(units)


def fit(text: str, max_chars: int, separators: Sequence[str] = SEPARATORS) -> list[str]:
    """``text`` cut into pieces of at most ``max_chars``, at the first of ``separators`` that
    allows it (greedy: each piece takes as many parts as fit); short texts stay whole."""
    if len(text) <= max_chars:
        return [text]
    if not separators:
        raise ValueError(f"cannot cut {text[:40]!r}... to {max_chars} characters")
    separator, rest = separators[0], separators[1:]
    parts = [p for part in text.split(separator) for p in fit(part, max_chars, rest)]
    pieces = [parts[0]]
    for part in parts[1:]:
        if len(pieces[-1]) + len(separator) + len(part) <= max_chars:
            pieces[-1] += separator + part
        else:
            pieces.append(part)
    return pieces


def cut(text: str, room: int, wanted: int) -> tuple[str, str] | None:
    """Split ``text`` into ``(head, rest)`` with ``len(head) <= room``, at the coarsest of
    ``SEPARATORS`` whose longest fitting head has at least ``wanted`` characters (else the
    finest one that gives any head); None when no separator gives a non-empty head."""
    best = None
    for separator in SEPARATORS:
        parts = text.split(separator)
        size, count = -len(separator), 0
        while count < len(parts) - 1 and size + len(separator) + len(parts[count]) <= room:
            size += len(separator) + len(parts[count])
            count += 1
        if count:
            best = (separator.join(parts[:count]), separator.join(parts[count:]))
            if size >= wanted:
                return best
    return best


def pack(
    units: Sequence[tuple[str, str]],
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
) -> list[tuple[list[str], str]]:
    """Units packed in order into ``(sources, text)`` documents (see the module docstring)."""
    pieces = [(source, piece) for source, text in units for piece in fit(text, max_chars)]
    documents: list[tuple[list[str], str]] = []
    sources: list[str] = []
    texts: list[str] = []
    size = 0
    index = 0
    while index < len(pieces):
        source, piece = pieces[index]
        if texts and size + len(JOINER) + len(piece) > max_chars:
            # A document this short is filled from the next unit instead of being closed.
            room = max_chars - size - len(JOINER)
            split = cut(piece, room, min_chars - size - len(JOINER))
            if size >= min_chars // 2 or split is None:
                documents.append((sources, JOINER.join(texts)))
                sources, texts, size = [], [], 0
                continue
            piece, rest = split
            pieces[index] = (source, rest)  # the rest of the unit starts the next document
        else:
            index += 1
        if not sources or sources[-1] != source:
            sources.append(source)
        size += (len(JOINER) if texts else 0) + len(piece)
        texts.append(piece)
        if size >= min_chars:
            documents.append((sources, JOINER.join(texts)))
            sources, texts, size = [], [], 0
    if texts:
        documents.append((sources, JOINER.join(texts)))
    return documents


# --------------------------------------------------------------------------- documents


def documents(task: str) -> list[dict]:
    """Every document of ``task``'s corpus, with ``held_out`` (True: an evaluation document)."""
    if task == "general_ppl":
        units = dictionary_units(DICTIONARY.read_text(encoding="utf-8"))
    elif task == "pubmedqa_ppl":
        units = pubmedqa_units(PUBMEDQA_TEST.read_text(encoding="utf-8").splitlines())
    else:
        raise ValueError(f"unknown task {task!r}")
    return [
        {
            "id": f"{task}/{index:04d}",
            "text": text.strip(),
            "sources": sources,
            "held_out": index % STRIDE == STRIDE - 1,
        }
        for index, (sources, text) in enumerate(pack(units))
    ]


def split(task: str) -> tuple[list[dict], list[dict]]:
    """``(held-out documents, the others)``, without the ``held_out`` flag."""
    held_out, others = [], []
    for doc in documents(task):
        (held_out if doc.pop("held_out") else others).append(doc)
    return held_out, others


def serialise(docs: Iterable[dict]) -> str:
    """One JSON object a line, as shipped."""
    return "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)


def main(argv: list[str] | None = None) -> int:
    """Write one task's held-out documents (and optionally the rest)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("general_ppl", "pubmedqa_ppl"), action="append")
    parser.add_argument("--output", type=Path, help="with one --task: where its JSONL goes")
    parser.add_argument(
        "--train-output", type=Path, help="with --task general_ppl: write the other documents"
    )
    args = parser.parse_args(argv)
    tasks = args.task or ["general_ppl", "pubmedqa_ppl"]
    if (args.output or args.train_output) and len(tasks) != 1:
        parser.error("--output and --train-output need exactly one --task")
    if args.train_output and tasks != ["general_ppl"]:
        parser.error("only general_ppl's other documents may be used for training")
    for task in tasks:
        held_out, others = split(task)
        output = args.output or HERE / f"{task}.jsonl"
        output.write_text(serialise(held_out), encoding="utf-8", newline="\n")
        sizes = [len(doc["text"]) for doc in held_out]
        print(
            f"{task}: {len(held_out)} of {len(held_out) + len(others)} documents -> {output} "
            f"({min(sizes)}-{max(sizes)} characters)",
            file=sys.stderr,
        )
        if args.train_output:
            args.train_output.write_text(serialise(others), encoding="utf-8", newline="\n")
            print(f"{task}: {len(others)} other documents -> {args.train_output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
