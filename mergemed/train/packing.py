"""Packing tokenized documents into fixed-length sequences for continual pretraining (CPT).

Step by step (:func:`build_cpt_data` does all four):

1. :func:`mergemed.train.sources.read_documents` reads each :class:`Source` into documents.
2. :func:`mergemed.train.mixing.split_held_out` sets a deterministic fraction of each source's
   documents aside for per-source held-out loss.
3. :func:`mergemed.train.tokens.tokenize_documents` turns documents into token ids (no special
   tokens).
4. :func:`pack` draws tokens from each source in proportion to its weight (the ratio holds in
   tokens, not documents; :mod:`mergemed.train.mixing`), appends EOS to every document, and
   bin-packs documents (best fit, longest first) into sequences of exactly ``sequence_length``
   tokens, whose position ids restart at every document. :func:`pack_held_out` packs each
   source's held-out documents on their own.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mergemed.train.mixing import (
    check_weight_values,
    check_weights,
    draw_documents,
    split_held_out,
    token_targets,
)
from mergemed.train.sources import DataError, Source, read_documents
from mergemed.train.tokens import IGNORE_INDEX, int_list_feature, tokenize_documents

__all__ = ["CPTData", "PackedData", "build_cpt_data", "pack", "pack_held_out"]


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

        column = int_list_feature()
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
    check_weight_values({name: weights[name] for name in names})
    pad = eos_id if pad_id is None else pad_id

    available = {name: sum(len(doc) + 1 for doc in documents_by_source[name]) for name in names}
    for name in names:
        if weights[name] > 0 and available[name] == 0:
            raise DataError(f"source {name!r}: has weight {weights[name]} but no documents")
    targets = token_targets(available, weights, total_tokens)

    # Draw: pieces are (length, draw order, source index, token ids incl. EOS).
    pieces: list[tuple[int, int, int, list[int]]] = []
    full_chunks: list[tuple[int, list[int]]] = []
    documents_per_source: dict[str, int] = {}
    for source_index, name in enumerate(names):
        drawn = 0
        for tokens in draw_documents(documents_by_source[name], targets[name], seed, name, eos_id):
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
