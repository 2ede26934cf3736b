"""RAM (Reinforced Agent Merging) and RAM+ (tensor-local).

An entry of a task vector counts as changed when ``|model - base| > epsilon``. Entries changed by
one model alone are taken whole; entries changed by several are averaged over those that
changed them. RAM+ scales each model's unique entries by ``1 + r * min(alpha, shared / unique)``,
its counts of shared and unique changed entries in the tensor.
"""

from __future__ import annotations

import torch

from mergemed.methods.registry import (
    MergeInputs,
    Parameter,
    StreamingKernel,
    register,
    split_base,
)


def _changes(base: torch.Tensor, others: list[torch.Tensor], epsilon: float):
    flat = torch.stack([o - base for o in others]).reshape(len(others), -1)
    changed = flat.abs() > epsilon
    counts = changed.sum(dim=0, keepdim=True)
    return flat * changed, changed, counts, counts > 1, counts == 1


def ram(base: torch.Tensor, others: list[torch.Tensor], epsilon: float = 1e-5) -> torch.Tensor:
    """RAM: unique changes whole, shared changes averaged over the models that made them."""
    if not others:
        return base
    kept, _, counts, shared, unique = _changes(base, others, epsilon)
    merged = (kept * unique + kept * shared / counts.clamp(min=1)).sum(dim=0)
    return base + merged.reshape(base.shape)


def ramplus(
    base: torch.Tensor,
    others: list[torch.Tensor],
    *,
    r: float = 0.1,
    alpha: float = 0.2,
    epsilon: float = 1e-5,
) -> torch.Tensor:
    """RAM+ (tensor-local): RAM with each model's unique changes boosted by its overlap ratio."""
    if not others:
        return base
    kept, changed, counts, shared, unique = _changes(base, others, epsilon)
    shared_counts = (changed & shared).sum(dim=1)
    unique_counts = (changed & unique).sum(dim=1)
    ratio = shared_counts / unique_counts.clamp(min=epsilon)
    boost = 1 + r * ratio.clamp(min=0, max=alpha)
    merged = (kept * unique * boost.unsqueeze(-1) + kept * shared / counts.clamp(min=1)).sum(dim=0)
    return base + merged.reshape(base.shape)


def _ram(inputs: MergeInputs) -> torch.Tensor:
    base, others = split_base(inputs)
    return ram(base, others, inputs.parameters["epsilon"])


def _ramplus(inputs: MergeInputs) -> torch.Tensor:
    base, others = split_base(inputs)
    p = inputs.parameters
    return ramplus(base, others, r=p["r"], alpha=p["alpha"], epsilon=p["epsilon"])


_EPSILON = Parameter(
    "epsilon", "global", float, 1e-5, minimum=0.0, description="smallest change that counts"
)

register("ram", _ram, streaming=StreamingKernel(combine=lambda inputs, _: _ram(inputs)))

register("ramplus_tl", _ramplus)
