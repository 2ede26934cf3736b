"""``mergemed inspect``: how far apart two checkpoints are, layer by layer, before merging them.

Both models (and an optional common base) are streamed once, tensor slice by tensor slice, the
way the merge engine reads them: a reader thread fetches the next slices with ``preadv`` while
the calling thread folds the current ones into float64 sums, a cache-sized block at a time.
Per tensor it keeps

* ``<A, B>``, ``|A|^2``, ``|B|^2`` and ``|A - B|^2``: cosine similarity and relative change
  ``|A - B| / |B|``;
* with a base C, ``<A - C, B - C>``, ``|A - C|^2``, ``|B - C|^2`` and ``|C|^2``: the angle
  between the two task vectors and each one's size relative to the base.

Memory stays at a few slices whatever the model size. Sums add up over the tensors of a
component (``q_proj`` weight and bias, say), of a layer and of the whole model, so every
aggregate is exact, not an average of ratios. A model against itself gives cosine 1 and
relative change 0 exactly.
"""

from __future__ import annotations

import functools
import json
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergemed.engine import compute_threads
from mergemed.errors import CheckpointError, InspectError, OutputError
from mergemed.io.architecture import CONFIG_ALIASES, LAYER_PATTERN
from mergemed.io.checkpoint import Checkpoint
from mergemed.io.hub import resolve_model_folder
from mergemed.units import human_bytes

DEFAULT_CHUNK_ELEMENTS = 4 * 1024 * 1024
"""Elements of a tensor read at a time (8 MiB of bfloat16 per model)."""

COMPUTE_BLOCK_ELEMENTS = 256 * 1024
"""Elements converted to float64 and summed at a time (2 MiB per model: stays in cache)."""

LAYER_COMPONENTS = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "input_layernorm": "in_norm",
    "post_attention_layernorm": "post_norm",
}
"""Short column names for the usual decoder-layer modules (weights and biases together).

``in_norm`` is ``input_layernorm`` (before attention), ``post_norm`` is
``post_attention_layernorm`` (before the MLP). Other modules keep their own path."""

COLUMN_ORDER = tuple(LAYER_COMPONENTS.values())
OUTSIDE_ORDER = ("embed_tokens", "norm", "lm_head")
VOCABULARY_COMPONENTS = ("embed_tokens", "lm_head")
EMBEDDING_NAMES = ("model.embed_tokens.weight", "transformer.wte.weight")

ProgressCallback = Callable[[int, str], None]
"""Called with (bytes just read, tensor name) while streaming."""


# --------------------------------------------------------------------------------------------
# Numbers


