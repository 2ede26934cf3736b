"""What each merge method takes, declared without torch.

A :class:`MethodSpec` says which parameters a method accepts (global or per model), their
defaults and valid ranges, whether it needs a base model and how many models it merges. Recipes
are validated against these declarations alone, so ``mergemed validate`` and ``plan`` answer
without importing torch; the tensor functions that carry out each method register under the same
name in their own modules (:mod:`mergemed.methods.registry`).

One module, a little over 500 lines, on purpose: the declaration types and the table of all
20 methods' declarations are one idea, read together; most of the length is that table.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mergemed.errors import RecipeError

if TYPE_CHECKING:
    import torch

REQUIRED: Any = object()
"""Sentinel default of a parameter that has no default."""

MAX_MAGNITUDE = 1e6
"""Largest absolute value any numeric parameter may take. Weights and scales in real recipes
are a few units at most; beyond this a value is a typo, and near float32's range (3.4e38) it
turns a merge into Inf silently or mid-way, so it is refused before any model is opened."""

Sparsification = Literal["magnitude", "random", "outliers", "rank"] | None
"""How a task-vector method drops entries: TIES magnitude, DARE random, Breadcrumbs outliers,
DELLA magnitude rank; None keeps every entry."""


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
class MethodSpec:
    """What a merge method takes.

    Attributes:
        name: the ``merge_method`` key.
        parameters: accepted parameters.
        base_model: ``"required"``, ``"optional"`` or ``"ignored"``.
        min_models: fewest input models (the base included).
        max_models: most input models, or None.
        min_others: fewest models besides the base (when one is given).
        max_others: most models besides the base, or None.
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
    parameters: tuple[Parameter, ...]
    base_model: Literal["required", "optional", "ignored"] = "ignored"
    min_models: int = 1
    max_models: int | None = None
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


# --------------------------------------------------------------------------------------------
# The methods


@dataclass(frozen=True)
class TaskVectorVariant:
    """One method of the task-arithmetic family (:mod:`mergemed.methods.task_arithmetic`)."""

    name: str
    sparsification: Sparsification
    sign_consensus: bool
    default_normalize: bool
    default_rescale: bool
    description: str


TASK_VECTOR_VARIANTS = (
    TaskVectorVariant(
        "task_arithmetic", None, False, False, False, "base + lambda * sum of task vectors"
    ),
    TaskVectorVariant(
        "ties", "magnitude", True, True, False, "TIES: trim, elect sign, disjoint merge"
    ),
    TaskVectorVariant(
        "dare_ties", "random", True, False, True, "DARE random drop + TIES sign election"
    ),
    TaskVectorVariant(
        "dare_linear", "random", False, False, True, "DARE random drop + weighted sum"
    ),
    TaskVectorVariant(
        "breadcrumbs", "outliers", False, False, False, "Breadcrumbs: drop outliers and smallest"
    ),
    TaskVectorVariant(
        "breadcrumbs_ties", "outliers", True, False, False, "Breadcrumbs + TIES sign election"
    ),
    TaskVectorVariant(
        "della", "rank", True, True, True, "DELLA: magnitude-ranked drop + sign election"
    ),
    TaskVectorVariant("della_linear", "rank", False, False, True, "DELLA drop + weighted sum"),
)

INT8_MASK = Parameter(
    "int8_mask",
    "global",
    bool,
    False,
    description="accepted for mergekit compatibility; masks are boolean anyway",
)
"""mergekit's switch for int8 sign masks (a memory saving there); no effect here."""

_MODEL_WEIGHT = Parameter("weight", "model", float, description="weight of each model")

_SPARSIFICATION_PARAMETERS = {
    "outliers": Parameter(
        "gamma",
        "model",
        float,
        0.01,
        minimum=0.0,
        maximum=1.0,
        description="fraction of largest-magnitude entries dropped as outliers",
    ),
    "rank": Parameter(
        "epsilon",
        "model",
        float,
        0.15,
        minimum=0.0,
        maximum=1.0,
        description="keep probabilities span density - epsilon .. density + epsilon by rank",
    ),
}

_RAM_EPSILON = Parameter(
    "epsilon", "global", float, 1e-5, minimum=0.0, description="smallest change that counts"
)


def rank_problem(density: float, epsilon: float) -> str | None:
    """Why ``density`` and ``epsilon`` cannot drive DELLA's rank mask, or None."""
    if 0 < density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
        return (
            f"epsilon {epsilon:g} with density {density:g}: density - epsilon and "
            "density + epsilon must both lie strictly between 0 and 1"
        )
    return None


def _check_rank(inputs: MergeInputs) -> str | None:
    for index in inputs.others():
        values = inputs.model_parameters[index]
        problem = rank_problem(values["density"], values["epsilon"])
        if problem:
            return problem
    return None


def _task_vector_spec(variant: TaskVectorVariant) -> MethodSpec:
    extra = _SPARSIFICATION_PARAMETERS.get(variant.sparsification or "")
    return MethodSpec(
        name=variant.name,
        parameters=(
            Parameter("weight", "model", float, description="weight of each task vector"),
            Parameter(
                "density",
                "model",
                float,
                1.0,
                minimum=0.0,
                maximum=1.0,
                description="fraction of each task vector kept",
            ),
            Parameter(
                "normalize",
                "global",
                bool,
                variant.default_normalize,
                description="divide by the sum of the weights that contribute",
            ),
            Parameter(
                "rescale",
                "global",
                bool,
                variant.default_rescale,
                description="rescale sparsified task vectors to their original L1 norm",
            ),
            Parameter("lambda", "global", float, 1.0, description="scale of the sum"),
            INT8_MASK,
            *([extra] if extra is not None else []),
        ),
        base_model="required",
        min_models=2,
        stochastic=variant.sparsification in ("random", "rank"),
        check=_check_rank if variant.sparsification == "rank" else None,
        task_vectors=True,
        description=variant.description,
    )


