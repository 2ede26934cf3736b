"""Karcher mean: the Riemannian centre of mass of the models' tensors on the unit sphere,
scaled by their mean norm. Every model counts equally (the base too, when one is given).

Starting from the normalised arithmetic mean of the unit vectors, each step moves along the
mean of the log maps until the step is shorter than ``tol`` or ``max_iter`` steps are done.
"""

from __future__ import annotations

import torch

from mergemed.methods.registry import MergeInputs, compute_dtype, register


def karcher_mean(
    tensors: list[torch.Tensor], *, max_iter: int = 10, tol: float = 1e-5
) -> torch.Tensor:
    """The equally weighted Karcher mean of ``tensors`` (flattened), times their mean norm."""
    if len(tensors) == 1:
        return tensors[0]
    alpha = 1.0 / len(tensors)
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    units = [
        torch.zeros_like(t) if n.item() == 0.0 else t / n
        for t, n in zip(tensors, norms, strict=True)
    ]
    valid = [u for u, n in zip(units, norms, strict=True) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    share = 1.0 / len(valid)
    mean = torch.zeros_like(valid[0])
    for unit in valid:
        mean += share * unit
    mean_norm = torch.linalg.vector_norm(mean)
    mean = valid[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for unit in valid:
            dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += share * (theta / torch.sin(theta)) * (unit - dot * mean)
        step = torch.linalg.vector_norm(tangent)
        if step.item() < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        length = torch.linalg.vector_norm(mean)
        if length.item() > tol:
            mean = mean / length
    return sum(alpha * n for n in norms) * mean


def _merge(inputs: MergeInputs) -> torch.Tensor:
    dtype = compute_dtype(inputs.tensors[0])
    return karcher_mean(
        [t.to(dtype) for t in inputs.tensors],
        max_iter=int(inputs.parameters["max_iter"]),
        tol=inputs.parameters["tol"],
    )


register("karcher", _merge)
