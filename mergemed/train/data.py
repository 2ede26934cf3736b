"""Data preparation for training the models that get merged: read documents, mix sources in
tokens, bin-pack them into fixed-length sequences (continual pretraining), and turn SFT
records into token ids whose labels cover only the completion. No trainer here.

Continual pretraining (CPT), step by step:

1. :func:`read_documents` reads one :class:`Source` (a ``.txt``, ``.jsonl``, ``.json`` or
   ``.parquet`` file, or ``hub:owner/name``) into a list of document strings.
2. :func:`split_held_out` sets a deterministic fraction of each source's documents aside for
   per-source held-out loss.
3. :func:`tokenize_documents` turns documents into token ids (no special tokens).
4. :func:`pack` draws tokens from each source in proportion to its weight (the ratio holds in
   tokens, not documents), appends EOS to every document, and bin-packs documents into
   sequences of exactly ``sequence_length`` tokens. :func:`pack_held_out` packs each source's
   held-out documents on their own. :func:`build_cpt_data` does all four steps.

Supervised fine-tuning (SFT): :func:`read_sft_records` (chat ``messages``, medical-o1
``Question``/``Complex_CoT``/``Response`` or ``prompt``/``completion`` records) or
:func:`pubmedqa_sft_records`, then :func:`tokenize_sft`, which masks every prompt token's label.

Every problem with the user's data raises :class:`DataError`, one line naming the file, the
line (or row) and what was expected.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mergemed.errors import MergemedError

__all__ = [
    "IGNORE_INDEX",
    "CPTData",
    "DataError",
    "PackedData",
    "SFTData",
    "Source",
    "build_cpt_data",
    "check_weights",
    "pack",
    "pack_held_out",
    "pubmedqa_sft_records",
    "read_documents",
    "read_sft_records",
    "split_held_out",
    "tokenize_documents",
    "tokenize_sft",
]

IGNORE_INDEX = -100
"""Label of a position that carries no loss (padding, SFT prompt tokens)."""

HUB_PREFIX = "hub:"
"""``Source.path`` that starts with this names a Hugging Face Hub dataset: ``hub:owner/name``."""

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
"""File types :func:`read_documents` reads."""

SFT_SUFFIXES = (".jsonl", ".json", ".parquet")
"""File types :func:`read_sft_records` reads."""

CHAT_ROLES = ("system", "user", "assistant")
"""Roles a chat-format SFT record may use."""

QUESTION_FIELDS = ("Question", "question")
REASONING_FIELDS = ("Complex_CoT", "reasoning")
ANSWER_FIELDS = ("Response", "answer")
"""medical-o1 field names (``FreedomIntelligence/medical-o1-reasoning-SFT`` uses the first
spelling of each), with lower-case alternatives."""

REASONING_SEPARATOR = "\n\n"
"""Between the reasoning and the answer in the assistant message of a medical-o1 record."""


class DataError(MergemedError):
    """Training data that cannot be used: names the file, the line or row, and the field."""


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Source:
    """One training data source.

    Attributes:
        name: unique label, used in reports, per-sequence counts and held-out sets.
        path: a local file or ``hub:owner/name`` (a Hub dataset's ``train`` split). By suffix:

            * ``.txt``: one document per paragraph block. A block is a maximal run of
              non-blank lines; blank (empty or whitespace-only) lines separate blocks. Lines
              are kept verbatim (indentation included) and joined with ``"\\n"``.
            * ``.jsonl``: one JSON object per line (blank lines skipped); the document is
              ``text_field``.
            * ``.json``: a JSON array of objects, or an object mapping ids to objects.
            * ``.parquet``: one document per row, column ``text_field``.

        text_field: the field (or column) holding the text, for every type but ``.txt``. A
            list of strings there is joined with ``"\\n"`` (PubMedQA's ``contexts``).
        weight: share of the training tokens, relative to the other sources' weights
            (``>= 0``; see :func:`check_weights`).

    Documents whose text is empty or only whitespace are skipped.
    """

    name: str
    path: str | os.PathLike[str]
    text_field: str = "text"
    weight: float = 1.0


def read_documents(source: Source) -> list[str]:
    """The documents of ``source``, in file order (see :class:`Source` for each file type).

    Raises:
        DataError: the file is missing or not a file, has an unsupported suffix, holds no
            documents, a line is not a JSON object, a record lacks ``text_field`` or holds
            something other than a string or a list of strings there, or a Hub dataset cannot
            be loaded (offline, unknown, no such column).
    """
    path_text = os.fspath(source.path)
    if path_text.startswith(HUB_PREFIX):
        documents = _read_hub_documents(source, path_text[len(HUB_PREFIX) :])
        where = f"source {source.name!r} ({path_text})"
    else:
        path = _existing_file(path_text, SUFFIXES)
        if path.suffix == ".txt":
            documents = _txt_documents(path)
        elif path.suffix == ".parquet":
            documents = _parquet_documents(path, source.text_field)
        else:
            documents = [
                text
                for at, record in _iter_records(path)
                if (text := _document_text(record, source.text_field, at))
            ]
        where = str(path)
    if not documents:
        raise DataError(f"{where}: no documents (empty, or every text is blank)")
    return documents


def _existing_file(path_text: str, suffixes: Sequence[str]) -> Path:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.suffix not in suffixes:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}: "
            f"expected {', '.join(suffixes)}"
        )
    return path


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None


def _txt_documents(path: Path) -> list[str]:
    documents: list[str] = []
    block: list[str] = []
    for line in _read_text(path).splitlines():
        if line.strip():
            block.append(line)
        elif block:
            documents.append("\n".join(block))
            block = []
    if block:
        documents.append("\n".join(block))
    return documents


def _iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each record of a ``.jsonl``, ``.json`` or ``.parquet`` file;
    ``where`` is ``file:line`` (jsonl), ``file: item i`` (json) or ``file: row i`` (parquet)."""
    if path.suffix == ".jsonl":
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record
    elif path.suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(data, (dict, list)):
            raise DataError(f"{path}: expected a JSON array of objects")
        items = data.items() if isinstance(data, dict) else enumerate(data, start=1)
        for key, record in items:
            where = f"{path}: item {key}"
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record
    else:
        table = _read_parquet(path, None)
        for number, record in enumerate(table.to_pylist(), start=1):
            yield f"{path}: row {number}", record


def _read_parquet(path: Path, column: str | None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if column is not None and column not in schema.names:
            raise DataError(
                f"{path}: no column {column!r} (columns: {', '.join(schema.names) or 'none'})"
            )
        return pq.read_table(path, columns=None if column is None else [column])
    except (pa.ArrowException, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable parquet file: {first_line}") from None


def _parquet_documents(path: Path, column: str) -> list[str]:
    values = _read_parquet(path, column).column(column).to_pylist()
    return [
        text
        for number, value in enumerate(values, start=1)
        if (text := _as_text(value, column, f"{path}: row {number}"))
    ]


def _document_text(record: Mapping[str, Any], text_field: str, where: str) -> str:
    if text_field not in record:
        raise DataError(
            f"{where}: no field {text_field!r} (fields: {', '.join(map(str, record)) or 'none'})"
        )
    return _as_text(record[text_field], text_field, where)


def _as_text(value: Any, text_field: str, where: str) -> str:
    """A string, or a list of strings joined with newlines; blank text becomes ``""``."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = "\n".join(value)
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {text_field!r} must be a string or a list of strings, "
            f"got {type(value).__name__}"
        )
    return value if value.strip() else ""


def _hub_offline() -> bool:
    return any(
        os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _read_hub_documents(source: Source, repo_id: str) -> list[str]:
    where = f"source {source.name!r} ({HUB_PREFIX}{repo_id})"
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise DataError(f"{where}: expected {HUB_PREFIX}owner/name")
    import datasets

    try:
        dataset = datasets.load_dataset(repo_id, split="train")
    except Exception as error:  # datasets raises many types; one line is what the user needs
        if _hub_offline():
            raise DataError(
                f"{where}: Hub dataset not in the local cache and HF_HUB_OFFLINE is set; "
                "download it first or give a local file"
            ) from None
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{where}: cannot load from the Hub (unreachable?): {first_line}") from None
    if source.text_field not in dataset.column_names:
        raise DataError(
            f"{where}: no column {source.text_field!r} (columns: {', '.join(dataset.column_names)})"
        )
    return [
        text
        for number, value in enumerate(dataset[source.text_field], start=1)
        if (text := _as_text(value, source.text_field, f"{where}: row {number}"))
    ]


# --------------------------------------------------------------------------- mixing


def check_weights(sources: Sequence[Source]) -> None:
    """Check that source names are unique, every weight is a finite number ``>= 0`` and at
    least one is positive.

    Raises:
        DataError: naming the first offending source, or saying that all weights are zero.
    """
    if not sources:
        raise DataError("no data sources given")
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise DataError(f"source {source.name!r}: name used twice; names must be unique")
        seen.add(source.name)
    _check_weight_values({source.name: source.weight for source in sources})


def _check_weight_values(weights: Mapping[str, float]) -> None:
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise DataError(f"source {name!r}: weight must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise DataError(f"source {name!r}: weight must be >= 0 and finite, got {weight}")
    if not any(weight > 0 for weight in weights.values()):
        raise DataError(
            f"all source weights are zero ({', '.join(weights)}): at least one must be > 0"
        )


def split_held_out(
    documents: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split ``documents`` into ``(train, held_out)``, deterministically for a seed.

    ``round(fraction * len(documents))`` documents, chosen at random, are held out, but at
    least one when ``fraction > 0`` and at most all but one; with fewer than two documents or
    ``fraction == 0`` nothing is held out. Both lists keep the input order.

    Raises:
        DataError: ``fraction`` outside ``[0, 1)``.
    """
    if not 0 <= fraction < 1:
        raise DataError(f"held-out fraction must be in [0, 1), got {fraction}")
    count = len(documents)
    if fraction == 0 or count < 2:
        return list(documents), []
    held = min(max(1, round(fraction * count)), count - 1)
    chosen = set(random.Random(f"held-out:{seed}").sample(range(count), held))
    train = [doc for index, doc in enumerate(documents) if index not in chosen]
    held_out = [doc for index, doc in enumerate(documents) if index in chosen]
    return train, held_out


def tokenize_documents(documents: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each document, without special tokens (:func:`pack` appends EOS)."""
    ids: list[list[int]] = []
    batch = 1024
    for start in range(0, len(documents), batch):
        encoded = tokenizer(list(documents[start : start + batch]), add_special_tokens=False)
        ids.extend(list(map(list, encoded["input_ids"])))
    return ids


# --------------------------------------------------------------------------- packing


@dataclass
class PackedData:
    """Sequences of exactly ``sequence_length`` tokens, with the counts that describe them.

    Each sequence holds whole documents (each ending in EOS) or, for a document longer than
    ``sequence_length``, one chunk of it; the rest is padding. ``position_ids`` restart at 0
    at every document (or chunk) start, and the padding counts from 0 as a segment of its own,
    so attention stays inside each document: ``transformers`` 5 models given ``position_ids``,
    no ``attention_mask`` and no cache (``use_cache=False``, which the ``Trainer`` sets by
    default) build a block-diagonal causal mask from the restarts, with any attention
    implementation. With a cache (``use_cache=True``) or an ``attention_mask`` they attend
    across documents while positions restart: drop ``position_ids`` in that case, to train as
    plain concatenated pretraining. Labels equal ``input_ids`` except on padding, where they
    are :data:`IGNORE_INDEX` (the model shifts them).

    Attributes:
        sources: source names, in the column order of ``source_tokens``.
        input_ids, labels, position_ids: ``(num_sequences, sequence_length)`` int64 arrays.
        source_tokens: ``(num_sequences, len(sources))`` tokens each sequence takes from each
            source.
        tokens_per_source: training (non-padding) tokens from each source, EOS included.
        documents_per_source: documents (or document prefixes) drawn, repeats counted.
        repeats_per_source: tokens drawn divided by the tokens the source holds: ``0.4`` means
            40 % of it was used, ``2.5`` that it was cycled two and a half times.
        padding_tokens: padding positions in all sequences.
    """

    sequence_length: int
    sources: list[str]
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    source_tokens: np.ndarray
    tokens_per_source: dict[str, int]
    documents_per_source: dict[str, int]
    repeats_per_source: dict[str, float]
    padding_tokens: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sequence as lists, with ``source_tokens`` as a ``{source: count}`` dict."""
        return {
            "input_ids": self.input_ids[index].tolist(),
            "labels": self.labels[index].tolist(),
            "position_ids": self.position_ids[index].tolist(),
            "source_tokens": {
                name: int(count)
                for name, count in zip(self.sources, self.source_tokens[index], strict=True)
                if count
            },
        }

    @property
    def sequences(self) -> list[dict[str, Any]]:
        """Every sequence as :meth:`__getitem__` gives it."""
        return [self[index] for index in range(len(self))]

    @property
    def total_tokens(self) -> int:
        """All positions, padding included: ``len(self) * sequence_length``."""
        return int(self.input_ids.size)

    @property
    def padding_waste(self) -> float:
        """Padding tokens / all tokens (0.0 when there are no sequences)."""
        return self.padding_tokens / self.total_tokens if self.total_tokens else 0.0

    def to_dataset(self) -> Any:
        """A ``datasets.Dataset`` with ``input_ids``, ``labels`` and ``position_ids`` columns."""
        import datasets

        column = _int_list_feature()
        features = datasets.Features(
            {"input_ids": column, "labels": column, "position_ids": column}
        )
        return datasets.Dataset.from_dict(
            {
                "input_ids": self.input_ids,
                "labels": self.labels,
                "position_ids": self.position_ids,
            },
            features=features,
        )

    def summary(self) -> str:
        """One line per source and one for padding, for logs."""
        total = sum(self.tokens_per_source.values()) or 1
        lines = [
            f"{name}: {tokens} tokens ({tokens / total:.1%}), "
            f"{self.documents_per_source[name]} documents, "
            f"{self.repeats_per_source[name]:.2f}x the source"
            for name, tokens in self.tokens_per_source.items()
        ]
        lines.append(
            f"{len(self)} sequences of {self.sequence_length} tokens, "
            f"padding {self.padding_tokens} ({self.padding_waste:.2%})"
        )
        return "\n".join(lines)


def _int_list_feature() -> Any:
    """A ``datasets`` feature for a list of int64 (``List`` since datasets 4, ``Sequence``
    before)."""
    import datasets

    return getattr(datasets, "List", datasets.Sequence)(datasets.Value("int64"))


def pack(
    documents_by_source: Mapping[str, Sequence[Sequence[int]]],
    weights: Mapping[str, float],
    sequence_length: int,
    total_tokens: int | None = None,
    *,
    seed: int = 0,
    eos_id: int,
    pad_id: int | None = None,
) -> PackedData:
    """Mix tokenized documents from several sources by weight and bin-pack them.

    Mixing (in tokens): every document gets ``eos_id`` appended; source ``s`` holds ``C_s``
    tokens that way. With ``total_tokens`` set, source ``s`` contributes
    ``total_tokens * w_s / sum(w)`` tokens (rounded so that they sum to ``total_tokens``);
    a source that holds fewer is cycled: each pass over it takes its documents in a fresh
    order (seeded by ``seed``, the source and the pass). With ``total_tokens=None`` the
    budget is the largest for which no source repeats: the source with the smallest
    ``C_s / w_s`` is used exactly once and the others in proportion, so nothing is repeated.
    Documents are drawn whole in a shuffled order; the last one drawn from a source may be
    cut to hit its share exactly, so the realised ratio matches the weights to within one
    token per source. ``repeats_per_source`` reports how many times each source was used.

    Packing (best-fit decreasing): a document longer than ``sequence_length`` is first cut
    into chunks of ``sequence_length`` tokens, each of which is a sequence of its own, plus a
    shorter remainder. The remaining pieces, longest first, each go into the open sequence
    with the least room that still fits them, or into a new sequence when none does. So a
    sequence is padded only when no remaining piece fits its room. Sequences are then
    shuffled (by ``seed``) so sources interleave through training.

    Args:
        documents_by_source: token ids of each source's documents, without EOS.
        weights: weight of each source (the same names; ``>= 0``, at least one ``> 0``).
        sequence_length: tokens per sequence (``>= 2``).
        total_tokens: training tokens to draw (padding not counted), or None for one pass
            over the most constraining source.
        seed: same seed, same sequences; another seed, other documents orders and sequences.
        eos_id: token appended to every document.
        pad_id: token on padding positions (their labels are :data:`IGNORE_INDEX`); defaults
            to ``eos_id``.

    Raises:
        DataError: weights missing, negative or all zero; a weighted source without tokens;
            ``sequence_length < 2``; ``total_tokens < 1``.
    """
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
        raise DataError(f"sequence_length must be an integer, got {sequence_length!r}")
    if sequence_length < 2:
        raise DataError(f"sequence_length must be at least 2, got {sequence_length}")
    if total_tokens is not None and total_tokens < 1:
        raise DataError(f"total_tokens must be at least 1, got {total_tokens}")
    names = list(documents_by_source)
    missing = [name for name in names if name not in weights]
    extra = [name for name in weights if name not in documents_by_source]
    if missing or extra:
        problem = f"no weight for {missing[0]!r}" if missing else f"no documents for {extra[0]!r}"
        raise DataError(f"sources and weights differ: {problem}")
    _check_weight_values({name: weights[name] for name in names})
    pad = eos_id if pad_id is None else pad_id

    available = {name: sum(len(doc) + 1 for doc in documents_by_source[name]) for name in names}
    for name in names:
        if weights[name] > 0 and available[name] == 0:
            raise DataError(f"source {name!r}: has weight {weights[name]} but no documents")
    targets = _token_targets(available, weights, total_tokens)

    # Draw: pieces are (length, draw order, source index, token ids incl. EOS).
    pieces: list[tuple[int, int, int, list[int]]] = []
    full_chunks: list[tuple[int, list[int]]] = []
    documents_per_source: dict[str, int] = {}
    for source_index, name in enumerate(names):
        drawn = 0
        for tokens in _draw(documents_by_source[name], targets[name], seed, name, eos_id):
            drawn += 1
            for start in range(0, len(tokens), sequence_length):
                piece = tokens[start : start + sequence_length]
                if len(piece) == sequence_length:
                    full_chunks.append((source_index, piece))
                else:
                    pieces.append((len(piece), len(pieces), source_index, piece))
        documents_per_source[name] = drawn

    bins = _best_fit_decreasing(pieces, sequence_length)
    sequences: list[list[tuple[int, list[int]]]] = [[chunk] for chunk in full_chunks]
    sequences += [[(source_index, piece) for _, _, source_index, piece in b] for b in bins]
    random.Random(f"pack-order:{seed}").shuffle(sequences)

    count = len(sequences)
    input_ids = np.full((count, sequence_length), pad, dtype=np.int64)
    labels = np.full((count, sequence_length), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((count, sequence_length), dtype=np.int64)
    source_tokens = np.zeros((count, len(names)), dtype=np.int64)
    ramp = np.arange(sequence_length, dtype=np.int64)
    for row, members in enumerate(sequences):
        offset = 0
        for source_index, piece in members:
            end = offset + len(piece)
            input_ids[row, offset:end] = piece
            labels[row, offset:end] = piece
            position_ids[row, offset:end] = ramp[: len(piece)]
            source_tokens[row, source_index] += len(piece)
            offset = end
        position_ids[row, offset:] = ramp[: sequence_length - offset]

    padding = int(input_ids.size - sum(targets.values()))
    return PackedData(
        sequence_length=sequence_length,
        sources=names,
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        source_tokens=source_tokens,
        tokens_per_source={name: targets[name] for name in names},
        documents_per_source=documents_per_source,
        repeats_per_source={
            name: targets[name] / available[name] if available[name] else 0.0 for name in names
        },
        padding_tokens=padding,
    )


def _token_targets(
    available: Mapping[str, int], weights: Mapping[str, float], total_tokens: int | None
) -> dict[str, int]:
    """Tokens to draw from each source: proportional to weight, summing to the budget."""
    weight_sum = sum(weights[name] for name in available)
    if total_tokens is None:
        budget = min(
            available[name] * weight_sum / weights[name] for name in available if weights[name]
        )
        # One pass over the binding source; floor so that no source exceeds what it holds.
        return {
            name: min(available[name], math.floor(budget * weights[name] / weight_sum + 1e-6))
            for name in available
        }
    exact = {name: total_tokens * weights[name] / weight_sum for name in available}
    targets = {name: math.floor(share) for name, share in exact.items()}
    short = total_tokens - sum(targets.values())
    by_remainder = sorted(available, key=lambda name: targets[name] - exact[name])
    for name in by_remainder[:short]:
        targets[name] += 1
    return targets


def _draw(
    documents: Sequence[Sequence[int]], target: int, seed: int, name: str, eos_id: int
) -> Iterator[list[int]]:
    """Documents (with EOS) in shuffled passes until ``target`` tokens; the last one cut."""
    remaining = target
    epoch = 0
    while remaining > 0:
        order = list(range(len(documents)))
        random.Random(f"draw:{seed}:{name}:{epoch}").shuffle(order)
        for index in order:
            tokens = [*documents[index], eos_id]
            if len(tokens) >= remaining:
                yield tokens[:remaining]
                return
            remaining -= len(tokens)
            yield tokens
        epoch += 1


def _best_fit_decreasing(
    pieces: list[tuple[int, int, int, list[int]]], capacity: int
) -> list[list[tuple[int, int, int, list[int]]]]:
    """Bins of pieces (each shorter than ``capacity``), best fit, longest pieces first.

    Open bins are kept in stacks by their room; ``rooms`` lists the rooms that have a bin, in
    order, so the tightest fitting bin is one bisection away.
    """
    bins: list[list[tuple[int, int, int, list[int]]]] = []
    by_room: dict[int, list[int]] = {}
    rooms: list[int] = []
    for piece in sorted(pieces, key=lambda p: (-p[0], p[1])):
        size = piece[0]
        at = bisect.bisect_left(rooms, size)
        if at < len(rooms):
            room = rooms[at]
            index = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(at)
        else:
            room = capacity
            index = len(bins)
            bins.append([])
        bins[index].append(piece)
        left = room - size
        if left > 0:
            if left not in by_room:
                by_room[left] = []
                bisect.insort(rooms, left)
            by_room[left].append(index)
    return bins


def pack_held_out(
    held_out_by_source: Mapping[str, Sequence[Sequence[int]]],
    sequence_length: int,
    *,
    seed: int = 0,
    eos_id: int,
    pad_id: int | None = None,
) -> dict[str, PackedData]:
    """Pack each source's held-out documents on their own, every token exactly once, for a
    per-source held-out loss. Sources without held-out documents are left out."""
    return {
        name: pack(
            {name: documents},
            {name: 1.0},
            sequence_length,
            seed=seed,
            eos_id=eos_id,
            pad_id=pad_id,
        )
        for name, documents in held_out_by_source.items()
        if documents
    }


@dataclass
class CPTData:
    """What :func:`build_cpt_data` prepares: the mixed training sequences and one packed
    held-out set per source (empty when no fraction is held out)."""

    train: PackedData
    held_out: dict[str, PackedData] = field(default_factory=dict)


def build_cpt_data(
    sources: Sequence[Source],
    tokenizer: Any,
    sequence_length: int,
    *,
    total_tokens: int | None = None,
    held_out_fraction: float = 0.0,
    seed: int = 0,
) -> CPTData:
    """Read, split, tokenize and pack ``sources`` (see :func:`pack` for the mixing rules).

    The held-out fraction is taken from each source's documents before mixing, so held-out
    documents never appear in training. EOS is the tokenizer's; padding uses its pad token,
    or EOS when it has none.

    Raises:
        DataError: any problem :func:`check_weights`, :func:`read_documents` or :func:`pack`
            reports, or a tokenizer without an EOS token.
    """
    check_weights(sources)
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise DataError("the tokenizer has no EOS token; CPT documents are separated by EOS")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    train: dict[str, list[list[int]]] = {}
    held_out: dict[str, list[list[int]]] = {}
    for source in sources:
        documents = read_documents(source)
        train_docs, held_docs = split_held_out(documents, held_out_fraction, seed)
        train[source.name] = tokenize_documents(train_docs, tokenizer)
        held_out[source.name] = tokenize_documents(held_docs, tokenizer)
    weights = {source.name: source.weight for source in sources}
    return CPTData(
        train=pack(
            train, weights, sequence_length, total_tokens, seed=seed, eos_id=eos_id, pad_id=pad_id
        ),
        held_out=pack_held_out(held_out, sequence_length, seed=seed, eos_id=eos_id, pad_id=pad_id),
    )


# --------------------------------------------------------------------------- SFT


Messages = list[dict[str, str]]
"""One conversation: ``[{"role": ..., "content": ...}, ...]``, the last from the assistant."""


def read_sft_records(path: str | os.PathLike[str]) -> list[Messages]:
    """The conversations in an SFT file (``.jsonl``, ``.json`` array or ``.parquet``).

    Each record is one of:

    * chat: ``{"messages": [{"role": ..., "content": ...}, ...]}``, roles ``system``,
      ``user`` or ``assistant``, the last message from the assistant;
    * medical-o1 (``FreedomIntelligence/medical-o1-reasoning-SFT``):
      ``{"Question", "Complex_CoT", "Response"}`` (or ``question``, ``reasoning``,
      ``answer``) becomes ``user: Question`` and
      ``assistant: Complex_CoT.strip() + "\\n\\n" + Response.strip()``; without a reasoning
      field the assistant message is the answer alone;
    * prompt/completion: ``{"prompt", "completion"}`` becomes ``user: prompt``,
      ``assistant: completion``.

    Raises:
        DataError: naming the file and line (or item, or row) of the first record that matches
            none of these, lacks a field, or holds something other than text in it; or the
            file is missing, of another type, or holds no records.
    """
    file = _existing_file(os.fspath(path), SFT_SUFFIXES)
    records = [_sft_messages(record, where) for where, record in _iter_records(file)]
    if not records:
        raise DataError(f"{file}: no records (empty file)")
    return records


def _sft_messages(record: Mapping[str, Any], where: str) -> Messages:
    if "messages" in record:
        return _chat_messages(record["messages"], where)
    if any(key in record for key in (*QUESTION_FIELDS, *ANSWER_FIELDS, *REASONING_FIELDS)):
        question = _field(record, QUESTION_FIELDS, where)
        answer = _field(record, ANSWER_FIELDS, where)
        reasoning = _field(record, REASONING_FIELDS, where, required=False)
        content = answer.strip()
        if reasoning is not None and reasoning.strip():
            content = reasoning.strip() + REASONING_SEPARATOR + content
        return [{"role": "user", "content": question}, {"role": "assistant", "content": content}]
    if "prompt" in record or "completion" in record:
        prompt = _field(record, ("prompt",), where)
        completion = _field(record, ("completion",), where)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    raise DataError(
        f"{where}: expected 'messages', 'Question'+'Complex_CoT'+'Response' (medical-o1) or "
        f"'prompt'+'completion'; found {', '.join(map(str, record)) or 'no fields'}"
    )


def _field(
    record: Mapping[str, Any], names: Sequence[str], where: str, *, required: bool = True
) -> Any:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise DataError(
                    f"{where}: field {name!r} must be a string, got {type(value).__name__}"
                )
            return value
    if required:
        raise DataError(f"{where}: no field {' or '.join(map(repr, names))}")
    return None


def _chat_messages(messages: Any, where: str) -> Messages:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    result: Messages = []
    for number, message in enumerate(messages, start=1):
        at = f"{where}: messages[{number - 1}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{at}: expected an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise DataError(f"{at}: role must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{at}: 'content' must be a string, got {type(content).__name__}")
        result.append({"role": role, "content": content})
    if result[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (the completion)")
    if not any(message["role"] == "user" for message in result):
        raise DataError(f"{where}: no 'user' message")
    return result


def pubmedqa_sft_records(jsonl_path: str | os.PathLike[str]) -> list[Messages]:
    """PubMedQA records as conversations, one per line of a file such as the shipped
    ``evaluations/data/pubmedqa/train.jsonl``.

    User: ``"Abstract: " + "\\n".join(contexts) + "\\nQuestion: " + question`` (the evaluation
    prompt without its trailing ``"Answer:"``). Assistant: ``final_decision + ". " +
    long_answer``, e.g. ``"yes. Vaccines were ..."``. Train on ``train.jsonl`` only: the
    evaluation scores ``test.jsonl``.

    Raises:
        DataError: the file is missing, or a line is not a JSON object with ``question``,
            ``contexts`` (a list of strings), ``final_decision`` and ``long_answer``.
    """
    file = _existing_file(os.fspath(jsonl_path), (".jsonl",))
    records: list[Messages] = []
    for where, record in _iter_records(file):
        question = _field(record, ("question",), where)
        decision = _field(record, ("final_decision",), where)
        long_answer = _field(record, ("long_answer",), where)
        if "contexts" not in record:
            raise DataError(f"{where}: no field 'contexts'")
        abstract = _as_text(record["contexts"], "contexts", where)
        records.append(
            [
                {"role": "user", "content": f"Abstract: {abstract}\nQuestion: {question}"},
                {"role": "assistant", "content": f"{decision}. {long_answer}"},
            ]
        )
    if not records:
        raise DataError(f"{file}: no records (empty file)")
    return records


@dataclass
class SFTData:
    """Tokenized SFT examples and what was left out.

    Attributes:
        examples: ``{"input_ids": [...], "labels": [...]}`` per kept record; labels are
            :data:`IGNORE_INDEX` on every prompt token.
        dropped: ``(record index, token count)`` of each record longer than ``max_length``,
            left out whole (never truncated: a cut completion would teach the model to stop
            mid-answer, a cut prompt would hide the question).
        max_length: the limit applied.
    """

    examples: list[dict[str, list[int]]]
    dropped: list[tuple[int, int]]
    max_length: int

    @property
    def warning(self) -> str | None:
        """One line saying how many records were dropped for length, or None."""
        if not self.dropped:
            return None
        total = len(self.examples) + len(self.dropped)
        longest = max(length for _, length in self.dropped)
        return (
            f"dropped {len(self.dropped)} of {total} SFT records longer than "
            f"max_length={self.max_length} tokens (longest {longest}; first is record "
            f"{self.dropped[0][0]})"
        )

    @property
    def completion_tokens(self) -> int:
        """Tokens that carry loss, over all kept examples."""
        return sum(
            sum(label != IGNORE_INDEX for label in example["labels"]) for example in self.examples
        )

    def to_dataset(self) -> Any:
        """A ``datasets.Dataset`` with ``input_ids`` and ``labels`` columns."""
        import datasets

        column = _int_list_feature()
        return datasets.Dataset.from_dict(
            {
                "input_ids": [example["input_ids"] for example in self.examples],
                "labels": [example["labels"] for example in self.examples],
            },
            features=datasets.Features({"input_ids": column, "labels": column}),
        )


def tokenize_sft(
    records: Sequence[Messages], tokenizer: Any, max_length: int, *, name: str = "SFT data"
) -> SFTData:
    """Render each conversation with the tokenizer's chat template and mask its prompt.

    The prompt is the conversation without its last (assistant) message, rendered with
    ``add_generation_prompt=True``; it must be a prefix of the whole conversation's rendering,
    and the rest (the assistant content plus the template's end-of-turn text) is the
    completion. Prompt and completion are tokenized separately (no special tokens added: the
    template has them) and concatenated, which is exactly what the model sees when it
    generates after that prompt. Labels are :data:`IGNORE_INDEX` on the prompt tokens and the
    token ids on the completion, so the loss covers the final assistant turn only (earlier
    assistant turns are context). Records longer than ``max_length`` tokens are dropped and
    counted in :attr:`SFTData.dropped` / :attr:`SFTData.warning`.

    Args:
        records: conversations, as :func:`read_sft_records` returns them.
        tokenizer: a ``transformers`` tokenizer with a chat template.
        max_length: most tokens per example.
        name: how errors name the data (e.g. its file).

    Raises:
        DataError: the tokenizer has no chat template; a record's last message is not the
            assistant's; the template does not render the prompt as a prefix of the whole
            conversation (naming the record); the completion is empty.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{name}: the tokenizer has no chat template; SFT needs one")
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    examples: list[dict[str, list[int]]] = []
    dropped: list[tuple[int, int]] = []
    for index, messages in enumerate(records):
        where = f"{name} record {index}"
        if not messages or messages[-1].get("role") != "assistant":
            raise DataError(f"{where}: the last message must be the assistant's")
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=False, add_generation_prompt=True
        )
        if not full.startswith(prompt):
            raise DataError(
                f"{where}: the chat template does not render the prompt (with "
                "add_generation_prompt) as a prefix of the whole conversation; cannot tell the "
                "completion from the prompt"
            )
        prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        completion_ids = list(tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"])
        if not completion_ids:
            raise DataError(f"{where}: empty completion after the chat template")
        length = len(prompt_ids) + len(completion_ids)
        if length > max_length:
            dropped.append((index, length))
            continue
        examples.append(
            {
                "input_ids": prompt_ids + completion_ids,
                "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
            }
        )
    return SFTData(examples=examples, dropped=dropped, max_length=max_length)
