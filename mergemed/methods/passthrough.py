"""Passthrough: copy one model's tensor unchanged (used by slice-stacking recipes)."""

from __future__ import annotations

from mergemed.methods.registry import (
    MergeInputs,
    StreamingKernel,
    compute_dtype,
    register,
)


def _merge(inputs: MergeInputs):
    tensor = inputs.tensors[0]
    # Per model, as in mergekit (one model per slice); a global or slice value applies too.
    scale = inputs.model_parameters[0]["scale"]
    result = tensor.to(compute_dtype(tensor))
    return result * scale if scale != 1 else result


register("passthrough", _merge, streaming=StreamingKernel(combine=lambda inputs, _: _merge(inputs)))
