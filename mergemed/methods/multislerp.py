"""Multi-SLERP: a weighted barycentre of any number of models on the hypersphere.

Each tensor (or task vector from an optional base) is flattened and normalised; the weighted mean
of the unit vectors gives a tangent point, the weighted tangent vectors are summed there and
mapped back onto the sphere, and the result is scaled by the weighted mean norm.
"""

from __future__ import annotations

import torch

from mergemed.errors import MergeError
from mergemed.methods.registry import (
    MergeInputs,
    model_values,
    register,
    split_base,
)


def multislerp(
    tensors: list[torch.Tensor],
    weights: list[float],
    *,
    base: torch.Tensor | None = None,
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Spherical barycentre of ``tensors`` (task vectors from ``base`` when it is given).

    Every vector zero (GPT-2's biases before training) gives zero; mergekit 0.1.5 refuses it.

    Raises:
        MergeError: three or more vectors whose weighted unit mean is zero (antipodal sets).
    """
    if len(tensors) == 1:
        return tensors[0]
    stacked = torch.stack(tensors)
    if base is not None:
        stacked = stacked - base
    shape = stacked.shape[1:]
    flat = stacked.reshape(len(tensors), -1)
    weight = torch.tensor(weights, dtype=flat.dtype, device=flat.device)
    if normalize_weights:
        weight = weight / weight.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    if not norms.any():
        result = torch.zeros(shape, dtype=flat.dtype, device=flat.device)
        return result if base is None else result + base
    units = flat / (norms + eps)
    mean = (units * weight.view(-1, 1)).sum(0)
    mean_norm = mean.norm()
    if mean_norm < eps:
        if len(tensors) != 2:
            raise MergeError(
                "multislerp: the weighted mean of the unit vectors is zero (antipodal models "
                "with balancing weights); change the weights"
            )
        result = (flat[0] * weight[0] + flat[1] * weight[1]).reshape(shape)
        return result if base is None else result + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weight.view(-1, 1)).sum(0)
    length = tangent.norm() + eps
    result = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
    result = (result * (norms.squeeze(-1) * weight).sum()).reshape(shape)
    return result if base is None else result + base


def _merge(inputs: MergeInputs) -> torch.Tensor:
    base, others = split_base(inputs)
    return multislerp(
        others,
        model_values(inputs, "weight"),
        base=base,
        normalize_weights=inputs.parameters["normalize_weights"],
        eps=inputs.parameters["eps"],
    )


register("multislerp", _merge)