@dataclass
class Sums:
    """Float64 sums over the elements compared; they add up across tensors."""

    elements: int = 0
    dot: float = 0.0
    a_sq: float = 0.0
    b_sq: float = 0.0
    diff_sq: float = 0.0
    base_elements: int = 0
    """Elements that also had a base value (the task-vector sums cover only these)."""
    base_sq: float = 0.0
    task_dot: float = 0.0
    task_a_sq: float = 0.0
    task_b_sq: float = 0.0

    def add(self, other: Sums) -> None:
        """Add ``other``'s sums to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def finite(self) -> bool:
        """False when NaN or Inf values were met (every metric is then None)."""
        return all(math.isfinite(getattr(self, name)) for name in self.__dataclass_fields__)

    def metrics(self, with_base: bool) -> dict[str, Any]:
        """Cosine, relative change and, ``with_base``, the task-vector angle and sizes.

        A metric that is undefined (a zero vector, NaN or Inf weights) is None.
        """
        if not self.finite:
            names = ["cosine", "relative_change"]
            if with_base:
                names += ["task_cosine", "task_angle", "task_change_a", "task_change_b"]
            return {"elements": self.elements, **dict.fromkeys(names)}
        identical = self.diff_sq == 0
        result: dict[str, Any] = {
            "elements": self.elements,
            "cosine": _cosine(self.dot, self.a_sq, self.b_sq, identical=identical),
            "relative_change": _ratio(self.diff_sq, self.b_sq),
        }
        if with_base:
            cosine = None
            if self.base_elements:
                cosine = _cosine(self.task_dot, self.task_a_sq, self.task_b_sq, identical=identical)
            result["task_cosine"] = cosine
            result["task_angle"] = None if cosine is None else math.degrees(math.acos(cosine))
            result["task_change_a"] = (
                _ratio(self.task_a_sq, self.base_sq) if self.base_elements else None
            )
            result["task_change_b"] = (
                _ratio(self.task_b_sq, self.base_sq) if self.base_elements else None
            )
        return result


def _cosine(dot: float, left_sq: float, right_sq: float, *, identical: bool) -> float | None:
    if left_sq == 0 or right_sq == 0:
        return None
    if identical:
        return 1.0
    return max(-1.0, min(1.0, dot / math.sqrt(left_sq * right_sq)))


def _ratio(numerator_sq: float, denominator_sq: float) -> float | None:
    if numerator_sq == 0:
        return 0.0
    if denominator_sq == 0:
        return None
    return math.sqrt(numerator_sq / denominator_sq)


def _accumulate(sums: Sums, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> None:
    """Fold one slice of A, B (and base C), already float64 and owned, into ``sums``.

    Consumes ``a`` and ``b``: they are overwritten in place to hold the differences.
    """
    sums.elements += a.numel()
    sums.dot += float(torch.dot(a, b))
    sums.a_sq += float(torch.dot(a, a))
    sums.b_sq += float(torch.dot(b, b))
    if c is not None:
        sums.base_elements += c.numel()
        sums.base_sq += float(torch.dot(c, c))
        task_a, task_b = a.sub_(c), b.sub_(c)
        sums.task_dot += float(torch.dot(task_a, task_b))
        sums.task_a_sq += float(torch.dot(task_a, task_a))
        sums.task_b_sq += float(torch.dot(task_b, task_b))
    difference = a.sub_(b)  # (A - C) - (B - C) with a base: the same A - B
    sums.diff_sq += float(torch.dot(difference, difference))


# --------------------------------------------------------------------------------------------
# The report


@dataclass
class TensorComparison:
    """One tensor of A against the same tensor of B (and of the base)."""

    name: str
    layer: int | None
    component: str
    """Column (``q``, ``gate``, ``in_norm``...) or, outside the layers, ``embed_tokens``,
    ``norm``, ``lm_head`` or the module path."""
    group: str
    """Coarse component from :func:`mergemed.schedule.component_of` (``self_attn``, ``mlp``...)."""
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    shape_base: tuple[int, ...] | None = None
    source_a: str = ""
    source_b: str = ""
    source_base: str | None = None
    elements: int = 0
    """Elements compared (fewer than the tensor has when vocabulary rows differ)."""
    base_elements: int = 0
    """Leading elements that also have a base value (task vectors cover only these)."""
    note: str | None = None
    sums: Sums = field(default_factory=Sums)


@dataclass
class ConfigDifference:
    """A config key that matters for merging and is not the same in every model."""

    key: str
    a: Any
    b: Any
    base: Any
    effect: str
    blocks_merge: bool


@dataclass
class InspectReport:
    """What :func:`inspect_models` found. ``to_json()`` has every number."""

    model_a: str
    model_b: str
    base: str | None
    folders: dict[str, str]
    tensors: list[TensorComparison]
    only_in_a: list[str]
    only_in_b: list[str]
    missing_in_base: list[str]
    shape_mismatches: list[dict[str, Any]]
    config_differences: list[ConfigDifference]
    plain_merge_possible: bool
    merge_blockers: list[str]
    merge_cautions: list[str]
    notes: list[str]
    num_layers: dict[str, int | None]
    seconds: float = 0.0
    bytes_read: int = 0
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    vocabulary: dict | None = None
    """Token-level vocabulary comparison (filled by :mod:`mergemed.vocabulary` when present)."""

    @property
    def with_base(self) -> bool:
        return self.base is not None

    @property
    def layers(self) -> list[int]:
        """Layer indices with at least one compared tensor, in order."""
        return sorted({t.layer for t in self.tensors if t.layer is not None})

    @property
    def components(self) -> list[str]:
        """Layer columns in display order: q k v o gate up down in_norm post_norm, then others."""
        seen = [t.component for t in self.tensors if t.layer is not None]
        known = [c for c in COLUMN_ORDER if c in seen]
        return known + list(dict.fromkeys(c for c in seen if c not in COLUMN_ORDER))

    @property
    def outside_components(self) -> list[str]:
        """Components outside the decoder layers: embed_tokens, norm, lm_head, then others."""
        seen = [t.component for t in self.tensors if t.layer is None]
        known = [c for c in OUTSIDE_ORDER if c in seen]
        return known + list(dict.fromkeys(c for c in seen if c not in OUTSIDE_ORDER))

    @functools.cached_property
    def _cell_sums(self) -> dict[tuple[int | None, str | None], Sums]:
        """Sums per (layer, component) and per (layer, None), added up once."""
        cells: dict[tuple[int | None, str | None], Sums] = {}
        for tensor in self.tensors:
            for key in ((tensor.layer, tensor.component), (tensor.layer, None)):
                cells.setdefault(key, Sums()).add(tensor.sums)
        return cells

    def cell(self, layer: int | None, component: str | None = None) -> dict[str, Any] | None:
        """Metrics of one layer's component (``component=None``: the whole layer); ``layer=None``
        with a component: that tensor group outside the layers. None when nothing matches."""
        sums = self._cell_sums.get((layer, component))
        return None if sums is None else sums.metrics(self.with_base)

    def overall(self) -> dict[str, Any]:
        """Metrics over every compared element of the model."""
        sums = Sums()
        for tensor in self.tensors:
            sums.add(tensor.sums)
        return sums.metrics(self.with_base)

    def grid(self, metric: str) -> list[list[float | None]]:
        """``metric`` for each layer (rows, :attr:`layers`) and component (:attr:`components`)."""
        rows = []
        for layer in self.layers:
            row = []
            for component in self.components:
                cell = self.cell(layer, component)
                row.append(None if cell is None else cell.get(metric))
            rows.append(row)
        return rows

    def ranked(self, metric: str, count: int, *, whole_layers: bool = False) -> list[dict]:
        """The ``count`` cells (or whole layers) with the largest ``metric``, zeros left out."""
        entries = []
        for layer in self.layers:
            for component in [None] if whole_layers else self.components:
                cell = self.cell(layer, component)
                if cell is not None and cell.get(metric) is not None:
                    entries.append({"layer": layer, "component": component, **cell})
        entries.sort(key=lambda entry: entry[metric], reverse=True)
        return [entry for entry in entries if entry[metric] > 0][:count]

    def to_json(self) -> dict[str, Any]:
        """Everything: per tensor (with the raw sums), per cell, per layer, outside the layers,
        the whole model, the config differences and the merge verdict."""
        return {
            "models": {
                "a": {"reference": self.model_a, "folder": self.folders["a"]},
                "b": {"reference": self.model_b, "folder": self.folders["b"]},
                "base": (
                    {"reference": self.base, "folder": self.folders["base"]} if self.base else None
                ),
            },
            "metrics": {
                "cosine": "<A,B> / (|A| |B|)",
                "relative_change": "|A-B| / |B|",
                **(
                    {
                        "task_cosine": "<A-C,B-C> / (|A-C| |B-C|)",
                        "task_angle": "acos(task_cosine) in degrees",
                        "task_change_a": "|A-C| / |C|",
                        "task_change_b": "|B-C| / |C|",
                    }
                    if self.with_base
                    else {}
                ),
            },
            "num_layers": self.num_layers,
            "components": self.components,
            "overall": self.overall(),
            "layers": [
                {
                    "layer": layer,
                    "all": self.cell(layer),
                    "components": {
                        component: cell
                        for component in self.components
                        if (cell := self.cell(layer, component)) is not None
                    },
                }
                for layer in self.layers
            ],
            "outside_layers": {
                component: self.cell(None, component) for component in self.outside_components
            },
            "tensors": [
                {
                    "name": t.name,
                    "layer": t.layer,
                    "component": t.component,
                    "group": t.group,
                    "shape_a": list(t.shape_a),
                    "shape_b": list(t.shape_b),
                    "shape_base": None if t.shape_base is None else list(t.shape_base),
                    "source_a": t.source_a,
                    "source_b": t.source_b,
                    "source_base": t.source_base,
                    "note": t.note,
                    **t.sums.metrics(self.with_base),
                    "sums": vars(t.sums).copy(),
                }
                for t in self.tensors
            ],
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "missing_in_base": self.missing_in_base,
            "shape_mismatches": self.shape_mismatches,
            "config_differences": [vars(d).copy() for d in self.config_differences],
            "plain_merge": {
                "possible": self.plain_merge_possible,
                "blockers": self.merge_blockers,
                "cautions": self.merge_cautions,
            },
            "notes": self.notes,
            "vocabulary": self.vocabulary,
            "seconds": round(self.seconds, 3),
            "bytes_read": self.bytes_read,
            "chunk_elements": self.chunk_elements,
        }

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path``; undefined numbers are null (raw sums of tensors
        with NaN or Inf values are written as strings, e.g. ``"nan"``)."""
        path = Path(path)
        try:
            path.write_text(json.dumps(_json_safe(self.to_json()), indent=2) + "\n")
        except OSError as error:
            raise OutputError(f"{path}: cannot write: {error.strerror}") from None
        return path


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats turned into strings (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------
# Naming


def tensor_component(name: str) -> tuple[int | None, str]:
    """``(layer, component)`` of a tensor name: ``model.layers.2.mlp.up_proj.weight`` ->
    ``(2, "up")``; ``model.embed_tokens.weight`` -> ``(None, "embed_tokens")``."""
    from mergemed.schedule import component_of

    match = LAYER_PATTERN.match(name)
    if match:
        module = _module_path(match["suffix"][1:])
        short = LAYER_COMPONENTS.get(module.rsplit(".", 1)[-1])
        return int(match["index"]), short or re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", module)
    group = component_of(name)
    if group in OUTSIDE_ORDER:
        return None, group
    return None, _module_path(name)


def _module_path(name: str) -> str:
    for ending in (".weight", ".bias"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


# --------------------------------------------------------------------------------------------
# Config


_SHAPE_EFFECT = "tensor shapes differ: no plain merge"
_CONTEXT_EFFECT = (
    "context handling differs: the merged config copies the recipe's base model (or its first "
    "model); check long prompts after merging"
)
_CONFIG_EFFECTS: dict[str, tuple[str, bool]] = {
    "architectures": ("different model classes", True),
    "model_type": ("different model families", True),
    "hidden_size": (_SHAPE_EFFECT, True),
    "num_hidden_layers": ("different depth: merge matching layer ranges with slices", True),
    "intermediate_size": (_SHAPE_EFFECT, True),
    "num_attention_heads": ("attention heads differ: no plain merge", True),
    "num_key_value_heads": (_SHAPE_EFFECT, True),
    "head_dim": (_SHAPE_EFFECT, True),
    "vocab_size": (
        "vocabularies differ: embed_tokens and lm_head rows do not line up; "
        "align the tokenizers first",
        True,
    ),
    "max_position_embeddings": (_CONTEXT_EFFECT, False),
    "rope_theta": (_CONTEXT_EFFECT, False),
    "rope_scaling": (_CONTEXT_EFFECT, False),
    "rope_parameters": (_CONTEXT_EFFECT, False),
    "sliding_window": (_CONTEXT_EFFECT, False),
    "tie_word_embeddings": (
        "one model ties lm_head to embed_tokens: the merge reads its embeddings as its "
        "lm_head and writes a separate lm_head",
        False,
    ),
    "dtype": (
        "storage dtypes differ: the merge writes the recipe's base model's dtype (or its first "
        "model's) unless the recipe sets out_dtype",
        False,
    ),
}


def config_value(config: dict[str, Any], key: str) -> Any:
    """A config's value for ``key`` (or one of its aliases; ``text_config`` is searched too)."""
    for alias in CONFIG_ALIASES.get(key, (key,)):
        for scope in (config, config.get("text_config") or {}):
            if alias in scope:
                return scope[alias]
    return None


def compare_configs(
    config_a: dict[str, Any], config_b: dict[str, Any], config_base: dict[str, Any] | None = None
) -> list[ConfigDifference]:
    """The merge-relevant config keys whose values are not the same in every model."""
    differences = []
    for key, (effect, blocks) in _CONFIG_EFFECTS.items():
        a, b = config_value(config_a, key), config_value(config_b, key)
        base = None if config_base is None else config_value(config_base, key)
        values = [a, b] if config_base is None else [a, b, base]
        if any(json.dumps(v, sort_keys=True) != json.dumps(a, sort_keys=True) for v in values):
            differences.append(ConfigDifference(key, a, b, base, effect, blocks))
    return differences


def _architectures(first: dict[str, Any], second: dict[str, Any]) -> tuple[Any, Any]:
    """The two configs' model classes (``architectures[0]``) or, when either lacks one, their
    ``model_type``s; None where a config has neither."""
    classes = [config.get("architectures") for config in (first, second)]
    if all(isinstance(value, list) and value for value in classes):
        return classes[0][0], classes[1][0]
    return first.get("model_type"), second.get("model_type")


def _check_comparable(first: Checkpoint, second: Checkpoint, first_role: str, role: str) -> None:
    """Refuse models of different architectures or widths, naming both."""
    first_architecture, other_architecture = _architectures(first.config, second.config)
    if first_architecture and other_architecture and first_architecture != other_architecture:
        raise InspectError(
            f"different architectures: {first_role} {first.reference!r} is {first_architecture}, "
            f"{role} {second.reference!r} is {other_architecture}; inspect compares models of "
            "one architecture tensor by tensor"
        )
    first_width = config_value(first.config, "hidden_size")
    other_width = config_value(second.config, "hidden_size")
    if first_width is not None and other_width is not None and first_width != other_width:
        raise InspectError(
            f"hidden sizes differ: {first_role} {first.reference!r} has hidden_size "
            f"{first_width}, {role} {second.reference!r} has {other_width}; this is not a "
            "vocabulary problem: every tensor has a different width, so no merge (and no "
            "vocabulary alignment) can combine them"
        )


# --------------------------------------------------------------------------------------------
# Planning what to read


@dataclass
class _Job:
    """Tensors read together, slice by slice, and the comparisons fed from them."""

    sources: dict[tuple[str, str], int] = field(default_factory=dict)
    """(role, tensor name) -> elements to read."""
    comparisons: list[TensorComparison] = field(default_factory=list)

    @property
    def length(self) -> int:
        return max(self.sources.values(), default=0)


def _embedding_name(checkpoint: Checkpoint) -> str | None:
    for name in EMBEDDING_NAMES:
        if name in checkpoint.tensors:
            return name
    return next((n for n in checkpoint.tensors if tensor_component(n)[1] == "embed_tokens"), None)


def _lm_head_name(checkpoint: Checkpoint) -> str | None:
    return next((n for n in checkpoint.tensors if n.endswith("lm_head.weight")), None)


def _effective_names(checkpoint: Checkpoint) -> tuple[dict[str, str], list[str], bool]:
    """Map each reported tensor name to the tensor to read; the skipped duplicates; tied?

    A tied model (``tie_word_embeddings``, or no lm_head saved) reads its embeddings as its
    lm_head, as the merge engine does. A saved lm_head of a tied model is a duplicate and is
    skipped.
    """
    names = {name: name for name in checkpoint.tensors}
    embedding, lm_head = _embedding_name(checkpoint), _lm_head_name(checkpoint)
    tied = embedding is not None and (checkpoint.tie_word_embeddings or lm_head is None)
    skipped = []
    if tied and lm_head is not None:
        del names[lm_head]
        skipped.append(lm_head)
    if tied and embedding is not None:
        names[lm_head or "lm_head.weight"] = embedding
    return names, skipped, tied


def _compared_elements(name: str, shapes: list[tuple[int, ...]]) -> tuple[int, str | None] | None:
    """Elements to compare for tensors of these shapes (a leading block of rows for vocabulary
    tensors whose row counts differ), with a note; None when they cannot be compared."""
    if all(shape == shapes[0] for shape in shapes):
        return math.prod(shapes[0]), None
    _, component = tensor_component(name)
    if (
        component in VOCABULARY_COMPONENTS
        and all(len(shape) == len(shapes[0]) >= 1 for shape in shapes)
        and all(shape[1:] == shapes[0][1:] for shape in shapes)
    ):
        rows = min(shape[0] for shape in shapes)
        counts = "/".join(str(shape[0]) for shape in shapes)
        return (
            rows * math.prod(shapes[0][1:]),
            f"vocabulary rows differ ({counts}): compared the first {rows} rows",
        )
    return None


def _plan(
    checkpoints: dict[str, Checkpoint],
) -> tuple[list[_Job], dict[str, Any]]:
    """Decide what to compare and group it into read jobs, in A's file order."""
    from mergemed.schedule import component_of

    effective: dict[str, dict[str, str]] = {}
    skipped: dict[str, list[str]] = {}
    tied: dict[str, bool] = {}
    for role, checkpoint in checkpoints.items():
        effective[role], skipped[role], tied[role] = _effective_names(checkpoint)
    has_base = "base" in checkpoints

    notes = []
    tied_roles = [role for role in ("a", "b") if tied[role]]
    if len(tied_roles) == 2:
        for role in checkpoints:
            effective[role].pop(_lm_head_name(checkpoints[role]) or "lm_head.weight", None)
        notes.append(
            "lm_head is tied to embed_tokens in both models: reported once, as embed_tokens"
        )
    elif tied_roles:
        for role in tied_roles:
            notes.append(
                f"model {role.upper()} ties lm_head to embed_tokens: its embeddings stand in for "
                "its lm_head (as in a merge)"
            )
    for role, names in skipped.items():
        for name in names:
            notes.append(
                f"{name} of {'the base' if role == 'base' else role.upper()} skipped: a duplicate "
                "of its embeddings (tie_word_embeddings)"
            )

    only_in_a = [n for n in effective["a"] if n not in effective["b"]]
    only_in_b = [n for n in effective["b"] if n not in effective["a"]]
    missing_in_base: list[str] = []
    mismatches: list[dict[str, Any]] = []
    jobs: list[_Job] = []
    job_of_source: dict[tuple[str, str], _Job] = {}

    def position(name: str) -> tuple[str, int]:
        info = checkpoints["a"].tensors[effective["a"][name]]
        return str(info.file), info.start

    for name in sorted((n for n in effective["a"] if n in effective["b"]), key=position):
        sources = {"a": effective["a"][name], "b": effective["b"][name]}
        shapes = [checkpoints[r].tensors[sources[r]].shape for r in ("a", "b")]
        compared = _compared_elements(name, shapes)
        if compared is None:
            mismatches.append({"name": name, "a": list(shapes[0]), "b": list(shapes[1])})
            continue
        elements, note = compared
        base_shape, base_elements = None, 0
        if has_base:
            base_source = effective["base"].get(name)
            if base_source is None:
                missing_in_base.append(name)
            else:
                base_shape = checkpoints["base"].tensors[base_source].shape
                with_base = _compared_elements(name, [*shapes, base_shape])
                if with_base is None:
                    mismatch = {"name": name, "a": list(shapes[0]), "b": list(shapes[1])}
                    mismatches.append({**mismatch, "base": list(base_shape)})
                else:
                    base_elements = with_base[0]
                    sources["base"] = base_source
                    if base_elements < elements:
                        rows = base_elements // max(1, math.prod(shapes[0][1:]))
                        note = (note + "; " if note else "") + (
                            f"the base has {base_shape[0]} rows: task vectors use the first {rows}"
                        )
        layer, component = tensor_component(name)
        comparison = TensorComparison(
            name=name,
            layer=layer,
            component=component,
            group=component_of(name),
            shape_a=shapes[0],
            shape_b=shapes[1],
            shape_base=base_shape,
            source_a=sources["a"],
            source_b=sources["b"],
            source_base=sources.get("base"),
            elements=elements,
            base_elements=base_elements,
            note=note,
        )
        keys = [(role, tensor) for role, tensor in sources.items()]
        job = next((job_of_source[key] for key in keys if key in job_of_source), None)
        if job is None:
            job = _Job()
            jobs.append(job)
        job.comparisons.append(comparison)
        for key in keys:
            needed = base_elements if key[0] == "base" else elements
            job.sources[key] = max(job.sources.get(key, 0), needed)
            job_of_source[key] = job

    facts = {
        "only_in_a": only_in_a,
        "only_in_b": only_in_b,
        "missing_in_base": missing_in_base,
        "shape_mismatches": mismatches,
        "notes": notes,
    }
    return jobs, facts


# --------------------------------------------------------------------------------------------
# Streaming


_DONE = object()


def _stream(
    jobs: list[_Job],
    checkpoints: dict[str, Checkpoint],
    chunk_elements: int,
    progress: ProgressCallback | None,
) -> int:
    """Read every job's tensors once, slice by slice, and fill in the comparisons' sums.

    Returns the bytes read.
    """
    slices: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(entry: Any) -> bool:
        while not stop.is_set():
            try:
                slices.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read_all() -> None:
        try:
            for job in jobs:
                for start in range(0, max(job.length, 1), chunk_elements):
                    read = {}
                    for (role, name), needed in job.sources.items():
                        count = min(chunk_elements, needed - start)
                        if count > 0:
                            read[(role, name)] = checkpoints[role].read(name, start, count)
                    if not put((job, start, read)):
                        return
        except BaseException as error:
            failure.append(error)
        put(_DONE)

    reader = threading.Thread(target=read_all, name="mergemed-inspect-reader", daemon=True)
    reader.start()
    bytes_read = 0
    # Float64 working copies of A, B and C, one block long and reused: fresh ones would cost a
    # page fault per 4 KiB, and blocks small enough to stay in the CPU cache make the five
    # passes over them (convert, three dot products, subtract) about twice as fast.
    block = max(1, min(COMPUTE_BLOCK_ELEMENTS, chunk_elements))
    scratch = {role: torch.empty(block, dtype=torch.float64) for role in ("a", "b", "base")}
    try:
        while True:
            try:
                entry = slices.get(timeout=0.1)
            except queue.Empty:
                if not reader.is_alive() and slices.empty():
                    break
                continue
            if entry is _DONE:
                break
            job, start, read = entry
            for (_, name), values in read.items():
                size = values.numel() * values.element_size()
                bytes_read += size
                if progress:
                    progress(size, name)
            for comparison in job.comparisons:
                count = min(chunk_elements, comparison.elements - start)
                if count <= 0:
                    continue
                with_base = 0
                if comparison.source_base is not None:
                    with_base = max(0, min(count, comparison.base_elements - start))
                _fold(
                    comparison.sums,
                    read[("a", comparison.source_a)].reshape(-1),
                    read[("b", comparison.source_b)].reshape(-1),
                    read[("base", comparison.source_base)].reshape(-1) if with_base else None,
                    count,
                    with_base,
                    scratch,
                )
    finally:
        stop.set()
        reader.join(timeout=10)
    if failure:
        raise failure[0]
    return bytes_read


def _fold(
    sums: Sums,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | None,
    count: int,
    with_base: int,
    scratch: dict[str, torch.Tensor],
) -> None:
    """Add the first ``count`` elements of flat slices ``a`` and ``b`` (and the first
    ``with_base`` of ``c``) to ``sums``, a cache-sized block at a time, in float64."""
    block = len(scratch["a"])
    for offset in range(0, count, block):
        size = min(block, count - offset)
        a64 = scratch["a"][:size].copy_(a[offset : offset + size])
        b64 = scratch["b"][:size].copy_(b[offset : offset + size])
        based = max(0, min(size, with_base - offset)) if c is not None else 0
        if based:
            c64 = scratch["base"][:based].copy_(c[offset : offset + based])
            _accumulate(sums, a64[:based], b64[:based], c64)
        if based < size:
            _accumulate(sums, a64[based:], b64[based:], None)


# --------------------------------------------------------------------------------------------
# Entry point


def _open(reference: str, role: str, allow_pickle: bool) -> Checkpoint:
    try:
        folder = resolve_model_folder(reference)
        return Checkpoint(folder, reference, allow_pickle=allow_pickle)
    except CheckpointError as error:
        raise CheckpointError(f"{'base' if role == 'base' else role.upper()}: {error}") from None


def _merge_verdict(
    checkpoints: dict[str, Checkpoint],
    facts: dict[str, Any],
    jobs: list[_Job],
    differences: list[ConfigDifference],
) -> tuple[list[str], list[str]]:
    """Why a plain (same-layout) merge of these models is impossible, and what to watch."""
    blockers = []
    layers = {role: checkpoint.num_layers for role, checkpoint in checkpoints.items()}
    if len(set(layers.values())) > 1:
        listed = ", ".join(f"{_label(role)} {count}" for role, count in layers.items())
        blockers.append(f"layer counts differ ({listed}): merge matching layer ranges with slices")
    vocabulary = [
        c.note
        for job in jobs
        for c in job.comparisons
        if c.note and c.component in VOCABULARY_COMPONENTS and "rows" in c.note
    ]
    if vocabulary:
        blockers.append(f"{vocabulary[0].split(':')[0]}: align the tokenizers first")
    for key, label in (("only_in_a", "A"), ("only_in_b", "B"), ("missing_in_base", "the base")):
        names = facts[key]
        if names:
            where = "only in" if key != "missing_in_base" else "missing in"
            blockers.append(f"{len(names)} tensor(s) {where} {label}, e.g. {names[0]}")
    mismatches = facts["shape_mismatches"]
    if mismatches:
        first = mismatches[0]
        in_base = f", {first['base']} in the base" if "base" in first else ""
        blockers.append(
            f"{len(mismatches)} tensor(s) differ in shape, e.g. {first['name']} "
            f"({first['a']} in A, {first['b']} in B{in_base})"
        )
    for difference in differences:
        values = [difference.a, difference.b]
        values += [difference.base] if "base" in checkpoints else []
        known = all(value is not None for value in values)
        if difference.key in ("architectures", "model_type") and known:
            blockers.append(f"{difference.key} differs ({_describe(difference)})")
    cautions = [f"{d.key} differs ({_describe(d)})" for d in differences if not d.blocks_merge]
    return blockers, cautions


def _label(role: str) -> str:
    return "the base" if role == "base" else role.upper()


def _describe(difference: ConfigDifference) -> str:
    text = f"A {json.dumps(difference.a)}, B {json.dumps(difference.b)}"
    if difference.base is not None:
        text += f", base {json.dumps(difference.base)}"
    return text


def inspect_models(
    model_a: str | Path,
    model_b: str | Path,
    *,
    base: str | Path | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    allow_pickle: bool = False,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
) -> InspectReport:
    """Compare two checkpoints tensor by tensor, reading each once in bounded memory.

    Args:
        model_a: folder or Hugging Face Hub id of the first model.
        model_b: the second model; relative change is measured against it (``|A-B| / |B|``).
        base: a common ancestor C; adds the angle between task vectors ``A-C`` and ``B-C``.
        chunk_elements: tensors are compared this many elements at a time.
        allow_pickle: permit ``.bin``/``.pt`` weights (unpickling can run code from the file).
        json_path: write :meth:`InspectReport.to_json` here when done.
        plot_path: draw :func:`plot_heatmap` here when done.
        progress: called with (bytes read, tensor name) while streaming.
        on_start: called once with the total bytes that will be read.

    Returns:
        An :class:`InspectReport`: per tensor, per layer and component, the config differences
        that matter for merging and whether a plain merge is possible.

    Raises:
        CheckpointError: a model folder is missing or unreadable.
        InspectError: the models have different architectures or hidden sizes.
        OutputError: ``json_path`` or ``plot_path`` cannot be written (checked before reading).

    Nothing is written unless the comparison succeeds.
    """
    if chunk_elements < 1:
        raise InspectError(f"chunk_elements: expected at least 1, got {chunk_elements}")
    json_path = _check_output_file(json_path, "--json")
    plot_path = _check_output_file(plot_path, "--plot")
    started = time.perf_counter()
    references = {"a": str(model_a), "b": str(model_b)}
    if base is not None:
        references["base"] = str(base)
    checkpoints: dict[str, Checkpoint] = {}
    try:
        for role, reference in references.items():
            checkpoints[role] = _open(reference, role, allow_pickle)
        _check_comparable(checkpoints["a"], checkpoints["b"], "A", "B")
        if "base" in checkpoints:
            _check_comparable(checkpoints["a"], checkpoints["base"], "A", "the base")
        jobs, facts = _plan(checkpoints)
        differences = compare_configs(
            checkpoints["a"].config,
            checkpoints["b"].config,
            checkpoints["base"].config if "base" in checkpoints else None,
        )
        blockers, cautions = _merge_verdict(checkpoints, facts, jobs, differences)
        vocabulary = _compare_vocabularies(checkpoints["a"], checkpoints["b"])
        if not vocabulary["identical"]:
            blockers = [b for b in blockers if "align the tokenizers" not in b]
            blockers.append(
                f"vocabularies differ ({vocabulary['summary']}): add `tokenizer: {{source: "
                "union}` (or `{source: base}`) to the recipe to align them"
            )
        total = sum(
            needed * checkpoints[role].tensors[name].dtype.itemsize
            for job in jobs
            for (role, name), needed in job.sources.items()
        )
        if on_start:
            on_start(total)
        with compute_threads():
            bytes_read = _stream(jobs, checkpoints, chunk_elements, progress)
    finally:
        for checkpoint in checkpoints.values():
            checkpoint.close()
    tensors = [comparison for job in jobs for comparison in job.comparisons]
    tensors.sort(key=_display_order)
    broken = [t.name for t in tensors if not t.sums.finite]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        facts["notes"].append(f"NaN or Inf values in {broken[0]}{more}: no numbers for them")
    report = InspectReport(
        model_a=references["a"],
        model_b=references["b"],
        base=references.get("base"),
        folders={role: str(checkpoint.folder) for role, checkpoint in checkpoints.items()},
        tensors=tensors,
        only_in_a=facts["only_in_a"],
        only_in_b=facts["only_in_b"],
        missing_in_base=facts["missing_in_base"],
        shape_mismatches=facts["shape_mismatches"],
        config_differences=differences,
        plain_merge_possible=not blockers,
        merge_blockers=blockers,
        merge_cautions=cautions,
        notes=facts["notes"],
        num_layers={role: checkpoint.num_layers for role, checkpoint in checkpoints.items()},
        seconds=time.perf_counter() - started,
        bytes_read=bytes_read,
        chunk_elements=chunk_elements,
        vocabulary=vocabulary,
    )
    if plot_path is not None:
        plot_heatmap(report, plot_path)
    if json_path is not None:
        report.write_json(json_path)
    return report


def _compare_vocabularies(a: Checkpoint, b: Checkpoint) -> dict[str, Any]:
    """The token-level vocabulary comparison of A with B (the reference), as JSON."""
    from mergemed.vocabulary import compare_vocabularies, read_vocabularies

    parents = read_vocabularies({"A": a, "B": b})
    return compare_vocabularies(parents, "B").to_json()


def _check_output_file(path: str | Path | None, option: str) -> Path | None:
    """Refuse an output file that cannot be written, before any work is done."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; expected a file name")
    if not path.parent.is_dir():
        raise OutputError(f"{option} {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{option} {path}: folder {path.parent} is not writable")
    return path


def _display_order(comparison: TensorComparison) -> tuple:
    if comparison.layer is not None:
        rank = (
            COLUMN_ORDER.index(comparison.component)
            if comparison.component in COLUMN_ORDER
            else len(COLUMN_ORDER)
        )
        return (1, comparison.layer, rank, comparison.name)
    if comparison.component == "embed_tokens":
        return (0, 0, 0, comparison.name)
    rank = OUTSIDE_ORDER.index(comparison.component) if comparison.component in OUTSIDE_ORDER else 9
    return (2, 0, rank, comparison.name)


def summary_line(report: InspectReport) -> str:
    """``inspected 201 tensors (4.1 GiB read) in 35.2 s``."""
    return (
        f"inspected {len(report.tensors)} tensors ({human_bytes(report.bytes_read)} read) "
        f"in {report.seconds:.1f} s"
    )


# --------------------------------------------------------------------------------------------
# Heatmap


def plot_heatmap(report: InspectReport, path: str | Path) -> Path:
    """Draw layers x components heatmaps to a PNG: relative change (%), and with a base the
    task-vector angle (degrees); the numbers are written in the cells when they fit. The last
    column, ``all``, is the whole layer; the tensors outside the layers are in the title.

    Raises:
        OutputError: the file cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy

    # (metric, title, colour map, scale, fixed range)
    panels: list[tuple[str, str, str, float, tuple[float, float] | None]] = [
        ("relative_change", "relative change |A-B|/|B|, %", "magma_r", 100.0, None)
    ]
    if report.with_base:
        panels.append(
            ("task_angle", "task-vector angle (A-C, B-C), degrees", "coolwarm", 1.0, (0, 180))
        )
    layers, columns = report.layers, [*report.components, "all"]
    width = max(4.5, 1.6 + 0.62 * len(columns))
    height = max(3.2, 1.8 + 0.3 * len(layers))
    figure, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels), height), squeeze=False
    )
    annotate = len(layers) * len(columns) <= 400
    for axis, (metric, title, colours, scale, fixed) in zip(axes[0], panels, strict=True):
        axis.set_title(title, fontsize=10)
        if not layers:
            axis.text(0.5, 0.5, "no decoder layers compared", ha="center", va="center")
            axis.set_axis_off()
            continue
        rows = [
            [*cells, (report.cell(layer) or {}).get(metric)]
            for layer, cells in zip(layers, report.grid(metric), strict=True)
        ]
        values = numpy.array(
            [[numpy.nan if v is None else v * scale for v in row] for row in rows],
            dtype=float,
        ).reshape(len(layers), len(columns))
        finite = values[~numpy.isnan(values)]
        low, high = fixed or (0.0, float(finite.max(initial=0.0)))
        image = axis.imshow(
            numpy.ma.masked_invalid(values),
            cmap=colours,
            aspect="auto",
            interpolation="nearest",
            vmin=low,
            vmax=max(high, low + 1e-12),
        )
        colourbar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        colourbar.set_label("%" if metric == "relative_change" else "degrees")
        axis.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
        axis.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        axis.set_ylabel("layer")
        axis.axvline(len(columns) - 1.5, color="white", linewidth=2)
        if not annotate:
            continue
        for row, column in zip(*numpy.nonzero(~numpy.isnan(values)), strict=True):
            value = values[row, column]
            if fixed is None:
                dark = value > (low + high) / 2
            else:  # diverging: dark at both ends
                dark = abs(value - (low + high) / 2) > 0.3 * (high - low)
            axis.text(
                column,
                row,
                "0" if value == 0 else f"{value:#.3g}".removesuffix("."),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if dark else "black",
            )
    outside = ", ".join(
        f"{component} {_percent(cell.get('relative_change'))}"
        for component in report.outside_components
        if (cell := report.cell(None, component)) is not None
    )
    names = f"A = {Path(report.model_a).name}, B = {Path(report.model_b).name}"
    if report.base:
        names += f", C = {Path(report.base).name}"
    figure.suptitle(names + (f"\noutside the layers: {outside}" if outside else ""), fontsize=9)
    figure.tight_layout()
    path = Path(path)
    try:
        figure.savefig(path, dpi=110)
    except OSError as error:
        raise OutputError(f"{path}: cannot write: {error.strerror}") from None
    finally:
        plt.close(figure)
    return path


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0%"
    return f"{value * 100:#.3g}".removesuffix(".") + "%"


