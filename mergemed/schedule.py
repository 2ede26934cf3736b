"""Schedules: which value each method parameter takes for each tensor.

A parameter's value is looked up, from highest to lowest precedence, in the source model's own
``parameters``, the slice's, then the recipe's global ``parameters``, then the method default.
Each setting is a scalar, a gradient (a list of anchors spread over the layers of a slice), or a
list of ``{filter, value}`` rules where the first rule whose filter is absent, ``*`` or a
substring of the tensor name wins. Global rules see the output tensor name, per-model rules the
input's. These are mergekit's semantics, so mergekit recipes give the same schedule.

Layer ``i`` of an output slice of ``n`` layers sits at position ``t = i / (n - 1)`` (``t = 1``
when ``n == 1``); a gradient of ``K`` anchors is interpolated linearly at ``s = t (K - 1)``.
Tensors outside the decoder layers (embeddings, final norm, lm_head) sit at ``t = 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergemed.errors import MergeError
from mergemed.io.architecture import layer_stacks
from mergemed.layout import ModelLayout, generic_layout, layout_from_checkpoint
from mergemed.methods.registry import MergeMethod
from mergemed.methods.specs import MergeInputs, Parameter
from mergemed.recipe import Parameters, Recipe, Rule, SliceSource

COMPONENTS = (
    ("embed_tokens", ("embed_tokens", "wte")),
    ("self_attn", ("self_attn", "attention", "attn")),
    ("mlp", ("mlp", "feed_forward")),
    ("input_layernorm", ("input_layernorm",)),
    ("post_attention_layernorm", ("post_attention_layernorm",)),
    ("norm", ("norm",)),
    ("lm_head", ("lm_head",)),
)
"""Display components, in order, with the name fragments that identify them."""


_MATCH_ORDER = sorted(
    COMPONENTS, key=lambda c: c[0] not in ("input_layernorm", "post_attention_layernorm")
)
"""Norm names contain "attention", so they are recognised before attention itself."""


def component_of(tensor_name: str) -> str:
    """The component a tensor belongs to (``self_attn``, ``mlp``, ``lm_head``...)."""
    for component, fragments in _MATCH_ORDER:
        if any(fragment in tensor_name for fragment in fragments):
            return component
    return "other"


# --------------------------------------------------------------------------------------------
# Resolving one setting


def evaluate_setting(setting: Any, tensor_name: str, position: float, parameter: Parameter) -> Any:
    """Resolve a setting for one tensor; None when no rule matches (or the list is empty)."""
    if isinstance(setting, Rule):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(r, Rule) for r in setting):
        for rule in setting:
            if rule.filter in (None, "*") or (tensor_name and rule.filter in tensor_name):
                return evaluate_setting(rule.value, tensor_name, position, parameter)
        return None
    if isinstance(setting, list):
        if not setting:
            return None
        return interpolate_gradient(setting, position, numeric=parameter.kind is not bool)
    return _cast(setting, parameter)


def interpolate_gradient(anchors: Sequence[Any], position: float, numeric: bool = True) -> Any:
    """The value of a gradient at ``position`` in [0, 1]; non-numeric anchors are stepped."""
    scaled = position * (len(anchors) - 1)
    lower = int(scaled)
    if not numeric:
        return anchors[lower]
    upper = min(len(anchors) - 1, lower + 1)
    fraction = scaled - lower
    return (1 - fraction) * anchors[lower] + fraction * anchors[upper]


def _cast(value: Any, parameter: Parameter) -> Any:
    if parameter.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def resolve_parameter(
    parameter: Parameter,
    settings: Iterable[Parameters | None],
    tensor_name: str,
    position: float,
) -> Any:
    """First non-None value of ``parameter`` among ``settings`` (highest precedence first),
    else its default. Raises KeyError when it is required and nothing gives it."""
    for scope in settings:
        if scope and parameter.name in scope:
            value = evaluate_setting(scope[parameter.name], tensor_name, position, parameter)
            if value is not None:
                return value
    if parameter.required:
        raise KeyError(parameter.name)
    return parameter.default


# --------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class SourceTensor:
    """One input of an output tensor: which model, which tensor."""

    model: str
    name: str


@dataclass(frozen=True)
class TensorTask:
    """Everything needed to produce one output tensor."""

    name: str
    shape: tuple[int, ...]
    layer: int | None
    position: float
    sources: tuple[SourceTensor, ...]
    base_index: int | None
    parameters: dict[str, Any]
    model_parameters: tuple[dict[str, Any], ...]
    base_model: str | None = None
    """The slice's base model, even for methods that ignore it (vocabulary alignment uses it)."""

    @property
    def component(self) -> str:
        return component_of(self.name)


