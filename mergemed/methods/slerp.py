"""SLERP: spherical linear interpolation between a base model and one other model.

Each output tensor is interpolated as a whole: the two tensors are flattened into vectors, the
angle between them is measured on their normalised copies, and the unnormalised tensors are
mixed with the spherical coefficients. Nearly colinear (or antipodal) pairs, whose angle is too
small for a stable division, fall back to linear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mergemed.methods.registry import (
    MergeInputs,
    StreamingKernel,
    compute_dtype,
    register,
)

COLINEAR_THRESHOLD = 0.9995
"""Above this |cos(angle)| the vectors count as colinear and are interpolated linearly."""

NORM_EPSILON = 1e-8
"""A vector with a smaller norm is not normalised (treated as having norm 1)."""


@dataclass
class SlerpStatistics:
    """Running sums over a tensor's slices: squared norms and the dot product."""

    base_squared_norm: float = 0.0
    other_squared_norm: float = 0.0
    dot: float = 0.0


BLOCK_ELEMENTS = 1 << 20
"""Work on blocks of this many elements so float32 temporaries stay in the CPU cache."""


def _blocks(
    base: torch.Tensor, other: torch.Tensor
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield ``(positions, base_block, other_block)`` over the flattened tensors, in the compute
    dtype.

    Blocks that need a conversion are copied into two scratch buffers allocated once per call
    (a fresh multi-megabyte allocation per block costs page faults); blocks already in the
    compute dtype are views of the inputs and must not be written to.
    """
    dtype = compute_dtype(base)
    base_flat, other_flat = base.reshape(-1), other.reshape(-1)
    total = base_flat.numel()
    scratch = None
    if base.dtype != dtype or other.dtype != dtype:
        scratch = torch.empty((2, min(BLOCK_ELEMENTS, total)), dtype=dtype, device=base.device)
    for start in range(0, total, BLOCK_ELEMENTS):
        positions = slice(start, min(start + BLOCK_ELEMENTS, total))
        count = positions.stop - start
        blocks = []
        for row, flat in enumerate((base_flat, other_flat)):
            block = flat[positions]
            if block.dtype != dtype:
                block = scratch[row, :count].copy_(block)
            blocks.append(block)
        yield positions, blocks[0], blocks[1]


def slerp_statistics(
    base: torch.Tensor, other: torch.Tensor, into: SlerpStatistics | None = None
) -> SlerpStatistics:
    """Add the squared norms and dot product of (a slice of) both tensors to ``into``.

    Each cache-sized block is reduced in float32; the running sums are kept in float64.
    """
    stats = into or SlerpStatistics()
    for _, a, b in _blocks(base, other):
        stats.base_squared_norm += float(torch.dot(a, a))
        stats.other_squared_norm += float(torch.dot(b, b))
        stats.dot += float(torch.dot(a, b))
    return stats


def slerp_coefficients(interpolation_weight: float, stats: SlerpStatistics) -> tuple[float, float]:
    """Return the coefficients ``(c_base, c_other)`` of ``c_base * base + c_other * other``."""
    base_norm = math.sqrt(stats.base_squared_norm)
    other_norm = math.sqrt(stats.other_squared_norm)
    base_norm = base_norm if base_norm > NORM_EPSILON else 1.0
    other_norm = other_norm if other_norm > NORM_EPSILON else 1.0
    cosine = max(-1.0, min(1.0, stats.dot / (base_norm * other_norm)))
    t = interpolation_weight
    if abs(cosine) > COLINEAR_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(cosine)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp(interpolation_weight: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Spherically interpolate from ``base`` (t = 0) to ``other`` (t = 1).

    The result is in float32 (float64 for float64 inputs).
    """
    stats = slerp_statistics(base, other)
    return _combine(base, other, slerp_coefficients(interpolation_weight, stats))


def _combine(
    base: torch.Tensor,
    other: torch.Tensor,
    coefficients: tuple[float, float],
    output_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``c_base * base + c_other * other`` computed block by block in float32 (float64 for
    float64 inputs) and stored in ``output_dtype`` (default: that compute dtype)."""
    dtype = compute_dtype(base)
    c_base, c_other = coefficients
    result = torch.empty(base.shape, dtype=output_dtype or dtype, device=base.device)
    flat_result = result.reshape(-1)
    mixed_buffer = None
    for positions, a, b in _blocks(base, other):
        target = flat_result[positions]
        if target.dtype == dtype:
            mixed = target
        else:
            if mixed_buffer is None:
                mixed_buffer = torch.empty(a.numel(), dtype=dtype, device=base.device)
            mixed = mixed_buffer[: a.numel()]
        torch.mul(a, c_base, out=mixed)
        mixed.add_(b, alpha=c_other)
        if mixed is not target:
            target.copy_(mixed)
    return result


def _pair(inputs: MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
    base_index = inputs.base_index
    other_index = 1 - base_index
    return inputs.tensors[base_index], inputs.tensors[other_index]


def _merge(inputs: MergeInputs) -> torch.Tensor:
    base, other = _pair(inputs)
    stats = slerp_statistics(base, other)
    coefficients = slerp_coefficients(inputs.parameters["t"], stats)
    return _combine(base, other, coefficients, inputs.output_dtype)


def _accumulate(inputs: MergeInputs, state: SlerpStatistics | None) -> SlerpStatistics:
    return slerp_statistics(*_pair(inputs), into=state)


def _finalize(inputs: MergeInputs, state: SlerpStatistics) -> tuple[float, float]:
    return slerp_coefficients(inputs.parameters["t"], state)


def _combine_slice(inputs: MergeInputs, coefficients: tuple[float, float]) -> torch.Tensor:
    return _combine(*_pair(inputs), coefficients, inputs.output_dtype)


register(
    "slerp",
    _merge,
    streaming=StreamingKernel(combine=_combine_slice, accumulate=_accumulate, finalize=_finalize),
)