# --------------------------------------------------------------------------------------------
# Rendering (rich)


TABLE_METRICS = {"change": "relative_change", "cosine": "cosine", "angle": "task_angle"}
"""``--metric`` choices and the number each shows."""

_TABLE_TITLES = {
    "relative_change": "relative change |A-B| / |B|, %",
    "cosine": "cosine similarity of A and B",
    "task_angle": "angle between task vectors A-C and B-C (90° = unrelated, >90° = opposed)",
}


def format_value(metric: str, value: float | None, *, cell: bool = False) -> str:
    """A metric as the tables show it: ``10.1%``, ``0.99500``, ``91.2°``; ``-`` when missing.
    In a ``cell`` of the layer table a relative change is a bare percentage (``10.1``)."""
    if value is None:
        return "-"
    if metric in ("relative_change", "task_change_a", "task_change_b"):
        return _percent(value).removesuffix("%") if cell else _percent(value)
    if metric in ("cosine", "task_cosine"):
        text = f"{value:.5f}"
        if value == 1:
            return "1"
        return ">0.99999" if text == "1.00000" else text
    return f"{value:.1f}°"


def _style(metric: str, value: float | None, largest: float) -> str:
    """Colour cells by how much they stand out: the most changed (or most opposed) in red."""
    if value is None:
        return "dim"
    if metric == "task_angle":
        return "bold red" if value > 100 else ("yellow" if value > 92 else "")
    amount = 1 - value if metric == "cosine" else value
    if amount == 0:
        return "dim"
    if largest > 0 and amount >= 0.75 * largest:
        return "bold red"
    return "yellow" if largest > 0 and amount >= 0.5 * largest else ""


