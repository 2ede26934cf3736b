"""Merge methods: small pure functions on tensors, registered by name."""

from mergemed.methods import linear, passthrough, slerp, task_arithmetic  # noqa: F401 (register)
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
