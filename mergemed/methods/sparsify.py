"""Sparsification of task vectors: which entries of ``model - base`` a merge keeps.

* ``magnitude`` (TIES): the largest magnitudes.
* ``random`` (DARE): each entry with probability ``density``.
* ``outliers`` (Model Breadcrumbs): the largest ``gamma`` fraction is dropped as outliers, then
  the smallest, so that ``density`` of the entries remain.
* ``rank`` (DELLA's MagPrune): each entry with a probability that grows with its magnitude's
  rank in its row, from ``density - epsilon`` (smallest) to ``density + epsilon`` (largest).

A kept task vector may be rescaled so its L1 norm equals the original's.
"""

from __future__ import annotations

import torch

from mergemed.methods.specs import Sparsification

RESCALE_EPSILON = 1e-7


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Mask keeping the ``max(1, int(density * n))`` largest-magnitude entries of ``delta``."""
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    keep = max(1, int(density * delta.numel()))
    flat = delta.abs().reshape(-1)
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, keep, sorted=False).indices] = 1
    return mask.reshape(delta.shape)


def random_mask(
    delta: torch.Tensor, density: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Bernoulli mask keeping each entry with probability ``density`` (drawn from ``generator``)."""
    probabilities = torch.full_like(delta, density)
    return torch.bernoulli(probabilities, generator=generator)


def outlier_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the ``int(gamma * n)`` largest magnitudes, keep the next
    ``int(density * n)``; when both do not fit, fewer outliers are dropped."""
    count = delta.numel()
    keep = int(density * count)
    outliers = int(gamma * count)
    smallest = max(0, count - keep - outliers)
    order = torch.sort(delta.abs().reshape(-1).float()).indices
    mask = torch.zeros(count, dtype=delta.dtype, device=delta.device)
    mask[order[smallest : smallest + keep]] = 1
    return mask.reshape(delta.shape)


def rank_mask(
    delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator | None
) -> torch.Tensor:
    """DELLA's MagPrune: keep entry ``j`` of a row with probability
    ``density - epsilon + 2 epsilon (rank_j - 1) / (columns - 1)``, rank 1 being the smallest
    magnitude. A vector is one row; a row of one entry is kept with probability ``density``."""
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32) + 1
    lowest = ranks.min(dim=1, keepdim=True).values
    highest = ranks.max(dim=1, keepdim=True).values
    spread = highest - lowest
    normalised = torch.where(spread > 0, (ranks - lowest) / spread.clamp(min=1), 0.5).clamp(0, 1)
    probabilities = (density - epsilon) + normalised * 2 * epsilon
    return torch.bernoulli(probabilities, generator=generator).to(delta.dtype).reshape(delta.shape)


def rescale_to_l1(original: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale ``masked`` so that its L1 norm equals that of ``original``."""
    before = original.abs().sum()
    after = masked.abs().sum()
    if before < RESCALE_EPSILON or after < RESCALE_EPSILON:
        return masked
    return masked * (before / after)


def sparsify(
    delta: torch.Tensor,
    density: float,
    method: Sparsification,
    rescale: bool,
    generator: torch.Generator | None = None,
    *,
    gamma: float = 0.01,
    epsilon: float = 0.15,
) -> torch.Tensor:
    """Drop entries of a task vector by ``method``, optionally rescaling to its L1 norm."""
    if method is None or density >= 1:
        return delta
    if method == "magnitude":
        mask = magnitude_mask(delta, density)
    elif method == "random":
        mask = random_mask(delta, density, generator)
    elif method == "outliers":
        mask = outlier_mask(delta, density, gamma)
    elif density <= 0:
        return torch.zeros_like(delta)
    else:
        mask = rank_mask(delta, density, epsilon, generator)
    masked = delta * mask
    return rescale_to_l1(delta, masked) if rescale else masked
