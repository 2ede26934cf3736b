"""Linear merge: a weighted average of the input tensors (model soups)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergemed.methods.registry import (
    MergeInputs,
    StreamingKernel,
    compute_dtype,
    register,
)


def linear(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True
) -> torch.Tensor:
    """Return ``sum(w_i * x_i)``, divided by ``sum(w_i)`` when ``normalize`` is true.

    Arithmetic is done in float32 (float64 for float64 inputs); the result has that dtype.
    """
    dtype = compute_dtype(tensors[0])
    result = torch.zeros(tensors[0].shape, dtype=dtype, device=tensors[0].device)
    for tensor, weight in zip(tensors, weights, strict=True):
        result.add_(tensor.to(dtype), alpha=float(weight))
    if normalize:
        result.div_(float(sum(weights)))
    return result


def _merge(inputs: MergeInputs) -> torch.Tensor:
    weights = [p["weight"] for p in inputs.model_parameters]
    return linear(inputs.tensors, weights, inputs.parameters["normalize"])


register("linear", _merge, streaming=StreamingKernel(combine=lambda inputs, _: _merge(inputs)))
