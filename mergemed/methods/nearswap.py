"""NearSwap: take the other model's value where it is close to the base's.

Each entry moves from the base towards the other model by ``min(1, t / |base - other|)``: entries
that differ by less than ``t`` are swapped outright, distant ones barely move.
"""

from __future__ import annotations

import torch

from mergemed.methods.registry import (
    MergeInputs,
    StreamingKernel,
    register,
    split_base,
)


def nearswap(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``w * other + (1 - w) * base`` with ``w = clamp(t / |base - other|, 0, 1)``."""
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


def _merge(inputs: MergeInputs) -> torch.Tensor:
    base, (other,) = split_base(inputs)
    return nearswap(inputs.parameters["t"], base, other)


register("nearswap", _merge, streaming=StreamingKernel(combine=lambda inputs, _: _merge(inputs)))