def check_table_metric(metric: str, with_base: bool) -> str:
    """The report field behind a ``--metric`` choice.

    Raises:
        InspectError: an unknown choice, or ``angle`` without a base.
    """
    if metric not in TABLE_METRICS:
        raise InspectError(f"--metric {metric}: expected one of {', '.join(TABLE_METRICS)}")
    if metric == "angle" and not with_base:
        raise InspectError("--metric angle: needs --base (the angle is between A-C and B-C)")
    return TABLE_METRICS[metric]


def render_report(report: InspectReport, metric: str = "relative_change", top: int = 5) -> list:
    """Rich renderables for a terminal: the layer table, the tensors outside the layers, the
    most-changed cells, tensors found in one model only, the config differences, the
    vocabulary comparison (when present) and the plain-merge verdict."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = []
    models = [
        ("A", report.model_a, report.folders["a"]),
        ("B", report.model_b, report.folders["b"]),
    ]
    if report.base:
        models.append(("base C", report.base, report.folders["base"]))
    header = Text()
    for label, reference, folder in models:
        where = f" ({folder})" if str(Path(reference).expanduser().resolve()) != folder else ""
        header.append(f"{label}: ", style="bold")
        header.append(f"{reference}{where}\n")
    out.append(header)

    columns = report.components
    grid = report.grid(metric)
    amounts = [(1 - v if metric == "cosine" else v) for row in grid for v in row if v is not None]
    largest = max(amounts, default=0.0)
    table = Table(
        title=f"per layer: {_TABLE_TITLES[metric]}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        pad_edge=False,
    )
    table.add_column("layer", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("all", justify="right", style="bold")
    for layer, row in zip(report.layers, grid, strict=True):
        cells = [
            Text(format_value(metric, value, cell=True), style=_style(metric, value, largest))
            for value in row
        ]
        whole = (report.cell(layer) or {}).get(metric)
        table.add_row(str(layer), *cells, format_value(metric, whole, cell=True))
    if report.layers:
        table.caption = "in_norm = input_layernorm, post_norm = post_attention_layernorm"
        out.append(table)

    outside = Table(title="outside the layers", title_justify="left")
    outside.add_column("tensor")
    outside.add_column("cosine", justify="right")
    outside.add_column("relative change", justify="right")
    if report.with_base:
        outside.add_column("task angle", justify="right")
    outside.add_column("note", style="dim")
    for component in report.outside_components:
        cell = report.cell(None, component) or {}
        notes = [t.note for t in report.tensors if t.component == component and t.layer is None]
        cells = [
            component,
            format_value("cosine", cell.get("cosine")),
            format_value("relative_change", cell.get("relative_change")),
        ]
        if report.with_base:
            cells.append(format_value("task_angle", cell.get("task_angle")))
        cells.append("; ".join(n for n in notes if n))
        outside.add_row(*cells)
    if report.outside_components:
        out.append(outside)

    overall = report.overall()
    summary = [
        f"whole model: cosine {format_value('cosine', overall['cosine'])}, relative change "
        f"{format_value('relative_change', overall['relative_change'])}"
        + (
            f", task angle {format_value('task_angle', overall.get('task_angle'))}"
            if report.with_base
            else ""
        )
    ]
    if overall["relative_change"] == 0:
        summary.append("A and B are identical in every compared tensor")
    elif report.layers and top > 0:
        ranked = report.ranked("relative_change", top)
        summary.append(
            "most changed: "
            + ", ".join(
                f"layer {e['layer']} {e['component']} {_percent(e['relative_change'])}"
                for e in ranked
            )
        )
        layers = report.ranked("relative_change", top, whole_layers=True)
        summary.append(
            "most changed layers: "
            + ", ".join(f"{e['layer']} ({_percent(e['relative_change'])})" for e in layers)
        )
        if report.with_base:
            opposed = report.ranked("task_angle", top)
            summary.append(
                "task vectors most opposed: "
                + ", ".join(
                    f"layer {e['layer']} {e['component']} {e['task_angle']:.1f}°" for e in opposed
                )
            )
    out.append(Text("\n".join(summary)))

    missing = []
    for label, names in (
        ("only in A", report.only_in_a),
        ("only in B", report.only_in_b),
        ("missing in the base", report.missing_in_base),
    ):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            missing.append(f"{len(names)} tensor(s) {label}: {shown}")
    for mismatch in report.shape_mismatches[:5]:
        base = f", base {mismatch['base']}" if "base" in mismatch else ""
        missing.append(
            f"shape differs: {mismatch['name']} (A {mismatch['a']}, B {mismatch['b']}{base})"
        )
    for line in missing + [f"note: {n}" for n in report.notes]:
        out.append(Text(line, style="yellow"))

    if report.config_differences:
        config = Table(title="config differences that matter for merging", title_justify="left")
        config.add_column("key")
        config.add_column("A")
        config.add_column("B")
        if report.with_base:
            config.add_column("base")
        config.add_column("effect")
        for difference in report.config_differences:
            values = [difference.a, difference.b] + ([difference.base] if report.with_base else [])
            config.add_row(
                difference.key,
                *(escape(json.dumps(v)) for v in values),
                Text(difference.effect, style="red" if difference.blocks_merge else "yellow"),
            )
        out.append(config)
    else:
        out.append(
            Text(
                "configs agree on architecture, sizes, layers, vocabulary, positions, rope, "
                "tying and dtype"
            )
        )

    if report.vocabulary:
        out.append(_vocabulary_table(report.vocabulary))

    verdict = Text("plain merge possible: ", style="bold")
    if report.plain_merge_possible:
        verdict.append("yes", style="bold green")
    else:
        verdict.append("no", style="bold red")
        for reason in report.merge_blockers:
            verdict.append(f"\n  - {reason}")
    for caution in report.merge_cautions:
        verdict.append(f"\n  but: {caution}; see the config differences", style="yellow")
    out.append(verdict)
    return out


def _vocabulary_table(vocabulary: dict[str, Any]) -> Any:
    """Rows, tokens, and the tokens each model has that the other lacks."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="vocabulary (tokenizers and embedding rows)", title_justify="left")
    table.add_column("")
    table.add_column("A")
    table.add_column("B")

    def count(value: Any) -> str:
        return "no tokenizer" if value is None else f"{value:,}"

    table.add_row("embedding rows", *(count(vocabulary["rows"][k]) for k in ("A", "B")))
    table.add_row("tokens", *(count(vocabulary["tokens"][k]) for k in ("A", "B")))
    extra = vocabulary["extra_tokens"].get("A", {"count": 0, "tokens": []})
    missing = vocabulary["missing_tokens"].get("A", {"count": 0, "tokens": []})

    def listed(entry: dict[str, Any]) -> str:
        shown = ", ".join(repr(t) for t in entry["tokens"][:5])
        return (
            f"{entry['count']:,}"
            + (f": {shown}" if shown else "")
            + (", ..." if entry["count"] > 5 else "")
        )

    table.add_row("tokens only in", escape(listed(extra)), escape(listed(missing)))
    moved = vocabulary["moved_tokens"].get("A", 0)
    if moved:
        table.add_row("shared tokens at other ids", f"{moved:,}", "")
    verdict = "identical" if vocabulary["identical"] else "differ: align them in the recipe"
    table.add_row("verdict", verdict, "")
    return table
