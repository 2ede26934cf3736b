"""Recipes: the YAML file that says what to merge, validated by pydantic.

A recipe is a superset of mergekit's merge configuration: any mergekit YAML using
``merge_method``, ``models`` or ``slices``, ``base_model``, ``parameters``, ``dtype``,
``out_dtype``, ``tokenizer_source`` or a ``tokenizer:`` section, and ``chat_template`` loads
unchanged. mergemed adds ``name``, ``description`` and ``random_seed``.

Every field below is named exactly as its YAML key. Errors name the file, the line and the key
path (``recipe.yaml:7: parameters.t[2]: expected a number in [0, 1], got 1.5``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from mergemed.errors import RecipeError
from mergemed.methods.specs import MethodSpec, get_spec, parameter_names, suggest
from mergemed.validated_yaml import Problems, format_path, load_validated

if TYPE_CHECKING:
    from mergemed.methods.registry import MergeMethod

Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
"""A single parameter value."""

ScalarOrGradient = Union[Scalar, list[Scalar]]
"""A value, or a list of anchors spread over the layers of a slice (a gradient)."""

DType = Literal["float32", "float16", "bfloat16", "float64"]

MAX_LAYER_INDEX = 100_000
"""No model has this many layers: a larger index in a ``layer_range`` is a typo."""


class Rule(BaseModel):
    """A conditional value: applies to tensors whose name contains ``filter``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    filter: str | None = None
    """Substring of the tensor name (``self_attn``, ``mlp``, ``q_proj``...); absent or ``*``
    matches every tensor. Rules are tried in order and the first match wins."""
    value: ScalarOrGradient
    """The value (or gradient) for matching tensors."""


ParameterSetting = Union[Rule, list[Rule], ScalarOrGradient]
"""What a parameter may be set to: a scalar, a gradient list, or a list of ``{filter, value}``."""

Parameters = dict[str, ParameterSetting]


class ModelEntry(BaseModel):
    """One input model of a ``models:`` recipe."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str
    """Local folder or Hugging Face Hub id, optionally ``@revision`` (branch, tag or commit)."""
    parameters: Parameters | None = None
    """Per-model parameters (``weight``, ``density``...); they override global ones."""


class SliceSource(BaseModel):
    """A run of consecutive layers taken from one model."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str
    """Local folder or Hub id (``@revision`` allowed)."""
    layer_range: tuple[int, int]
    """``[start, end)`` layer indices in the source model."""
    parameters: Parameters | None = None
    """Per-model parameters for this source."""


class OutputSlice(BaseModel):
    """A run of output layers merged from several sources with the same number of layers."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    sources: list[SliceSource] = Field(min_length=1)
    """The models (and their layer ranges) merged into these output layers."""
    base_model: str | None = None
    """Overrides the recipe's ``base_model`` for this slice."""
    parameters: Parameters | None = None
    """Slice-level parameters; override global ones."""


class ZeroEmbedding(BaseModel):
    """``{kind: zero}``: the token's embedding and lm_head rows are zero."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: Literal["zero"]
    """Always ``zero``."""


class ModelTokenEmbedding(BaseModel):
    """``{kind: model_token, model, token | token_id}``: copy another token's rows of a model."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: Literal["model_token"]
    """Always ``model_token``."""
    model: str
    """The model whose rows are copied (a model of the recipe)."""
    token: str | None = None
    """The token of that model's vocabulary whose rows are copied."""
    token_id: StrictInt | None = None
    """Or its row index in that model's embedding."""


class TokenSettings(BaseModel):
    """Where one output token's embedding and lm_head rows come from."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    source: ZeroEmbedding | ModelTokenEmbedding | str | None = None
    """A model of the recipe (its row for this token), ``{kind: zero}``, or
    ``{kind: model_token, ...}``. Unset: mergekit's rules for tokens some parents lack."""
    force: StrictBool = False
    """Use ``source`` for every parent, even those that have the token."""


