"""NuSLERP: spherical interpolation of two models by their weights, optionally of their task
vectors from a base, over whole tensors (``nuslerp_flatten``, the default) or row by row.

``t = w_2 / (w_1 + w_2)`` (0.5 when the weights sum to zero). With a base the two task vectors
``model - base`` are interpolated and added to the base. Pairs too close to colinear
(``1 - cos^2 <= 1e-16``) are interpolated linearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mergemed.methods.registry import (
    MergeInputs,
    StreamingKernel,
    compute_dtype,
    model_values,
    register,
    split_base,
)

NORM_FLOOR = 1e-7
"""Norms are clamped to at least this before normalising."""

COLINEAR_EPSILON = 1e-8
"""Vectors with ``1 - cos^2 <= COLINEAR_EPSILON^2`` are interpolated linearly."""


def interpolation_weight(weights: list[float]) -> float:
    """``t`` of the second model: its share of the two weights (0.5 for a zero sum)."""
    total = sum(weights)
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def nuslerp(
    t: float, first: torch.Tensor, second: torch.Tensor, *, row_wise: bool, flatten: bool
) -> torch.Tensor:
    """Spherically interpolate ``first`` (t = 0) to ``second`` (t = 1): as whole vectors when
    ``flatten``, else along the last axis (the first with ``row_wise``)."""
    shape = first.shape
    if flatten:
        first, second = first.reshape(-1), second.reshape(-1)
    elif row_wise:
        first, second = first.transpose(0, -1), second.transpose(0, -1)
    first_unit = first / first.norm(dim=-1, keepdim=True).clamp(min=NORM_FLOOR)
    second_unit = second / second.norm(dim=-1, keepdim=True).clamp(min=NORM_FLOOR)
    cosine = (first_unit * second_unit).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cosine.square()) <= COLINEAR_EPSILON**2
    theta = torch.acos(torch.where(colinear, 0, cosine))
    spherical = (torch.sin((1 - t) * theta) * first + torch.sin(t * theta) * second) / torch.sin(
        theta
    )
    result = torch.where(colinear, (1 - t) * first + t * second, spherical)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


@dataclass
class _Statistics:
    first_squared: float = 0.0
    second_squared: float = 0.0
    dot: float = 0.0


def _ends(inputs: MergeInputs) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    base, (first, second) = split_base(inputs)
    if base is not None:
        first, second = first - base, second - base
    return base, first, second


def _accumulate(inputs: MergeInputs, state: _Statistics | None) -> _Statistics:
    state = state or _Statistics()
    _, first, second = _ends(inputs)
    first, second = first.reshape(-1), second.reshape(-1)
    state.first_squared += float(torch.dot(first, first))
    state.second_squared += float(torch.dot(second, second))
    state.dot += float(torch.dot(first, second))
    return state


def _finalize(inputs: MergeInputs, state: _Statistics) -> tuple[float, float]:
    t = interpolation_weight(model_values(inputs, "weight"))
    first_norm = max(math.sqrt(state.first_squared), NORM_FLOOR)
    second_norm = max(math.sqrt(state.second_squared), NORM_FLOOR)
    cosine = max(-1.0, min(1.0, state.dot / (first_norm * second_norm)))
    if 1 - cosine * cosine <= COLINEAR_EPSILON**2:
        return 1 - t, t
    theta = math.acos(cosine)
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def _combine(inputs: MergeInputs, coefficients: tuple[float, float]) -> torch.Tensor:
    base, first, second = _ends(inputs)
    result = first * coefficients[0] + second * coefficients[1]
    return result if base is None else base + result


def _merge(inputs: MergeInputs) -> torch.Tensor:
    if inputs.parameters["nuslerp_flatten"]:
        return _combine(inputs, _finalize(inputs, _accumulate(inputs, None)))
    base, first, second = _ends(inputs)
    t = interpolation_weight(model_values(inputs, "weight"))
    row_wise = inputs.parameters["nuslerp_row_wise"]
    result = nuslerp(t, first, second, row_wise=row_wise, flatten=False)
    return result.to(compute_dtype(first)) if base is None else base + result


register(
    "nuslerp",
    _merge,
    streaming=StreamingKernel(
        combine=_combine,
        accumulate=_accumulate,
        finalize=_finalize,
        applies=lambda inputs: inputs.parameters["nuslerp_flatten"],
    ),
)
