"""``mergemed demo``: the whole pipeline on tiny models built locally, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mergemed.cli.render import console, stdout


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo builds its models.")] = Path(
        "mergemed-demo"
    ),
) -> None:
    """Build two tiny parents locally, plan and merge them, and generate from the result."""
    from mergemed.demo import run_demo

    report = run_demo(workdir, console=console)
    stdout.print(report)
