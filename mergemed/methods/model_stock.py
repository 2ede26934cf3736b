"""Model Stock: move from the base towards the average of the fine-tuned models by a ratio
set by the angle between their task vectors (Jang et al., 2024).

With ``N`` task vectors whose mean pairwise cosine is ``c``, ``t = N c / (1 + (N - 1) c)`` and
the result is ``t * mean(models) + (1 - t) * base``; ``filter_wise`` takes one angle per row.
Where the denominator vanishes the base is kept.
"""

from __future__ import annotations

import torch

from mergemed.methods.registry import MergeInputs, register, split_base

SINGULAR = 1e-6


def model_stock(
    base: torch.Tensor, others: list[torch.Tensor], *, filter_wise: bool = False
) -> torch.Tensor:
    """The Model Stock interpolation of ``others`` (two or more) towards their mean."""
    shape = base.shape
    if filter_wise:
        if base.dim() == 1:
            base, others = base.unsqueeze(0), [o.unsqueeze(0) for o in others]
    else:
        base, others = base.reshape(-1), [o.reshape(-1) for o in others]
    offsets = [o - base for o in others]
    cosines = []
    for index, first in enumerate(offsets):
        for second in offsets[index + 1 :]:
            norms = first.norm(dim=-1) * second.norm(dim=-1)
            cosines.append(((first * second).sum(dim=-1) / norms.clamp(min=SINGULAR)).clamp(-1, 1))
    cosine = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    count = len(others)
    denominator = 1 + (count - 1) * cosine
    singular = denominator.abs() < SINGULAR
    ratio = torch.where(
        singular,
        torch.zeros_like(cosine),
        count * cosine / torch.where(singular, torch.ones_like(denominator), denominator),
    )
    average = sum(others) / count
    return (ratio * average + (1 - ratio) * base).reshape(shape)


def _merge(inputs: MergeInputs) -> torch.Tensor:
    base, others = split_base(inputs)
    return model_stock(base, others, filter_wise=inputs.parameters["filter_wise"])


register("model_stock", _merge)
