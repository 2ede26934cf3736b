"""What ``mergemed inspect`` found: per tensor, per cell, per layer, and the merge verdict."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.compare.components import COLUMN_ORDER, OUTSIDE_ORDER, VOCABULARY_COMPONENTS
from mergemed.compare.configs import ConfigDifference
from mergemed.compare.stats import DEFAULT_CHUNK_ELEMENTS, Sums
from mergemed.errors import OutputError
from mergemed.units import human_bytes


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
class LayoutDifferences:
    """Where the models' tensor lists do not pair up, and notes on how they were paired."""

    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    missing_in_base: list[str] = field(default_factory=list)
    shape_mismatches: list[dict[str, Any]] = field(default_factory=list)
    """``{"name", "a", "b"}`` (and ``"base"``) shapes of the tensors that cannot be compared."""
    notes: list[str] = field(default_factory=list)


@dataclass
class InspectReport:
    """What :func:`mergemed.compare.inspect_models` found. ``to_json()`` has every number."""

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
        """Whether a base C was compared too (the task-vector metrics exist)."""
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
            "tensors": [_tensor_json(t, self.with_base) for t in self.tensors],
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


def _tensor_json(tensor: TensorComparison, with_base: bool) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "layer": tensor.layer,
        "component": tensor.component,
        "group": tensor.group,
        "shape_a": list(tensor.shape_a),
        "shape_b": list(tensor.shape_b),
        "shape_base": None if tensor.shape_base is None else list(tensor.shape_base),
        "source_a": tensor.source_a,
        "source_b": tensor.source_b,
        "source_base": tensor.source_base,
        "note": tensor.note,
        **tensor.sums.metrics(with_base),
        "sums": vars(tensor.sums).copy(),
    }


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats turned into strings (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def display_order(comparison: TensorComparison) -> tuple:
    """Sort key of a tensor in the report: embed_tokens, the layers (columns in
    :data:`~mergemed.compare.components.COLUMN_ORDER`), then norm, lm_head and the rest."""
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


def merge_verdict(
    num_layers: dict[str, int | None],
    layout: LayoutDifferences,
    comparisons: list[TensorComparison],
    differences: list[ConfigDifference],
) -> tuple[list[str], list[str]]:
    """Why a plain (same-layout) merge of these models is impossible, and what to watch.

    Args:
        num_layers: each model's layer count, by role (``a``, ``b`` and maybe ``base``).
        layout: the tensors that did not pair up.
        comparisons: the tensors compared, in read order (the first vocabulary note is used).
        differences: the merge-relevant config differences.

    Returns:
        The blockers (empty: a plain merge is possible) and the cautions.
    """
    blockers = []
    if len(set(num_layers.values())) > 1:
        listed = ", ".join(f"{_label(role)} {count}" for role, count in num_layers.items())
        blockers.append(f"layer counts differ ({listed}): merge matching layer ranges with slices")
    vocabulary = [
        c.note
        for c in comparisons
        if c.note and c.component in VOCABULARY_COMPONENTS and "rows" in c.note
    ]
    if vocabulary:
        blockers.append(f"{vocabulary[0].split(':')[0]}: align the tokenizers first")
    for names, where, label in (
        (layout.only_in_a, "only in", "A"),
        (layout.only_in_b, "only in", "B"),
        (layout.missing_in_base, "missing in", "the base"),
    ):
        if names:
            blockers.append(f"{len(names)} tensor(s) {where} {label}, e.g. {names[0]}")
    mismatches = layout.shape_mismatches
    if mismatches:
        first = mismatches[0]
        in_base = f", {first['base']} in the base" if "base" in first else ""
        blockers.append(
            f"{len(mismatches)} tensor(s) differ in shape, e.g. {first['name']} "
            f"({first['a']} in A, {first['b']} in B{in_base})"
        )
    for difference in differences:
        values = [difference.a, difference.b]
        values += [difference.base] if "base" in num_layers else []
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


def summary_line(report: InspectReport) -> str:
    """``inspected 201 tensors (4.1 GiB read) in 35.2 s``."""
    return (
        f"inspected {len(report.tensors)} tensors ({human_bytes(report.bytes_read)} read) "
        f"in {report.seconds:.1f} s"
    )


def format_percent(value: float | None) -> str:
    """A ratio as a percentage to 3 significant digits: ``0.1012`` -> ``10.1%``, ``0`` ->
    ``0%``; ``-`` for None."""
    if value is None:
        return "-"
    if value == 0:
        return "0%"
    return f"{value * 100:#.3g}".removesuffix(".") + "%"
