"""``mergemed merge``: stream a recipe's models into a new model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import byte_progress, console


def merge(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (mergekit YAML works as is).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to create.")],
    device: Annotated[str, typer.Option(help="Where the arithmetic runs: cpu, cuda.")] = "cpu",
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard.")] = "5GB",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow .bin/.pt inputs (unpickling can run code).")
    ] = False,
    hash_inputs: Annotated[
        bool, typer.Option(help="Record the SHA-256 of every input file in merge.json.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Merge the models of RECIPE into OUTPUT, streaming one tensor at a time."""
    from mergemed.engine import merge as run_merge
    from mergemed.units import human_bytes

    with byte_progress("merging", quiet) as bar:
        task = bar.add_task("merge", total=None, tensor="")

        def on_start(total: int, done: int) -> None:
            bar.update(task, total=total, completed=done)

        def on_progress(written: int, tensor: str) -> None:
            bar.update(task, advance=written, tensor=tensor)

        result = run_merge(
            recipe,
            output,
            device=device,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            allow_pickle=allow_pickle,
            hash_inputs=hash_inputs,
            progress=on_progress,
            on_start=on_start,
        )
    resumed = (
        f", resumed {result.resumed_shards} finished shard(s)" if result.resumed_shards else ""
    )
    console.print(
        f"[green]merged[/] {result.tensors} tensors ({human_bytes(result.output_bytes)}, "
        f"{result.shards} shard(s)) in {result.seconds:.1f} s{resumed} -> "
        f"[bold]{escape(str(result.output))}[/]"
    )
    vocabulary = result.report.get("vocabulary", {})
    if vocabulary.get("aligned"):
        added = sum(entry["count"] for entry in vocabulary["added"].values())
        console.print(
            f"vocabulary: {escape(vocabulary['source'])}, {vocabulary['tokens']} tokens "
            f"({added} added), {vocabulary['rows']} rows; filled rows per parent in merge.json"
        )
    if ignored := result.report.get("ignored_parameters"):
        console.print(
            f"[yellow]warning:[/] {result.report['merge_method']} does not use "
            f"{escape(', '.join(ignored))}: ignored, as mergekit does (recorded in merge.json)",
            soft_wrap=True,
        )
    template = result.report["sources"].get("chat_template")
    console.print(f"chat template: {escape(template) if template else 'none (no parent has one)'}")
