"""``mergemed train cpt|sft``: train the models that get merged.

The same command runs as one process or as each of N workers that ``torchrun`` or
``accelerate launch`` start; only worker 0 shows progress and the summary, and ``--quiet``
(like every other worker) silences the libraries' progress bars, log lines and warnings.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mergemed.cli.render import console
from mergemed.train.workers import launched_rank, single_process_launch_note

train_app = typer.Typer(help="Train the models that get merged (continual pretraining, SFT).")

QUIET_HELP = "No progress bar, log lines or library warnings: only the summary (or the error)."


def _stop_on_sigterm() -> None:
    """Take SIGTERM (a scheduler's stop, or the launcher stopping the workers after one
    failed) as Ctrl-C: the working folder is kept to resume, or removed before the first
    checkpoint. Only the first counts; the stop is under way."""

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _silence_libraries() -> None:
    """No progress bars, log lines or warnings from torch, transformers, datasets or trl."""
    import warnings

    warnings.simplefilter("ignore")
    os.environ.update(
        TRANSFORMERS_VERBOSITY="error",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        DATASETS_VERBOSITY="error",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TORCH_CPP_LOG_LEVEL="ERROR",
    )
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _start(quiet: bool) -> bool:
    """Prepare this process for training; whether it shows progress."""
    _stop_on_sigterm()
    main_worker = launched_rank() == 0
    if quiet or not main_worker:
        _silence_libraries()
    note = single_process_launch_note()
    if note and main_worker and not quiet:
        console.print(f"[yellow]note:[/] {escape(note)}")
    return main_worker and not quiet


def _workers(report: dict[str, Any]) -> str:
    count = report.get("world_size", 1)
    return f" on {count} workers" if count > 1 else ""


@train_app.command("cpt")
def train_cpt(
    config: Annotated[Path, typer.Argument(help="Training config YAML (see configs/).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Continual pretraining: a base model -> a domain model, on a weighted mix of raw text."""
    progress = _start(quiet)
    from mergemed.train.cpt import train_cpt as run_training

    result = run_training(config, progress=progress)
    if launched_rank() != 0:
        return
    report = result.report
    mix = ", ".join(f"{name} {tokens:,}" for name, tokens in report["tokens_per_source"].items())
    console.print(
        f"[green]trained[/] {result.steps} steps{_workers(report)} in {result.seconds:.1f} s "
        f"({report['tokens_per_second']:,} tokens/s; tokens: {escape(mix)}; padding "
        f"{report['padding_waste']:.1%}) -> [bold]{escape(str(result.output))}[/]",
        soft_wrap=True,
    )


@train_app.command("sft")
def train_sft(
    config: Annotated[Path, typer.Argument(help="Training config YAML (see configs/).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Instruction tuning: a base or CPT model -> an instruct model (completion-only loss)."""
    progress = _start(quiet)
    from mergemed.train.sft import train_sft as run_training

    result = run_training(config, progress=progress)
    if launched_rank() != 0:
        return
    report = result.report
    console.print(
        f"[green]trained[/] {result.steps} steps{_workers(report)} in {result.seconds:.1f} s "
        f"({report['train_examples']} examples, {report['completion_tokens']:,} completion "
        f"tokens, {report['dropped_too_long']} too long) -> [bold]{escape(str(result.output))}[/]",
        soft_wrap=True,
    )
