"""``mergemed import gguf``: turn a checkpoint of another format into a model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import byte_progress, console

import_app = typer.Typer(help="Turn a checkpoint of another format into a safetensors folder.")


@import_app.command("gguf")
def import_gguf(
    gguf_file: Annotated[Path, typer.Argument(help="The .gguf file (llama.cpp's format).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to create.")],
    dtype: Annotated[
        str, typer.Option(help="Written dtype: float32 (dequantized exactly), bfloat16, float16.")
    ] = "float32",
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard.")] = "5GB",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Dequantize GGUF_FILE into OUTPUT: safetensors weights, config, tokenizer, chat template."""
    from mergemed.io.gguf_import import import_gguf as run_import
    from mergemed.units import human_bytes

    with byte_progress("importing", quiet) as bar:
        task = bar.add_task("import", total=None, tensor="")

        def on_start(total: int) -> None:
            bar.update(task, total=total)

        def on_progress(written: int, tensor: str) -> None:
            bar.update(task, advance=written, tensor=tensor)

        result = run_import(
            gguf_file,
            output,
            dtype=dtype,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
            progress=on_progress,
            on_start=on_start,
        )
    storage = ", ".join(f"{count} {kind}" for kind, count in sorted(result.quantization.items()))
    tied = "tied to the embeddings (stored once)" if result.tied_embeddings else "stored"
    console.print(
        f"[green]imported[/] {result.tensors} tensors ({escape(storage)}) as "
        f"{result.model_class} {result.dtype} ({human_bytes(result.output_bytes)}, "
        f"{result.shards} shard(s)) in {result.seconds:.1f} s -> "
        f"[bold]{escape(str(result.output))}[/]",
        soft_wrap=True,
    )
    template = "included" if result.chat_template else "none in the file"
    console.print(f"lm_head: {tied}; chat template: {template}")
    if result.skipped:
        console.print(
            f"not imported (no transformers parameter): {escape(', '.join(result.skipped))}",
            soft_wrap=True,
        )
