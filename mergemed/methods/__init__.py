"""Merge methods: small pure functions on tensors, registered by name.

Importing this package loads no torch: what each method accepts is declared in
:mod:`~mergemed.methods.specs`; :func:`get_method` loads the tensor functions on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mergemed.methods.specs import (
    MergeInputs,
    MethodSpec,
    Parameter,
    available_methods,
    get_spec,
)

if TYPE_CHECKING:
    from mergemed.methods.registry import MergeMethod, StreamingKernel

__all__ = [
    "MergeInputs",
    "MergeMethod",
    "MethodSpec",
    "Parameter",
    "StreamingKernel",
    "available_methods",
    "get_method",
    "get_spec",
]


def get_method(name: str) -> MergeMethod:
    """The method ``name`` with its tensor functions (loads torch and the method modules)."""
    from mergemed.methods.registry import get_method as registered

    return registered(name)


def __getattr__(name: str) -> Any:
    if name in ("MergeMethod", "StreamingKernel"):
        from mergemed.methods import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'mergemed.methods' has no attribute {name!r}")