_SPECS = (
    MethodSpec(
        name="linear",
        parameters=(
            _MODEL_WEIGHT,
            Parameter("normalize", "global", bool, True, description="divide by the sum"),
        ),
        base_model="ignored",
        min_models=1,
        description="weighted average of the models",
    ),
    MethodSpec(
        name="slerp",
        parameters=(
            Parameter(
                "t",
                "global",
                float,
                minimum=0.0,
                maximum=1.0,
                description="interpolation weight: 0 gives the base model, 1 the other",
            ),
        ),
        base_model="required",
        min_models=2,
        max_models=2,
        description="spherical interpolation between the base model and one other model",
    ),
    MethodSpec(
        name="nuslerp",
        parameters=(
            Parameter("weight", "model", float, description="relative weight of each model"),
            Parameter(
                "nuslerp_flatten",
                "global",
                bool,
                True,
                description="interpolate whole tensors (false: row or column vectors)",
            ),
            Parameter(
                "nuslerp_row_wise",
                "global",
                bool,
                False,
                description="without flattening, take vectors along the first axis, not the last",
            ),
        ),
        base_model="optional",
        min_models=2,
        max_models=3,
        min_others=2,
        max_others=2,
        description="spherical interpolation of two models (or their task vectors) by weight",
    ),
    MethodSpec(
        name="multislerp",
        parameters=(
            _MODEL_WEIGHT,
            Parameter(
                "normalize_weights",
                "global",
                bool,
                True,
                description="divide the weights by their sum",
            ),
            Parameter("eps", "global", float, 1e-8, minimum=0.0, description="numerical floor"),
        ),
        base_model="optional",
        min_models=1,
        min_others=1,
        description="spherical barycentre of any number of models (or their task vectors)",
    ),
    MethodSpec(
        name="karcher",
        parameters=(
            Parameter("max_iter", "global", int, 10, minimum=0, description="most iteration steps"),
            Parameter("tol", "global", float, 1e-5, minimum=0.0, description="step to stop at"),
        ),
        base_model="optional",
        min_models=1,
        description="Riemannian (Karcher) mean of the models on the sphere, equal weights",
    ),
    MethodSpec(
        name="model_stock",
        parameters=(
            Parameter(
                "filter_wise",
                "global",
                bool,
                False,
                description="one angle per row (filter) instead of one per tensor",
            ),
        ),
        base_model="required",
        min_models=3,
        min_others=2,
        description="interpolate towards the models' mean by their task vectors' angle",
    ),
    MethodSpec(
        name="nearswap",
        parameters=(
            Parameter(
                "t",
                "global",
                float,
                minimum=0.0,
                description="distance under which the other model's value is taken",
            ),
        ),
        base_model="required",
        min_models=2,
        max_models=2,
        description="swap in the other model's entries that are near the base's",
    ),
    MethodSpec(
        name="arcee_fusion",
        parameters=(),
        base_model="required",
        min_models=2,
        max_models=2,
        stochastic=True,
        description="apply the other model's most important changes to the base",
    ),
    MethodSpec(
        name="sce",
        parameters=(
            Parameter(
                "select_topk",
                "global",
                float,
                1.0,
                minimum=0.0,
                maximum=1.0,
                description="fraction of entries kept, those varying most across models",
            ),
            INT8_MASK,
        ),
        base_model="required",
        min_models=1,
        description="SCE: variance selection, mean-square weights, sign erasure",
    ),
    MethodSpec(
        name="ram",
        parameters=(_RAM_EPSILON,),
        base_model="required",
        min_models=1,
        description="RAM: unique changes kept, shared changes averaged",
    ),
    MethodSpec(
        name="ramplus_tl",
        parameters=(
            Parameter("r", "global", float, 0.1, description="strength of the unique-entry boost"),
            Parameter("alpha", "global", float, 0.2, description="cap of the overlap ratio"),
            _RAM_EPSILON,
        ),
        base_model="required",
        min_models=1,
        description="RAM+ (tensor-local): RAM with overlap-scaled unique changes",
    ),
    MethodSpec(
        name="passthrough",
        parameters=(Parameter("scale", "model", float, 1.0, description="multiply by"),),
        base_model="ignored",
        min_models=1,
        max_models=1,
        description="copy the single input model's tensors (stack layers with slices)",
    ),
    *(_task_vector_spec(variant) for variant in TASK_VECTOR_VARIANTS),
)

SPECS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}
"""Every merge method by name."""


def available_methods() -> list[str]:
    """Names of all merge methods, sorted."""
    return sorted(SPECS)


def parameter_names() -> frozenset[str]:
    """Every parameter name some method takes."""
    return frozenset(p.name for spec in SPECS.values() for p in spec.parameters)


def get_spec(name: str) -> MethodSpec:
    """Look a method up by name; an unknown name raises a one-line error with suggestions."""
    try:
        return SPECS[name]
    except KeyError:
        known = ", ".join(available_methods())
        message = (
            f"unknown merge_method {name!r}{suggest(name, list(SPECS))}; expected one of: {known}"
        )
        raise RecipeError(message) from None


def suggest(name: str, candidates: Sequence[str]) -> str:
    """A ``(did you mean 'x'?)`` hint, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
