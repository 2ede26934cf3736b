"""SCE: select, calculate, erase (Wan et al., 2024, FuseChat).

Task vectors are optionally restricted to the ``select_topk`` fraction of entries where they
vary most across models; each is weighted by its mean square (its share of the total); entries
whose sign disagrees with the sign of the sum are erased; the weighted mean of what remains is
added to the base.
"""

from __future__ import annotations

import torch

from mergemed.methods.registry import (
    MergeInputs,
    register,
    split_base,
)
from mergemed.methods.task_arithmetic import sign_consensus_mask


def variance_mask(task_vectors: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * nonzero)`` entries whose variance across models is largest."""
    if density <= 0:
        return torch.zeros_like(task_vectors[0])
    if density >= 1:
        return torch.ones_like(task_vectors[0])
    variance = torch.var(task_vectors, dim=0, unbiased=False)
    keep = int(torch.count_nonzero(variance) * density)
    mask = torch.zeros_like(variance)
    if keep:
        mask.view(-1)[torch.topk(variance.abs().reshape(-1), k=keep).indices] = 1
    return mask


def mean_square_weights(task_vectors: torch.Tensor) -> torch.Tensor:
    """Each task vector's mean square over the total (equal shares when all are zero)."""
    weights = task_vectors.square().reshape(task_vectors.shape[0], -1).mean(dim=1)
    total = weights.sum().item()
    if abs(total) < 1e-6:
        return torch.ones_like(weights) / weights.shape[0]
    return weights / total


def sce(base: torch.Tensor, others: list[torch.Tensor], select_topk: float = 1.0) -> torch.Tensor:
    """The SCE merge of ``others`` onto ``base``."""
    if not others:
        return base
    task_vectors = torch.stack([o - base for o in others])
    if select_topk < 1:
        task_vectors = task_vectors * variance_mask(task_vectors, select_topk).unsqueeze(0)
    agrees = sign_consensus_mask(task_vectors)
    weights = mean_square_weights(task_vectors)
    weights = weights.reshape((-1,) + (1,) * (task_vectors.dim() - 1)) * agrees
    merged = (task_vectors * weights).sum(dim=0)
    return base + merged / weights.sum(dim=0).clamp(min=1e-6)


def _merge(inputs: MergeInputs) -> torch.Tensor:
    base, others = split_base(inputs)
    return sce(base, others, inputs.parameters["select_topk"])


register("sce", _merge)
