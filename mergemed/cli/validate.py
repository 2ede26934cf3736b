"""``mergemed validate``: check a recipe without touching any model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import console, print_error


def validate(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")]) -> None:
    """Check RECIPE without touching any model; print it as mergemed reads it."""
    from mergemed.errors import RecipeError
    from mergemed.recipe import load_recipe

    try:
        loaded = load_recipe(recipe)
    except RecipeError as error:
        for problem in error.problems or [str(error)]:
            print_error(problem)
        sys.exit(2)
    sys.stdout.write(loaded.to_yaml())
    console.print(f"[green]valid[/]: {escape(str(recipe))}")