@dataclass
class MergePlan:
    """The ordered tensor tasks of a merge and the output's layer count."""

    method: MergeMethod
    tasks: list[TensorTask] = field(default_factory=list)
    num_layers: int = 0
    layer_origins: list[int] = field(default_factory=list)
    """For each output layer, the layer of the slice's reference model it comes from."""
    models: list[str] = field(default_factory=list)
    tie_word_embeddings: bool | None = None


@dataclass
class _Slice:
    sources: list[SliceSource]
    base_model: str | None
    parameters: Parameters | None


def _normalise(recipe: Recipe, layouts: dict[str, ModelLayout]) -> list[_Slice]:
    method = recipe.method
    if recipe.slices:
        return [
            _Slice(s.sources, s.base_model or recipe.base_model, s.parameters)
            for s in recipe.slices
        ]
    sources = []
    for entry in recipe.models or []:
        sources.append(
            SliceSource(
                model=entry.model,
                layer_range=(0, layouts[entry.model].num_layers),
                parameters=entry.parameters,
            )
        )
    base = recipe.base_model
    if base and method.base_model != "ignored" and base not in [s.model for s in sources]:
        sources.append(SliceSource(model=base, layer_range=(0, layouts[base].num_layers)))
    counts = {s.model: s.layer_range[1] for s in sources}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{m}: {n}" for m, n in counts.items())
        raise MergeError(f"models have different numbers of layers ({listed}); use slices")
    return [_Slice(sources, base, None)]


def _is_pre_layer(name: str) -> bool:
    return "embed" in name or name.endswith(("wte.weight", "wpe.weight"))


def build_plan(recipe: Recipe, layouts: dict[str, ModelLayout]) -> MergePlan:
    """Plan every output tensor of a merge: its sources, position and resolved parameters.

    Raises:
        MergeError: layer counts, tensors or shapes disagree, or a required parameter is unset.
    """
    method = recipe.method
    slices = _normalise(recipe, layouts)
    plan = MergePlan(method=method, models=recipe.model_references())

    for reference in {s.model for output_slice in slices for s in output_slice.sources}:
        _check_placeable(reference, layouts[reference])
    for index, output_slice in enumerate(slices):
        for source in output_slice.sources:
            layout = layouts[source.model]
            available = layout.num_layers
            if source.layer_range[1] > available:
                others = [
                    f"{prefix} ({count} blocks)"
                    for prefix, count in layer_stacks(layout.shapes).items()
                    if prefix != layout.layer_prefix and count >= source.layer_range[1]
                ]
                hint = (
                    f"; layer ranges count the decoder's blocks ({layout.layer_prefix}), not "
                    f"those of {', '.join(others)}"
                    if others
                    else ""
                )
                raise MergeError(
                    f"slices[{index}]: layer_range {list(source.layer_range)} of "
                    f"{source.model!r} is past its {available} layers{hint}"
                )
        base = output_slice.base_model
        if method.base_model == "required" and base not in [s.model for s in output_slice.sources]:
            raise MergeError(
                f"slices[{index}]: {method.name} needs the base model {base!r} among its sources"
            )

    first, last = slices[0], slices[-1]
    pre, post = _non_layer_names(first, last, layouts)
    reference_layout = layouts[_reference_model(first)]
    for name in pre:
        position = reference_layout.stack_position(name)
        plan.tasks.append(_plan_tensor(recipe, method, first, name, None, position, None, layouts))

    output_layer = 0
    for output_slice in slices:
        length = output_slice.sources[0].layer_range[1] - output_slice.sources[0].layer_range[0]
        for offset in range(length):
            position = offset / (length - 1) if length > 1 else 1.0
            plan.tasks.extend(
                _plan_layer(recipe, method, output_slice, offset, output_layer, position, layouts)
            )
            reference = _reference_model(output_slice)
            origin = next(s for s in output_slice.sources if s.model == reference)
            plan.layer_origins.append(origin.layer_range[0] + offset)
            output_layer += 1
    plan.num_layers = output_layer

    reference_layout = layouts[_reference_model(last)]
    for name in post:
        position = reference_layout.stack_position(name)
        plan.tasks.append(_plan_tensor(recipe, method, last, name, None, position, None, layouts))
    plan.tie_word_embeddings = not any(t.name.endswith("lm_head.weight") for t in plan.tasks)
    return plan


