"""Merge methods: small pure functions on tensors, registered by name."""

from mergemed.methods import (  # noqa: F401 (register)
    arcee_fusion,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    ram,
    sce,
    slerp,
    task_arithmetic,
)
from mergemed.methods.registry import (
    MergeInputs,
    MergeMethod,
    Parameter,
    StreamingKernel,
    available_methods,
    get_method,
)

__all__ = [
    "MergeInputs",
    "MergeMethod",
    "Parameter",
    "StreamingKernel",
    "available_methods",
    "get_method",
]
