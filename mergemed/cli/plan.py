"""``mergemed plan``: the per-layer schedule a recipe resolves to, as a table, JSON and a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import console, plan_table, stdout


def plan(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    png: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the plot (default: <recipe name>.plan.png in the current folder)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    num_layers: Annotated[
        int | None, typer.Option(help="Layers to assume when the models are not available.")
    ] = None,
) -> None:
    """Show the per-layer, per-component weights RECIPE resolves to, and plot them; no merge."""
    from mergemed.plan import plan_recipe, plot_plan

    summary = plan_recipe(recipe, num_layers=num_layers)
    if as_json:
        stdout.print_json(json.dumps(summary.to_json()))
        return
    title = f"{recipe.name}: {summary.recipe.merge_method}"
    stdout.print(plan_table(title, summary.columns, summary.rows))
    if not summary.used_real_models:
        console.print(f"[yellow]models not found locally: assumed {summary.plan.num_layers} layers")
    picture = plot_plan(summary, png or Path.cwd() / f"{recipe.stem}.plan.png")
    console.print(f"plot -> [bold]{escape(str(picture))}[/]")
