"""The terminal output of ``mergemed inspect`` (rich): the layer table, the tensors outside the
layers, the most-changed cells, the config differences, the vocabulary and the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mergemed.compare.report import InspectReport, format_percent
from mergemed.errors import InspectError

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
        return format_percent(value).removesuffix("%") if cell else format_percent(value)
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
    vocabulary comparison (when present) and the plain-merge verdict.

    Args:
        report: what :func:`mergemed.compare.inspect_models` found.
        metric: the report field the layer table shows (see :func:`check_table_metric`).
        top: how many most-changed cells and layers to list (0: none).
    """
    out: list[Any] = [_models_header(report)]
    if report.layers:
        out.append(_layer_table(report, metric))
    if report.outside_components:
        out.append(_outside_table(report))
    out.append(Text("\n".join(_summary_lines(report, top))))
    for line in _layout_lines(report) + [f"note: {n}" for n in report.notes]:
        out.append(Text(line, style="yellow"))
    if report.config_differences:
        out.append(_config_table(report))
    else:
        out.append(
            Text(
                "configs agree on architecture, sizes, layers, vocabulary, positions, rope, "
                "tying and dtype"
            )
        )
    if report.vocabulary:
        out.append(_vocabulary_table(report.vocabulary))
    out.append(_verdict(report))
    return out


def _models_header(report: InspectReport) -> Text:
    """``A: reference (folder)`` lines; the folder only when the reference is not that path."""
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
    return header


def _layer_table(report: InspectReport, metric: str) -> Table:
    """Layers x components, and the whole layer in the last column."""
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
    table.caption = "in_norm = input_layernorm, post_norm = post_attention_layernorm"
    return table


def _outside_table(report: InspectReport) -> Table:
    """embed_tokens, norm, lm_head (and other tensors outside the layers), with their notes."""
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
    return outside


def _summary_lines(report: InspectReport, top: int) -> list[str]:
    """The whole model's numbers, then the ``top`` most changed cells, layers and angles."""
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
                f"layer {e['layer']} {e['component']} {format_percent(e['relative_change'])}"
                for e in ranked
            )
        )
        layers = report.ranked("relative_change", top, whole_layers=True)
        summary.append(
            "most changed layers: "
            + ", ".join(f"{e['layer']} ({format_percent(e['relative_change'])})" for e in layers)
        )
        if report.with_base:
            opposed = report.ranked("task_angle", top)
            summary.append(
                "task vectors most opposed: "
                + ", ".join(
                    f"layer {e['layer']} {e['component']} {e['task_angle']:.1f}°" for e in opposed
                )
            )
    return summary


def _layout_lines(report: InspectReport) -> list[str]:
    """Tensors found in one model only, missing in the base, or of other shapes (5 of each)."""
    lines = []
    for label, names in (
        ("only in A", report.only_in_a),
        ("only in B", report.only_in_b),
        ("missing in the base", report.missing_in_base),
    ):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            lines.append(f"{len(names)} tensor(s) {label}: {shown}")
    for mismatch in report.shape_mismatches[:5]:
        base = f", base {mismatch['base']}" if "base" in mismatch else ""
        lines.append(
            f"shape differs: {mismatch['name']} (A {mismatch['a']}, B {mismatch['b']}{base})"
        )
    return lines


def _config_table(report: InspectReport) -> Table:
    """The merge-relevant config keys that differ, their values and what that means."""
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
    return config


def _verdict(report: InspectReport) -> Text:
    """``plain merge possible: yes`` (or no, with the blockers), then the cautions."""
    verdict = Text("plain merge possible: ", style="bold")
    if report.plain_merge_possible:
        verdict.append("yes", style="bold green")
    else:
        verdict.append("no", style="bold red")
        for reason in report.merge_blockers:
            verdict.append(f"\n  - {reason}")
    for caution in report.merge_cautions:
        verdict.append(f"\n  but: {caution}; see the config differences", style="yellow")
    return verdict


def _vocabulary_table(vocabulary: dict[str, Any]) -> Table:
    """Rows, tokens, and the tokens each model has that the other lacks."""
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
