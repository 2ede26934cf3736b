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
    """Train two tiny parents (CPT, SFT), search SLERP schedules between them, evaluate the
    best against both and write its model card: the whole workflow in a few minutes."""
    from mergemed.demo import run_demo

    result = run_demo(workdir, console=console)
    stdout.print(result.summary(), markup=False, highlight=False)