def _check_placeable(reference: str, layout: ModelLayout) -> None:
    """Every decoder block a model stores must be one its config counts: a block past the
    count has no place in the output, and dropping it would be silent."""
    if layout.layer_prefix is None:
        return
    beyond = [
        name
        for name in layout.shapes
        if (match := layout.decoder_match(name)) and int(match["index"]) >= layout.num_layers
    ]
    if beyond:
        more = f" (and {len(beyond) - 1} more)" if len(beyond) > 1 else ""
        raise MergeError(
            f"{reference!r}: tensor {beyond[0]!r}{more} is past the "
            f"{layout.num_layers} layers its config states, so no layer of the output can hold "
            "it; fix the config's layer count or remove the extra blocks"
        )


def _reference_model(output_slice: _Slice) -> str:
    models = [s.model for s in output_slice.sources]
    return output_slice.base_model if output_slice.base_model in models else models[0]


def _non_layer_names(first: _Slice, last: _Slice, layouts: dict[str, ModelLayout]):
    def names(output_slice: _Slice) -> list[str]:
        found: list[str] = []
        for source in output_slice.sources:
            for name in layouts[source.model].shapes:
                if not layouts[source.model].decoder_match(name) and name not in found:
                    found.append(name)
        reference = list(layouts[_reference_model(output_slice)].shapes)
        return sorted(found, key=lambda n: reference.index(n) if n in reference else len(reference))

    pre = [n for n in names(first) if _is_pre_layer(n)]
    post = [n for n in names(last) if not _is_pre_layer(n)]
    return pre, post


def _input_name(layout: ModelLayout, name: str) -> str | None:
    """The tensor to read for ``name``; a tied lm_head is read from the embeddings."""
    if name in layout.shapes:
        return name
    if name.endswith("lm_head.weight"):
        for candidate in ("model.embed_tokens.weight", "transformer.wte.weight"):
            if candidate in layout.shapes:
                return candidate
    return None


def _plan_layer(recipe, method, output_slice, offset, output_layer, position, layouts):
    reference = _reference_model(output_slice)
    reference_source = next(s for s in output_slice.sources if s.model == reference)
    reference_layer = reference_source.layer_range[0] + offset
    suffixes = _layer_suffixes(layouts[reference], reference_layer)
    for source in output_slice.sources:
        source_layer = source.layer_range[0] + offset
        other = _layer_suffixes(layouts[source.model], source_layer)
        if other.keys() != suffixes.keys():
            missing = sorted(set(suffixes) ^ set(other))[0]
            holder, lacking = (
                (reference, source.model) if missing in suffixes else (source.model, reference)
            )
            raise MergeError(
                f"tensor layers.{source_layer}{missing} is in {holder!r} but not in {lacking!r}"
            )
    tasks = []
    for suffix, (prefix, _) in suffixes.items():
        output_name = f"{prefix}{output_layer}{suffix}"
        input_names = {}
        for source in output_slice.sources:
            source_prefix = _layer_suffixes(layouts[source.model], source.layer_range[0] + offset)
            input_names[source.model] = (
                f"{source_prefix[suffix][0]}{source.layer_range[0] + offset}{suffix}"
            )
        tasks.append(
            _plan_tensor(
                recipe,
                method,
                output_slice,
                output_name,
                output_layer,
                position,
                input_names,
                layouts,
            )
        )
    return tasks


def _layer_suffixes(layout: ModelLayout, layer: int) -> dict[str, tuple[str, str]]:
    cache = layout.__dict__.setdefault("_suffix_cache", {})
    if layer not in cache:
        found = {}
        for name in layout.shapes:
            match = layout.decoder_match(name)
            if match and int(match["index"]) == layer:
                found[match["suffix"]] = (match["prefix"], name)
        cache[layer] = found
    return cache[layer]