class TokenizerSettings(BaseModel):
    """The ``tokenizer:`` section: the output vocabulary and how parents' rows are aligned."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    source: str = "union"
    """``union`` (every parent's tokens), ``base`` (the base model's), or a model of the
    recipe (its tokenizer)."""
    tokens: dict[str, TokenSettings] | None = None
    """Per-token settings; tokens not in the output vocabulary are added to it."""
    pad_to_multiple_of: StrictInt | None = None
    """Pad the embedding rows to a multiple of this (padding rows get the mean embedding)."""


class Recipe(BaseModel):
    """A merge recipe. Exactly one of ``models`` and ``slices`` is given."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    _ignored: list[str] = PrivateAttr(default_factory=list)

    merge_method: str
    """``linear``, ``slerp``, ``task_arithmetic``, ``ties``, ``dare_ties``, ``dare_linear`` or
    ``passthrough``."""
    models: list[ModelEntry] | None = None
    """Models merged over all their layers."""
    slices: list[OutputSlice] | None = None
    """Output layers built slice by slice (mergekit's ``slices:``)."""
    base_model: str | None = None
    """The base: the t = 0 end of SLERP, the origin of task vectors; its config is copied."""
    parameters: Parameters | None = None
    """Global parameters of the method."""
    dtype: DType | None = None
    """Inputs are converted to this dtype before merging (default: as stored)."""
    out_dtype: DType | None = None
    """dtype of the written weights (default: ``dtype``, else the inputs')."""
    tokenizer_source: str | None = None
    """mergekit's legacy form of ``tokenizer: {source: ...}``: ``base``, ``union`` or a model
    of the recipe. Unset (and no ``tokenizer:``): the base's tokenizer, and the parents'
    vocabularies must be identical."""
    tokenizer: TokenizerSettings | None = None
    """The output vocabulary: source, per-token overrides, padding (mergekit's section)."""
    chat_template: str | None = None
    """``auto`` (most common among the inputs), a model of the recipe, ``chatml``, or a Jinja
    template string. Default: the tokenizer source's template."""
    name: str | None = None
    """Name of the merged model (mergemed; used in reports and cards)."""
    description: str | None = None
    """Free text (mergemed)."""
    random_seed: StrictInt = 0
    """Seed of stochastic methods (DARE); each tensor draws from a generator seeded by
    this seed and the tensor's name, so results do not depend on order (mergemed)."""

    @property
    def spec(self) -> MethodSpec:
        """What the merge method accepts (no torch needed)."""
        return get_spec(self.merge_method)

    @property
    def method(self) -> MergeMethod:
        """The merge method with its tensor functions (loads torch)."""
        from mergemed.methods import get_method

        return get_method(self.merge_method)

    @property
    def ignored_parameters(self) -> list[str]:
        """Key paths of parameters this method does not use but another method does (a slerp
        model's ``weight``): accepted and ignored, as mergekit ignores them."""
        return list(self._ignored)

    def model_references(self) -> list[str]:
        """Every model the recipe names, base first when given, without duplicates."""
        seen: list[str] = []
        candidates: list[str] = [self.base_model] if self.base_model else []
        for entry in self.models or []:
            candidates.append(entry.model)
        for output_slice in self.slices or []:
            if output_slice.base_model:
                candidates.append(output_slice.base_model)
            candidates.extend(source.model for source in output_slice.sources)
        for reference in candidates:
            if reference not in seen:
                seen.append(reference)
        return seen

    def to_yaml(self) -> str:
        """The recipe as YAML (defaults omitted unless they were set)."""
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, width=100)


