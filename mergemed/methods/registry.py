"""Merge methods registered by name, with typed parameter specifications.

A method is a small pure function on tensors. Its :class:`MergeMethod` entry says which
parameters it takes (global or per model), their defaults and valid ranges, whether it needs a
base model, and, for methods that can run on slices of a tensor, a streaming kernel the engine
uses to keep memory bounded whatever the tensor size.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mergemed.errors import RecipeError

REQUIRED: Any = object()
"""Sentinel default of a parameter that has no default."""

MAX_MAGNITUDE = 1e6
"""Largest absolute value any numeric parameter may take. Weights and scales in real recipes
are a few units at most; beyond this a value is a typo, and near float32's range (3.4e38) it
turns a merge into Inf silently or mid-way, so it is refused before any model is opened."""


def _shown(value: int | float) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


@dataclass(frozen=True)
class Parameter:
    """One parameter of a merge method.

    Attributes:
        name: the key used in recipes (``t``, ``weight``, ``density``...).
        scope: ``"global"`` for one value per tensor, ``"model"`` for one value per input model.
        kind: ``float``, ``int`` (a whole number) or ``bool``.
        default: the value used when a recipe gives none; ``REQUIRED`` if it must be given.
        minimum: smallest valid value (inclusive), or None.
        maximum: largest valid value (inclusive), or None.
        description: one line for ``--help``-style listings and error messages.
    """

    name: str
    scope: Literal["global", "model"]
    kind: type
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def expectation(self) -> str:
        """Say in words what a valid value is, for error messages."""
        if self.kind is bool:
            return "true or false"
        if self.kind is int and self.minimum is not None:
            return f"a whole number >= {self.minimum:g}"
        if self.minimum is not None and self.maximum is not None:
            return f"a number in [{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"a number >= {self.minimum:g}"
        return "a number"

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is invalid, or None when it is valid."""
        if self.kind is bool:
            return None if isinstance(value, bool) else f"expected {self.expectation()}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected {self.expectation()}, got {value!r}"
        if value != value:  # NaN
            return f"expected {self.expectation()}, got NaN"
        if abs(value) > MAX_MAGNITUDE:  # also Inf, and integers too large for a float
            return (
                f"expected {self.expectation()} no larger than {MAX_MAGNITUDE:g} in magnitude, "
                f"got {_shown(value)}"
            )
        if self.kind is int and value != int(value):
            return f"expected a whole number, got {value:g}"
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            return f"expected {self.expectation()}, got {value:g}"
        return None


@dataclass(frozen=True)
class MergeInputs:
    """The tensors of one output tensor and the parameters resolved for it.

    Attributes:
        tensors: one tensor per input model, all the same shape, in float32 (or float64).
        base_index: position of the base model's tensor in ``tensors``, or None.
        parameters: global parameters by name.
        model_parameters: one dict of per-model parameters for each tensor (empty for the base).
        generator: a seeded random generator for stochastic methods (DARE), or None.
        output_dtype: the dtype the result will be stored in; a method may return it directly
            (saving a full-size float32 copy) or return its compute dtype.
    """

    tensors: Sequence[torch.Tensor]
    base_index: int | None
    parameters: dict[str, Any]
    model_parameters: Sequence[dict[str, Any]]
    generator: torch.Generator | None = None
    output_dtype: torch.dtype | None = None

    def others(self) -> list[int]:
        """Indices of the non-base inputs, in recipe order (known before any tensor is read:
        the engine asks streaming kernels whether they apply with no tensors yet)."""
        count = max(len(self.tensors), len(self.model_parameters))
        return [i for i in range(count) if i != self.base_index]


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


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: the ``merge_method`` key.
        merge: whole-tensor pure function ``MergeInputs -> Tensor``.
        parameters: accepted parameters.
        base_model: ``"required"``, ``"optional"`` or ``"ignored"``.
        min_models: fewest input models (the base included).
        max_models: most input models, or None.
        min_others: fewest models besides the base (when one is given).
        max_others: most models besides the base, or None.
        streaming: optional kernel for slice-by-slice execution.
        stochastic: whether the method draws random numbers (needs a seed).
        task_vectors: the base is the origin of task vectors (not one of the merged ends), so a
            recipe may leave it out for models ``mergemed train`` made: their base is read
            from their ``training.json``.
        check: optional ``MergeInputs -> str | None`` run on every planned tensor's resolved
            parameters (no tensors yet): the reason they cannot be merged, or None. A bad
            value is reported before any weight is read.
        description: one line.
    """

    name: str
    merge: Callable[[MergeInputs], torch.Tensor]
    parameters: tuple[Parameter, ...]
    base_model: Literal["required", "optional", "ignored"] = "ignored"
    min_models: int = 1
    max_models: int | None = None
    streaming: StreamingKernel | None = None
    stochastic: bool = False
    task_vectors: bool = False
    description: str = ""
    min_others: int = 0
    max_others: int | None = None
    check: Callable[[MergeInputs], str | None] | None = None
    parameter_index: dict[str, Parameter] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameter_index", {p.name: p for p in self.parameters})

    def parameter(self, name: str) -> Parameter | None:
        return self.parameter_index.get(name)


INT8_MASK = Parameter(
    "int8_mask",
    "global",
    bool,
    False,
    description="accepted for mergekit compatibility; masks are boolean anyway",
)
"""mergekit's switch for int8 sign masks (a memory saving there); no effect here."""

_REGISTRY: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add ``method`` to the registry under its name."""
    if method.name in _REGISTRY:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def available_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def parameter_names() -> frozenset[str]:
    """Every parameter name some registered method takes."""
    return frozenset(p.name for method in _REGISTRY.values() for p in method.parameters)


def get_method(name: str) -> MergeMethod:
    """Look a method up by name; an unknown name raises a one-line error with suggestions."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(available_methods())
        message = f"unknown merge_method {name!r}{hint}; expected one of: {known}"
        raise RecipeError(message) from None


def suggest(name: str, candidates: Sequence[str]) -> str:
    """A ``(did you mean 'x'?)`` hint, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
