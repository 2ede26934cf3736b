"""Passthrough: copy one model's tensor unchanged (used by slice-stacking recipes)."""

from __future__ import annotations

from mergemed.methods.registry import (
    MergeInputs,
    MergeMethod,
    Parameter,
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


register(
    MergeMethod(
        name="passthrough",
        merge=_merge,
        parameters=(Parameter("scale", "model", float, 1.0, description="multiply by"),),
        base_model="ignored",
        min_models=1,
        max_models=1,
        streaming=StreamingKernel(combine=lambda inputs, _: _merge(inputs)),
        description="copy the single input model's tensors (stack layers with slices)",
    )
)