class _RecipeDumper(yaml.SafeDumper):
    def represent_list(self, data):
        flow = all(isinstance(item, int | float) and not isinstance(item, bool) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_RecipeDumper.add_representer(list, _RecipeDumper.represent_list)


# --------------------------------------------------------------------------------------------
# Loading with line numbers


def load_recipe(source: str | Path | dict[str, Any]) -> Recipe:
    """Load and validate a recipe from a YAML file, a YAML string or a dict.

    Raises:
        RecipeError: naming the file, line and key path of the first problem (``.problems``
            holds them all).
    """
    return load_validated(
        source,
        Recipe,
        what="recipe",
        error=RecipeError,
        before=_check_unsupported_mergekit_keys,
        after=_check_semantics,
    )


_YAML11_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
"""``1e-4``: a float in YAML 1.2, a string to PyYAML (YAML 1.1 wants ``1.0e-4``)."""


def _as_mergekit_reads(value: Any, kind: type | None) -> Any:
    """A parameter value as mergekit 0.1.5 validates it: scientific notation without a dot is a
    number, and 0/1 for a boolean parameter are False/True (also as gradient anchors)."""
    if isinstance(value, list):
        return [_as_mergekit_reads(v, kind) for v in value]
    if isinstance(value, dict) and "value" in value:
        return {**value, "value": _as_mergekit_reads(value["value"], kind)}
    if isinstance(value, str) and _YAML11_NUMBER.fullmatch(value.strip()):
        value = float(value)
    if kind is bool and type(value) in (int, float) and value in (0, 1):
        return bool(value)
    return value


def _normalise_parameters(data: dict[str, Any]) -> None:
    try:
        method = get_spec(str(data.get("merge_method")))
    except RecipeError:
        method = None

    def mappings(value: Any) -> list[dict]:
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

    holders = [data, *mappings(data.get("models"))]
    for output_slice in mappings(data.get("slices")):
        holders += [output_slice, *mappings(output_slice.get("sources"))]
    for holder in holders:
        parameters = holder.get("parameters")
        if isinstance(parameters, dict):
            for name, value in parameters.items():
                parameter = method.parameter(name) if method is not None else None
                kind = parameter.kind if parameter is not None else None
                parameters[name] = _as_mergekit_reads(value, kind)


def _check_unsupported_mergekit_keys(data: dict[str, Any], problems: Problems) -> None:
    _normalise_parameters(data)
    if "modules" in data:
        problems.add(("modules",), "multi-module recipes are not supported; use models or slices")
    if data.get("tokenizer") is not None and data.get("tokenizer_source") is not None:
        problems.add(("tokenizer_source",), "give either tokenizer_source or tokenizer, not both")


def _settings(recipe: Recipe) -> Iterator[tuple[tuple[Any, ...], Parameters, str]]:
    """Yield every parameters mapping with its key path and scope (global or model)."""
    if recipe.parameters:
        yield ("parameters",), recipe.parameters, "global"
    for index, entry in enumerate(recipe.models or []):
        if entry.parameters:
            yield ("models", index, "parameters"), entry.parameters, "model"
    for slice_index, output_slice in enumerate(recipe.slices or []):
        if output_slice.parameters:
            yield ("slices", slice_index, "parameters"), output_slice.parameters, "global"
        for source_index, source in enumerate(output_slice.sources):
            if source.parameters:
                path = ("slices", slice_index, "sources", source_index, "parameters")
                yield path, source.parameters, "model"


def _check_value(method: MethodSpec, name: str, setting: Any, path, problems) -> None:
    parameter = method.parameter(name)
    if isinstance(setting, Rule):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(r, Rule) for r in setting):
        for index, rule in enumerate(setting):
            _check_value(method, name, rule.value, (*path, index, "value"), problems)
        return
    if isinstance(setting, list):
        if not setting:
            problems.add(path, "empty gradient list; expected at least one value")
            return
        for index, anchor in enumerate(setting):
            why = parameter.check(anchor)
            if why:
                problems.add((*path, index), why)
        return
    why = parameter.check(setting)
    if why:
        problems.add(path, why)


