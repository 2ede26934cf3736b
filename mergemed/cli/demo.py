"""``mergemed demo``: the whole workflow on tiny models built locally, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mergemed.cli.render import console, stdout


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(
        "demo_out"
    ),
) -> None:
    """Run the whole workflow on tiny local models in a few minutes, offline.

    Trains two tiny parents (CPT, SFT), searches SLERP schedules between them, evaluates the
    best against both and writes its model card."""
    from mergemed.demo import run_demo

    result = run_demo(workdir, console=console)
    stdout.print(result.summary(), markup=False, highlight=False)
