"""The layers x components heatmap of an inspect report, as a PNG (matplotlib, loaded on use)."""

from __future__ import annotations

from pathlib import Path

from mergemed.compare.report import InspectReport, format_percent
from mergemed.errors import OutputError


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
        f"{component} {format_percent(cell.get('relative_change'))}"
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
