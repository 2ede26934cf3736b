"""``mergemed publish``: check a merged folder and upload it to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import console
from mergemed.units import human_bytes


def publish(
    folder: Annotated[Path, typer.Argument(help="A merged folder with its model card.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="namespace/name on the Hub.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and list what would go up; upload nothing.")
    ] = False,
) -> None:
    """Check FOLDER, then upload it to the Hugging Face Hub.

    Checked first: safetensors only, loads in transformers, tokenizer and chat template, card
    and licence, no token-like strings."""
    from mergemed.publish import publish as publish_folder

    plan = publish_folder(folder, repo_id, private=private, dry_run=dry_run)
    for name, size in plan.files.items():
        console.print(f"  {escape(name)}  {human_bytes(size)}", highlight=False)
    what = "would upload" if dry_run else "uploaded"
    console.print(
        f"[green]{what}[/] {len(plan.files)} files ({human_bytes(plan.total_bytes)}) to "
        f"{escape(repo_id)}{' (private)' if private else ''}, licence {escape(plan.licence)}",
        soft_wrap=True,
    )
