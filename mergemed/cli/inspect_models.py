"""``mergemed inspect``: how far apart two checkpoints are, per layer and component."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import byte_progress, console, stdout
from mergemed.errors import InspectError


def inspect_models(
    model_a: Annotated[str, typer.Argument(help="First model: a folder or a Hub id.")],
    model_b: Annotated[str, typer.Argument(help="Second model; change is |A-B| / |B|.")],
    base: Annotated[
        str | None,
        typer.Option(help="Common ancestor C: adds the angle between task vectors A-C, B-C."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every number (per tensor too) here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a layers x components heatmap (PNG) here.")
    ] = None,
    metric: Annotated[
        str, typer.Option(help="Table cells: change (|A-B|/|B|), cosine, angle (needs --base).")
    ] = "change",
    top: Annotated[int, typer.Option(help="How many most-changed cells to list (0: none).")] = 5,
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow .bin/.pt weights (unpickling can run code).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Compare MODEL_A with MODEL_B per layer and component before merging them."""
    from mergemed.cli.inspect_render import check_table_metric, render_report
    from mergemed.compare import inspect_models, summary_line

    if top < 0:
        raise InspectError(f"--top {top}: expected 0 or more")
    table_metric = check_table_metric(metric, with_base=base is not None)
    with byte_progress("reading", quiet) as bar:
        task = bar.add_task("inspect", total=None, tensor="")
        report = inspect_models(
            model_a,
            model_b,
            base=base,
            json_path=json_path,
            plot_path=plot,
            allow_pickle=allow_pickle,
            on_start=lambda total: bar.update(task, total=total),
            progress=lambda read, tensor: bar.update(task, advance=read, tensor=tensor),
        )
    for renderable in render_report(report, table_metric, top):
        stdout.print(renderable)
    written = [str(path) for path in (json_path, plot) if path is not None]
    where = f" -> [bold]{escape(', '.join(written))}[/]" if written else ""
    console.print(f"[green]{escape(summary_line(report))}[/]{where}")