def _plan_tensor(
    recipe: Recipe,
    method: MergeMethod,
    output_slice: _Slice,
    output_name: str,
    layer: int | None,
    position: float,
    input_names: dict[str, str] | None,
    layouts: dict[str, ModelLayout],
) -> TensorTask:
    sources: list[SourceTensor] = []
    for source in output_slice.sources:
        layout = layouts[source.model]
        name = input_names[source.model] if input_names else _input_name(layout, output_name)
        if name is None:
            holder = next(
                s.model for s in output_slice.sources if output_name in layouts[s.model].shapes
            )
            raise MergeError(f"tensor {output_name!r} is in {holder!r} but not in {source.model!r}")
        sources.append(SourceTensor(source.model, name))

    shapes = [layouts[s.model].shapes[s.name] for s in sources]
    for source, shape in zip(sources[1:], shapes[1:], strict=True):
        if shape != shapes[0]:
            raise MergeError(_shape_message(output_name, sources[0], shapes[0], source, shape))

    base_index = None
    if method.base_model != "ignored" and output_slice.base_model:
        models = [s.model for s in sources]
        if output_slice.base_model in models:
            base_index = models.index(output_slice.base_model)

    global_settings = [output_slice.parameters, recipe.parameters]
    parameters = {}
    model_parameters: list[dict[str, Any]] = [{} for _ in sources]
    try:
        for parameter in method.parameters:
            if parameter.scope == "global":
                parameters[parameter.name] = resolve_parameter(
                    parameter, global_settings, output_name, position
                )
                continue
            for index, (source, tensor) in enumerate(
                zip(output_slice.sources, sources, strict=True)
            ):
                if index == base_index:
                    continue
                settings = [source.parameters, *global_settings]
                model_parameters[index][parameter.name] = resolve_parameter(
                    parameter, settings, tensor.name, position
                )
    except KeyError as missing:
        model = source.model if parameter.scope == "model" else None
        where = f" for model {model!r}" if model else ""
        raise MergeError(
            f"parameter {missing.args[0]!r} is required by {method.name}{where} "
            f"but no value applies to tensor {output_name!r}"
        ) from None
    others = len(sources) - (base_index is not None)
    if others < method.min_others or (method.max_others is not None and others > method.max_others):
        raise MergeError(
            f"tensor {output_name!r}: {method.name} merges {method.min_others}"
            f"{'' if method.max_others == method.min_others else '+'} models besides the base, "
            f"got {others} ({', '.join(s.model for s in sources)})"
        )
    if method.check is not None:
        problem = method.check(
            MergeInputs(
                tensors=[],
                base_index=base_index,
                parameters=parameters,
                model_parameters=model_parameters,
            )
        )
        if problem:
            raise MergeError(f"tensor {output_name!r}: {problem}")
    return TensorTask(
        name=output_name,
        shape=shapes[0],
        layer=layer,
        position=position,
        sources=tuple(sources),
        base_index=base_index,
        parameters=parameters,
        model_parameters=tuple(model_parameters),
        base_model=output_slice.base_model,
    )


def _shape_message(name, first: SourceTensor, first_shape, other: SourceTensor, other_shape) -> str:
    if (
        len(first_shape) == len(other_shape)
        and first_shape[1:] == other_shape[1:]
        and component_of(name) in ("embed_tokens", "lm_head")
    ):
        return (
            f"vocabulary sizes differ: {name!r} is {list(first_shape)} in {first.model!r} and "
            f"{list(other_shape)} in {other.model!r}; add `tokenizer: {{source: union}}` "
            "(or `{source: base}`) to the recipe to align the vocabularies"
        )
    return (
        f"shape mismatch for tensor {name!r}: {list(first_shape)} in {first.model!r}, "
        f"{list(other_shape)} in {other.model!r}"
    )


__all__ = [
    "MergePlan",
    "ModelLayout",
    "SourceTensor",
    "TensorTask",
    "build_plan",
    "component_of",
    "evaluate_setting",
    "generic_layout",
    "interpolate_gradient",
    "layout_from_checkpoint",
    "resolve_parameter",
]
