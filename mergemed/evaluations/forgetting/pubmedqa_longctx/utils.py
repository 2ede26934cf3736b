"""Data for ``pubmedqa_longctx``: PubMedQA questions answered from a haystack of abstracts.

Each of the 500 PubMedQA test questions gets one prompt per target length (1k, 4k, 8k and 16k
tokens): its own abstract (the *gold* document) hidden among abstracts of *other* PubMedQA
questions (the *distractors*), numbered ``Document 1:``, ``Document 2:``..., after the one-line
``INSTRUCTION`` and before lm-eval's PubMedQA question format::

    The documents below are abstracts of medical research papers; the answer to the question ...

    Document 1: <abstract: the record's contexts joined by spaces>

    Document 2: <abstract>

    Question: <question>
    Answer:

scored like lm-eval's ``pubmedqa`` (log-likelihood of `` yes`` / `` no`` / `` maybe``, ``acc``).

**Length.** lm-eval tasks do not know the model's tokenizer, so prompts are sized with a
tokenizer-free estimate, ``estimate_tokens(text) = ceil(len(text) / 4)`` (characters / 4).
Each prompt is filled to ``estimated_tokens <= target_length - RESERVED_TOKENS`` (the reserve
leaves room for a BOS token and the answer), and always ends within ``FILL_TOLERANCE`` below
that bound. On PubMedQA abstracts a Llama-3 tokenizer gives about 4.5 characters a token, so its
real counts are about 11% below the estimate (a "8k" prompt is about 7,300 Llama-3 tokens);
tokenizers with smaller vocabularies give more tokens than the estimate. Measure with the real
tokenizer before running (``mergemed.evaluation.longctx.lengths_that_fit``): an HF model
left-truncates prompts longer than its maximum.

**Determinism.** Distractors are drawn, in the order of a ``random.Random`` seeded with
``"pubmedqa_longctx/<question id>"``, from the other 999 labelled records (test and train),
never the question's own record nor any record with the same abstract text; a distractor is
added when it still fits the budget, skipped otherwise (first fit over the whole shuffled
pool). The gold document's depth cycles through ``DEPTHS`` by the question's index in
``test.jsonl`` (0%, 25%, 50%, 75%, 100%, then again), the same at every length: its 0-based
position is ``floor(depth * (n_documents - 1) + 0.5)``. The same files always give the same
prompts.

**Data.** ``test.jsonl`` and ``train.jsonl`` of ``$MERGEMED_DATA_DIR/pubmedqa/`` when that
variable is set and the folder exists, else of ``evaluations/data/pubmedqa/`` (located from this
file, never from the working directory). Fields read: ``id``, ``question``, ``contexts``,
``final_decision``. Without ``train.jsonl`` the distractors come from the test records only.

Standalone: standard library, ``datasets`` and nothing else, so the task also runs with plain
``lm_eval --include_path evaluations``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "MERGEMED_DATA_DIR"
SHIPPED_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
"""``evaluations/data``: the PubMedQA copy shipped with the repository."""

TARGET_LENGTHS = {"1k": 1024, "4k": 4096, "8k": 8192, "16k": 16384}
"""Subtask suffix -> target length in (estimated) tokens."""

CHARS_PER_TOKEN = 4
"""The estimator: one token per 4 characters, rounded up."""

RESERVED_TOKENS = 8
"""Estimated tokens left free under the target for a BOS token and the answer."""

FILL_TOLERANCE = 128
"""Every prompt's estimate lies in ``(target - RESERVED_TOKENS - FILL_TOLERANCE,
target - RESERVED_TOKENS]``: first fit stops only when no unused abstract fits, and the 999
abstracts include many of under 100 estimated tokens."""

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Gold-document depths, cycled by question index."""

ANSWERS = ("yes", "no", "maybe")

INSTRUCTION = (
    "The documents below are abstracts of medical research papers; the answer to the question "
    "after them is in one of the documents."
)
SEPARATOR = "\n\n"

log = logging.getLogger("mergemed.evaluations.pubmedqa_longctx")


