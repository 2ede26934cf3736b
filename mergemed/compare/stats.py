"""Float64 sums over the elements of two (or three) checkpoints, and the metrics made from them.

Per tensor :class:`Sums` keeps

* ``<A, B>``, ``|A|^2``, ``|B|^2`` and ``|A - B|^2``: cosine similarity and relative change
  ``|A - B| / |B|``;
* with a base C, ``<A - C, B - C>``, ``|A - C|^2``, ``|B - C|^2`` and ``|C|^2``: the angle
  between the two task vectors and each one's size relative to the base.

Sums add up over the tensors of a component (``q_proj`` weight and bias, say), of a layer and
of the whole model, so every aggregate is exact, not an average of ratios. A model against
itself gives cosine 1 and relative change 0 exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_CHUNK_ELEMENTS = 4 * 1024 * 1024
"""Elements of a tensor read at a time (8 MiB of bfloat16 per model)."""

COMPUTE_BLOCK_ELEMENTS = 256 * 1024
"""Elements converted to float64 and summed at a time (2 MiB per model: stays in cache)."""


@dataclass
class Sums:
    """Float64 sums over the elements compared; they add up across tensors."""

    elements: int = 0
    dot: float = 0.0
    a_sq: float = 0.0
    b_sq: float = 0.0
    diff_sq: float = 0.0
    base_elements: int = 0
    """Elements that also had a base value (the task-vector sums cover only these)."""
    base_sq: float = 0.0
    task_dot: float = 0.0
    task_a_sq: float = 0.0
    task_b_sq: float = 0.0

    def add(self, other: Sums) -> None:
        """Add ``other``'s sums to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def finite(self) -> bool:
        """False when NaN or Inf values were met (every metric is then None)."""
        return all(math.isfinite(getattr(self, name)) for name in self.__dataclass_fields__)

    def metrics(self, with_base: bool) -> dict[str, Any]:
        """Cosine, relative change and, ``with_base``, the task-vector angle and sizes.

        A metric that is undefined (a zero vector, NaN or Inf weights) is None.
        """
        if not self.finite:
            names = ["cosine", "relative_change"]
            if with_base:
                names += ["task_cosine", "task_angle", "task_change_a", "task_change_b"]
            return {"elements": self.elements, **dict.fromkeys(names)}
        identical = self.diff_sq == 0
        result: dict[str, Any] = {
            "elements": self.elements,
            "cosine": _cosine(self.dot, self.a_sq, self.b_sq, identical=identical),
            "relative_change": _ratio(self.diff_sq, self.b_sq),
        }
        if with_base:
            cosine = None
            if self.base_elements:
                cosine = _cosine(self.task_dot, self.task_a_sq, self.task_b_sq, identical=identical)
            result["task_cosine"] = cosine
            result["task_angle"] = None if cosine is None else math.degrees(math.acos(cosine))
            result["task_change_a"] = (
                _ratio(self.task_a_sq, self.base_sq) if self.base_elements else None
            )
            result["task_change_b"] = (
                _ratio(self.task_b_sq, self.base_sq) if self.base_elements else None
            )
        return result


def _cosine(dot: float, left_sq: float, right_sq: float, *, identical: bool) -> float | None:
    if left_sq == 0 or right_sq == 0:
        return None
    if identical:
        return 1.0
    return max(-1.0, min(1.0, dot / math.sqrt(left_sq * right_sq)))


def _ratio(numerator_sq: float, denominator_sq: float) -> float | None:
    if numerator_sq == 0:
        return 0.0
    if denominator_sq == 0:
        return None
    return math.sqrt(numerator_sq / denominator_sq)


def accumulate(sums: Sums, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> None:
    """Fold one slice of A, B (and base C), already float64 and owned, into ``sums``.

    Consumes ``a`` and ``b``: they are overwritten in place to hold the differences.

    Args:
        sums: the sums to add to.
        a: flat float64 values of A (overwritten).
        b: flat float64 values of B, as many as ``a`` (overwritten).
        c: flat float64 values of the base, as many as ``a``, or None.
    """
    sums.elements += a.numel()
    sums.dot += float(torch.dot(a, b))
    sums.a_sq += float(torch.dot(a, a))
    sums.b_sq += float(torch.dot(b, b))
    if c is not None:
        sums.base_elements += c.numel()
        sums.base_sq += float(torch.dot(c, c))
        task_a, task_b = a.sub_(c), b.sub_(c)
        sums.task_dot += float(torch.dot(task_a, task_b))
        sums.task_a_sq += float(torch.dot(task_a, task_a))
        sums.task_b_sq += float(torch.dot(task_b, task_b))
    difference = a.sub_(b)  # (A - C) - (B - C) with a base: the same A - B
    sums.diff_sq += float(torch.dot(difference, difference))


class BlockAccumulator:
    """Adds slices of any dtype to :class:`Sums` in float64, a cache-sized block at a time."""

    def __init__(self, chunk_elements: int):
        """Allocate the float64 working copies for slices of up to ``chunk_elements``.

        Args:
            chunk_elements: the longest slice :meth:`fold` will be given; the blocks are
                :data:`COMPUTE_BLOCK_ELEMENTS` long, or this when it is shorter.
        """
        # Float64 working copies of A, B and C, one block long and reused: fresh ones would cost
        # a page fault per 4 KiB, and blocks small enough to stay in the CPU cache make the five
        # passes over them (convert, three dot products, subtract) about twice as fast.
        block = max(1, min(COMPUTE_BLOCK_ELEMENTS, chunk_elements))
        self.scratch = {
            role: torch.empty(block, dtype=torch.float64) for role in ("a", "b", "base")
        }

    def fold(
        self,
        sums: Sums,
        a: torch.Tensor,
        b: torch.Tensor,
        c: torch.Tensor | None,
        count: int,
        with_base: int,
    ) -> None:
        """Add the first ``count`` elements of flat slices ``a`` and ``b`` (and the first
        ``with_base`` of ``c``) to ``sums``, a cache-sized block at a time, in float64.

        Args:
            sums: the sums to add to.
            a: a flat slice of A (any float dtype; not modified).
            b: the same slice of B.
            c: the same slice of the base, or None.
            count: elements of ``a`` and ``b`` to compare.
            with_base: how many of those (the leading ones) also have a value in ``c``.
        """
        scratch = self.scratch
        block = len(scratch["a"])
        for offset in range(0, count, block):
            size = min(block, count - offset)
            a64 = scratch["a"][:size].copy_(a[offset : offset + size])
            b64 = scratch["b"][:size].copy_(b[offset : offset + size])
            based = max(0, min(size, with_base - offset)) if c is not None else 0
            if based:
                c64 = scratch["base"][:based].copy_(c[offset : offset + based])
                accumulate(sums, a64[:based], b64[:based], c64)
            if based < size:
                accumulate(sums, a64[based:], b64[based:], None)
