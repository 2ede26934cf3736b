"""The tensor functions of the merge methods, registered under their specifications' names.

A method is a small pure function on tensors. What it accepts is declared without torch in
:mod:`mergemed.methods.specs`; its module registers the whole-tensor function and, for methods
that can run on slices of a tensor, a streaming kernel the engine uses to keep memory bounded
whatever the tensor size. The method modules are imported on the first :func:`get_method`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from mergemed.methods.specs import (
    INT8_MASK,
    MAX_MAGNITUDE,
    REQUIRED,
    MergeInputs,
    MethodSpec,
    Parameter,
    available_methods,
    get_spec,
    parameter_names,
    suggest,
)

__all__ = [
    "INT8_MASK",
    "MAX_MAGNITUDE",
    "REQUIRED",
    "MergeInputs",
    "MergeMethod",
    "Parameter",
    "StreamingKernel",
    "available_methods",
    "compute_dtype",
    "get_method",
    "model_values",
    "parameter_names",
    "register",
    "registered_methods",
    "split_base",
    "suggest",
]

METHOD_MODULES = (
    "arcee_fusion",
    "karcher",
    "linear",
    "model_stock",
    "multislerp",
    "nearswap",
    "nuslerp",
    "passthrough",
    "ram",
    "sce",
    "slerp",
    "task_arithmetic",
)
"""The modules under ``mergemed.methods`` that register tensor functions."""


@dataclass(frozen=True)
class StreamingKernel:
    """How a method runs on consecutive slices of a flattened tensor.

    ``accumulate`` (optional) folds statistics of each slice into a state; ``finalize`` turns the
    state into coefficients; ``combine`` merges one slice given those coefficients. Methods whose
    output element depends only on the same input elements have no ``accumulate`` step.
    """

    combine: Callable[[MergeInputs, Any], torch.Tensor]
    accumulate: Callable[[MergeInputs, Any], Any] | None = None
    finalize: Callable[[MergeInputs, Any], Any] | None = None
    applies: Callable[[MergeInputs], bool] = lambda inputs: True


@dataclass(frozen=True, kw_only=True)
class MergeMethod(MethodSpec):
    """A method's specification with the functions that carry it out.

    Attributes:
        merge: whole-tensor pure function ``MergeInputs -> Tensor``.
        streaming: optional kernel for slice-by-slice execution.
    """

    merge: Callable[[MergeInputs], torch.Tensor]
    streaming: StreamingKernel | None = field(default=None)


_REGISTRY: dict[str, MergeMethod] = {}


def register(
    name: str,
    merge: Callable[[MergeInputs], torch.Tensor],
    streaming: StreamingKernel | None = None,
) -> MergeMethod:
    """Attach the tensor functions of the method specified as ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"merge method {name!r} is registered twice")
    spec = get_spec(name)
    declared = {f.name: getattr(spec, f.name) for f in fields(MethodSpec) if f.init}
    method = MergeMethod(**declared, merge=merge, streaming=streaming)
    _REGISTRY[name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """The method ``name`` with its tensor functions; an unknown name raises a one-line error
    with suggestions."""
    get_spec(name)
    if name not in _REGISTRY:
        for module in METHOD_MODULES:
            importlib.import_module(f"mergemed.methods.{module}")
    return _REGISTRY[name]


def registered_methods() -> list[str]:
    """Names of the methods whose tensor functions are loaded, sorted."""
    return sorted(_REGISTRY)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Methods do their arithmetic in float32, or float64 when the inputs are float64."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def split_base(inputs: MergeInputs) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """The base tensor (None without a base) and the others in recipe order, all in the
    compute dtype of the first input."""
    dtype = compute_dtype(inputs.tensors[0])
    base = None if inputs.base_index is None else inputs.tensors[inputs.base_index].to(dtype)
    return base, [inputs.tensors[i].to(dtype) for i in inputs.others()]


def model_values(inputs: MergeInputs, name: str) -> list[Any]:
    """The per-model parameter ``name`` of the non-base inputs, in recipe order."""
    return [inputs.model_parameters[i][name] for i in inputs.others()]
