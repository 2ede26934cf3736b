"""``mergemed card``: write a merged folder's model card (README.md) and preview it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import console


def card(
    folder: Annotated[Path, typer.Argument(help="A merged folder (it holds merge.json).")],
    evaluation: Annotated[
        Path | None,
        typer.Option("--eval", help="Results of `mergemed evaluate --json` for this model."),
    ] = None,
    search: Annotated[
        Path | None, typer.Option("--search", help="A `mergemed grid export` leaderboard JSON.")
    ] = None,
    license: Annotated[
        str | None, typer.Option("--license", help="Licence to declare (default: the parents').")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name on the card.")] = None,
) -> None:
    """Write FOLDER/README.md, the model card, and print its first lines.

    The card holds the Hub metadata, recipe, schedule, evaluation (or "not evaluated"), how to
    reproduce the merge and its limitations."""
    from mergemed.publish import write_card

    path, decision = write_card(
        folder, evaluation=evaluation, search=search, licence=license, model_name=name
    )
    preview = path.read_text().splitlines()[:40]
    console.print(escape("\n".join(preview)), highlight=False)
    console.print(f"...\n[green]card[/] -> {escape(str(path))}", soft_wrap=True)
    if decision.licence is None:
        console.print(
            f"[yellow]licence not decided[/]: {escape(decision.reason)}; `mergemed publish` "
            "refuses until the card is made with --license",
            soft_wrap=True,
        )
