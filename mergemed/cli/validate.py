"""``mergemed validate``: check a recipe or a training config without touching any model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import console, print_error


def validate(
    file: Annotated[Path, typer.Argument(help="Recipe or training config YAML.")],
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Also refuse parameters the method ignores."),
    ] = False,
) -> None:
    """Check a recipe or training config without touching any model or data.

    Prints FILE as mergemed reads it, every default spelled out, or every problem, one line
    each."""
    from mergemed.validation import validate_file

    checked = validate_file(file, strict=strict)
    if not checked.valid:
        for problem in checked.problems:
            print_error(problem)
        sys.exit(2)
    sys.stdout.write(checked.yaml or "")
    console.print(f"[green]valid[/] {checked.kind}: {escape(str(file))}", soft_wrap=True)
