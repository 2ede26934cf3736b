"""Mixing training sources by weight, in tokens: checking the weights, holding documents out,
how many tokens each source contributes, and drawing its documents (cycling a source that
holds fewer tokens than its share, in a fresh order each pass).

:func:`mergemed.train.packing.pack` uses these to fill its sequences; the ratio holds in
tokens, not documents.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence

from mergemed.train.sources import DataError, Source

__all__ = [
    "check_weight_values",
    "check_weights",
    "draw_documents",
    "split_held_out",
    "token_targets",
]


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
    check_weight_values({source.name: source.weight for source in sources})


def check_weight_values(weights: Mapping[str, float]) -> None:
    """Check that every weight is a finite number ``>= 0`` and at least one is positive.

    Raises:
        DataError: naming the first offending source, or saying that all weights are zero.
    """
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


def token_targets(
    available: Mapping[str, int], weights: Mapping[str, float], total_tokens: int | None
) -> dict[str, int]:
    """Tokens to draw from each source: proportional to weight, summing to the budget.

    Args:
        available: tokens each source holds (EOS included).
        weights: each source's weight (checked by :func:`check_weight_values`).
        total_tokens: the budget, or None for the largest budget that repeats no source.
    """
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


def draw_documents(
    documents: Sequence[Sequence[int]], target: int, seed: int, name: str, eos_id: int
) -> Iterator[list[int]]:
    """Documents (with EOS) in shuffled passes until ``target`` tokens; the last one cut.

    Each pass takes the documents in a fresh order, seeded by ``seed``, ``name`` and the pass.
    """
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