def estimate_tokens(text: str) -> int:
    """Tokenizer-free length estimate: ``ceil(len(text) / CHARS_PER_TOKEN)``."""
    return -(-len(text) // CHARS_PER_TOKEN)


def abstract(record: dict[str, Any]) -> str:
    """A record's abstract as one paragraph: its contexts joined by spaces."""
    return " ".join(part.strip() for part in record["contexts"])


def document(number: int, text: str) -> str:
    return f"Document {number}: {text}"


def question_block(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def build_prompt(documents: Sequence[str], question: str) -> str:
    """The prompt for abstracts in the order given (numbered from 1)."""
    parts = [
        INSTRUCTION,
        *(document(i, t) for i, t in enumerate(documents, 1)),
        question_block(question),
    ]
    return SEPARATOR.join(parts)


def gold_position(depth: float, n_documents: int) -> int:
    """0-based position of the gold document at ``depth`` among ``n_documents``."""
    return math.floor(depth * (n_documents - 1) + 0.5)


# --------------------------------------------------------------------------- data


def data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder the PubMedQA JSONL files are read from: ``<root>/pubmedqa`` (``root`` is the
    task metadata's ``data_dir``, else ``$MERGEMED_DATA_DIR``) when it exists, else the
    shipped copy."""
    root = root or os.environ.get(DATA_DIR_ENV)
    if root:
        folder = Path(root).expanduser() / "pubmedqa"
        if folder.is_dir():
            return folder
    return SHIPPED_DATA_DIR / "pubmedqa"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            problems = []
            if not isinstance(record.get("id"), str):
                problems.append("id must be a string")
            if not isinstance(record.get("question"), str):
                problems.append("question must be a string")
            contexts = record.get("contexts")
            if (
                not isinstance(contexts, list)
                or not contexts
                or not all(isinstance(c, str) for c in contexts)
            ):
                problems.append("contexts must be a non-empty list of strings")
            if record.get("final_decision") not in ANSWERS:
                problems.append("final_decision must be yes, no or maybe")
            if problems:
                raise ValueError(f"{path}, line {line_number}: {'; '.join(problems)}")
            records.append(record)
    return records


def read_records(folder: str | os.PathLike[str] | None = None) -> tuple[list[dict], list[dict]]:
    """``(test records, distractor pool)`` from ``folder`` (default :func:`data_dir`).

    The pool is every record of ``test.jsonl`` and ``train.jsonl``, sorted by id (so the
    files' order does not matter to the draws).
    """
    folder = Path(folder) if folder is not None else data_dir()
    test_path = folder / "test.jsonl"
    if not test_path.is_file():
        raise FileNotFoundError(f"pubmedqa_longctx: {test_path} not found")
    test = _read_jsonl(test_path)
    train_path = folder / "train.jsonl"
    if train_path.is_file():
        train = _read_jsonl(train_path)
    else:
        log.warning(
            "pubmedqa_longctx: %s not found; distractors come from the test records only",
            train_path,
        )
        train = []
    pool = {r["id"]: r for r in train}
    pool.update({r["id"]: r for r in test})
    return test, [pool[key] for key in sorted(pool)]


# --------------------------------------------------------------------------- docs


def build_docs(
    target_length: int,
    folder: str | os.PathLike[str] | None = None,
    records: tuple[list[dict], list[dict]] | None = None,
) -> list[dict[str, Any]]:
    """One doc per test question at ``target_length`` estimated tokens (deterministic).

    Each doc has the lm-eval fields ``prompt`` and ``final_decision`` and the record ``id``,
    ``question``, ``target_length``, ``estimated_tokens`` (of ``prompt``), ``gold_depth``
    (designed depth, 0 to 1), ``gold_position`` (1-based number of the gold document),
    ``n_documents`` and ``distractor_ids`` (in prompt order).
    """
    test, pool = records if records is not None else read_records(folder)
    pool = sorted(pool, key=lambda r: r["id"])  # the draws never depend on the files' order
    budget_chars = (target_length - RESERVED_TOKENS) * CHARS_PER_TOKEN
    pool_texts = [abstract(r) for r in pool]
    separator = len(SEPARATOR)
    docs = []
    for index, record in enumerate(test):
        gold = abstract(record)
        # Characters of the prompt with the gold document alone (numbered 1).
        used = len(build_prompt([gold], record["question"]))
        order = [i for i, r in enumerate(pool) if r["id"] != record["id"] and pool_texts[i] != gold]
        random.Random(f"pubmedqa_longctx/{record['id']}").shuffle(order)
        chosen: list[int] = []
        for i in order:
            # Adding one document: its text, its "Document N: " label and one separator;
            # the numbers 1..N are the same whatever the gold document's position.
            cost = len(pool_texts[i]) + len(document(len(chosen) + 2, "")) + separator
            if used + cost <= budget_chars:
                chosen.append(i)
                used += cost
        n_documents = len(chosen) + 1
        depth = DEPTHS[index % len(DEPTHS)]
        position = gold_position(depth, n_documents)
        texts = [pool_texts[i] for i in chosen]
        texts.insert(position, gold)
        prompt = build_prompt(texts, record["question"])
        assert len(prompt) == used, "prompt length bookkeeping is off"
        docs.append(
            {
                "id": record["id"],
                "question": record["question"],
                "final_decision": record["final_decision"],
                "prompt": prompt,
                "target_length": target_length,
                "estimated_tokens": estimate_tokens(prompt),
                "gold_depth": depth,
                "gold_position": position + 1,
                "n_documents": n_documents,
                "distractor_ids": [pool[i]["id"] for i in chosen],
            }
        )
    return docs


def load(target_length: int, root: str | None = None, **kwargs: Any):
    """``datasets.DatasetDict`` with the ``test`` split at ``target_length``; ``root`` as
    :func:`data_dir` takes it."""
    import datasets

    docs = build_docs(int(target_length), folder=data_dir(root))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


# ``custom_dataset`` hooks: lm-eval calls them with the task's metadata (and anything given
# with --metadata or TaskManager(metadata=)) as keyword arguments; only ``data_dir`` is read.


def load_gold(**kwargs: Any):
    """The baseline: every question with its gold abstract alone (no room for distractors)."""
    return load(0, kwargs.get("data_dir"))


def load_1k(**kwargs: Any):
    return load(TARGET_LENGTHS["1k"], kwargs.get("data_dir"))


def load_4k(**kwargs: Any):
    return load(TARGET_LENGTHS["4k"], kwargs.get("data_dir"))


def load_8k(**kwargs: Any):
    return load(TARGET_LENGTHS["8k"], kwargs.get("data_dir"))


def load_16k(**kwargs: Any):
    return load(TARGET_LENGTHS["16k"], kwargs.get("data_dir"))
