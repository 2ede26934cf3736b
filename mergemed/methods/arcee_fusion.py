"""Arcee Fusion: keep the other model's changes only where they matter most.

An entry's importance is ``|other - base|`` times the KL divergence between the softmax of its
row in the other model and in the base. Changes whose importance reaches
``median + 1.5 * IQR`` of all importances are applied to the base; the rest are dropped.
Quantiles of tensors over a million entries are estimated from a random sample of a million
(drawn from the tensor's seeded generator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mergemed.methods.registry import MergeInputs, register, split_base

QUANTILE_SAMPLE = 1_000_000
KL_EPSILON = 1e-8


def importance(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``|other - base|`` times the row-wise KL divergence of the two softmaxes."""
    p = F.softmax(other, dim=-1) + KL_EPSILON
    q = F.softmax(base, dim=-1) + KL_EPSILON
    divergence = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    return (other - base).abs() * divergence


def fusion_threshold(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``median + 1.5 * (q3 - q1)`` of ``scores`` (of a sample when they are many)."""
    flat = scores.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        picks = torch.randint(
            flat.numel(), (QUANTILE_SAMPLE,), generator=generator, device=flat.device
        )
        flat = flat[picks]
    ordered = torch.sort(flat).values
    positions = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long()
    q1, median, q3 = ordered[positions.to(ordered.device)]
    return median + 1.5 * (q3 - q1)


def arcee_fusion(
    base: torch.Tensor, other: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The base plus the other model's changes whose importance reaches the threshold."""
    scores = importance(base, other)
    mask = (scores >= fusion_threshold(scores, generator)).to(base.dtype)
    return base + (other - base) * mask


def _merge(inputs: MergeInputs) -> torch.Tensor:
    base, (other,) = split_base(inputs)
    return arcee_fusion(base, other, inputs.generator)


register("arcee_fusion", _merge)