def _check_semantics(recipe: Recipe, problems: Problems) -> None:
    try:
        method = recipe.spec
    except RecipeError as error:
        problems.add(("merge_method",), str(error).removeprefix("unknown merge_method ").strip())
        return
    if bool(recipe.models) == bool(recipe.slices):
        problems.add((), "expected exactly one of 'models' or 'slices'")
        return

    for path, parameters, scope in _settings(recipe):
        for name, setting in parameters.items():
            parameter = method.parameter(name)
            if parameter is None and name in parameter_names():
                # Another method's parameter: mergekit ignores it, and so does mergemed, aloud.
                recipe._ignored.append(f"{format_path((*path, name))}")
                continue
            if parameter is None:
                accepted = ", ".join(p.name for p in method.parameters) or "none"
                hint = suggest(name, list(method.parameter_index))
                problems.add(
                    (*path, name),
                    f"unknown parameter for {method.name}{hint}; accepted: {accepted}",
                )
                continue
            if scope == "model" and parameter.scope == "global":
                problems.add(
                    (*path, name),
                    f"{name} applies to the whole merge in {method.name}; set it under the "
                    "top-level (or slice) parameters, not a model's",
                )
                continue
            _check_value(method, name, setting, (*path, name), problems)

    if method.base_model == "required" and not recipe.base_model and not method.task_vectors:
        if not all(s.base_model for s in recipe.slices or []) or recipe.models:
            problems.add(("base_model",), f"{method.name} needs a base_model")

    for index, output_slice in enumerate(recipe.slices or []):
        lengths = {s.layer_range[1] - s.layer_range[0] for s in output_slice.sources}
        for source_index, source in enumerate(output_slice.sources):
            start, end = source.layer_range
            if end > MAX_LAYER_INDEX:
                problems.add(
                    ("slices", index, "sources", source_index, "layer_range"),
                    f"expected layer indices below {MAX_LAYER_INDEX:,}, got [{start}, {end}]"
                    if len(str(end)) < 20
                    else f"expected layer indices below {MAX_LAYER_INDEX:,}, got a "
                    f"{len(str(end))}-digit number",
                )
            elif start < 0 or end <= start:
                problems.add(
                    ("slices", index, "sources", source_index, "layer_range"),
                    f"expected [start, end) with 0 <= start < end, got [{start}, {end}]",
                )
        if len(lengths) > 1:
            problems.add(
                ("slices", index, "sources"),
                "all sources of a slice must have the same number of layers, "
                f"got {sorted(lengths)}",
            )

    first_listed: dict[str, int] = {}
    for index, entry in enumerate(recipe.models or []):
        if entry.model in first_listed:
            problems.add(
                ("models", index, "model"),
                f"{entry.model!r} is listed twice (also models[{first_listed[entry.model]}]); "
                "give each model once, with its weight",
            )
        first_listed.setdefault(entry.model, index)
    for index, output_slice in enumerate(recipe.slices or []):
        sources: dict[tuple[str, tuple[int, int]], int] = {}
        for source_index, source in enumerate(output_slice.sources):
            key = (source.model, tuple(source.layer_range))
            if key in sources:
                problems.add(
                    ("slices", index, "sources", source_index),
                    f"{source.model!r} layers {list(source.layer_range)} are listed twice in "
                    f"this slice (also sources[{sources[key]}])",
                )
            sources.setdefault(key, source_index)

    count = len(recipe.models) if recipe.models else None
    if count is not None:
        if recipe.base_model and recipe.base_model not in [m.model for m in recipe.models or []]:
            if method.base_model != "ignored":
                count += 1
        if count < method.min_models:
            problems.add(("models",), f"{method.name} needs at least {method.min_models} models")
        if method.max_models is not None and count > method.max_models:
            problems.add(
                ("models",), f"{method.name} takes at most {method.max_models} models, got {count}"
            )
        others = count - (1 if recipe.base_model and method.base_model != "ignored" else 0)
        if others < method.min_others or (
            method.max_others is not None and others > method.max_others
        ):
            wanted = (
                f"exactly {method.min_others}"
                if method.max_others == method.min_others
                else f"at least {method.min_others}"
                if method.max_others is None
                else f"{method.min_others} to {method.max_others}"
            )
            problems.add(
                ("models",),
                f"{method.name} merges {wanted} models besides the base_model, got {others}",
            )

    names = recipe.model_references()
    listed = ", ".join(names)
    if recipe.tokenizer_source not in (None, "base", "union", *names):
        problems.add(
            ("tokenizer_source",),
            f"expected 'base', 'union' or one of the recipe's models ({listed}), "
            f"got {recipe.tokenizer_source!r}",
        )
    if recipe.tokenizer is not None:
        _check_tokenizer(recipe.tokenizer, names, problems)


def _check_tokenizer(settings: TokenizerSettings, names: list[str], problems: Problems) -> None:
    listed = ", ".join(names)
    if settings.source not in ("base", "union", *names):
        problems.add(
            ("tokenizer", "source"),
            f"expected 'union', 'base' or one of the recipe's models ({listed}), "
            f"got {settings.source!r}",
        )
    if settings.pad_to_multiple_of is not None and settings.pad_to_multiple_of <= 0:
        problems.add(
            ("tokenizer", "pad_to_multiple_of"),
            f"expected a positive integer, got {settings.pad_to_multiple_of}",
        )
    for token, token_settings in (settings.tokens or {}).items():
        path = ("tokenizer", "tokens", token, "source")
        source = token_settings.source
        if token_settings.force and source is None:
            problems.add(path, "force needs a source to force")
        if isinstance(source, str) and source not in names:
            problems.add(path, f"expected one of the recipe's models ({listed}), got {source!r}")
        if isinstance(source, ModelTokenEmbedding):
            if source.model not in names:
                problems.add(
                    (*path, "model"),
                    f"expected one of the recipe's models ({listed}), got {source.model!r}",
                )
            if (source.token is None) == (source.token_id is None):
                problems.add(path, "model_token needs exactly one of token and token_id")
            if source.token_id is not None and source.token_id < 0:
                problems.add((*path, "token_id"), f"expected >= 0, got {source.token_id}")
