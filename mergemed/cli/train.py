"""``mergemed train cpt|sft``: train the models that get merged."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import console

train_app = typer.Typer(help="Train the models that get merged (continual pretraining, SFT).")


@train_app.command("cpt")
def train_cpt(
    config: Annotated[Path, typer.Argument(help="Training config YAML (see configs/).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Continual pretraining: a base model -> a domain model, on a weighted mix of raw text."""
    from mergemed.train.cpt import train_cpt as run_training

    result = run_training(config, progress=not quiet)
    report = result.report
    mix = ", ".join(f"{name} {tokens:,}" for name, tokens in report["tokens_per_source"].items())
    console.print(
        f"[green]trained[/] {result.steps} steps in {result.seconds:.1f} s "
        f"({report['tokens_per_second']:,} tokens/s; tokens: {escape(mix)}; padding "
        f"{report['padding_waste']:.1%}) -> [bold]{escape(str(result.output))}[/]"
    )


@train_app.command("sft")
def train_sft(
    config: Annotated[Path, typer.Argument(help="Training config YAML (see configs/).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Instruction tuning: a base or CPT model -> an instruct model (completion-only loss)."""
    from mergemed.train.sft import train_sft as run_training

    result = run_training(config, progress=not quiet)
    report = result.report
    console.print(
        f"[green]trained[/] {result.steps} steps in {result.seconds:.1f} s "
        f"({report['train_examples']} examples, {report['completion_tokens']:,} completion "
        f"tokens, {report['dropped_too_long']} too long) -> [bold]{escape(str(result.output))}[/]"
    )
