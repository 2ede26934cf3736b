"""The ``mergemed`` command: one thin command per verb. Each parses its options, calls the
library function of the same name, and prints a rich summary. Errors are one line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from mergemed.errors import MergemedError

app = typer.Typer(
    name="mergemed",
    help="Adapt open LLMs to medicine by weight-space merging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
stdout = Console()


def main() -> None:
    """Console-script entry point: run the app, turning mergemed errors into one line."""
    try:
        app()
    except MergemedError as error:
        message = " ".join(str(error).split())  # always one line
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        sys.exit(130)


def _byte_progress(label: str, quiet: bool) -> Progress:
    """A transient progress bar counting bytes, with the current tensor's name."""
    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[tensor]}", style="dim"),
        console=console,
        disable=quiet,
        transient=True,
    )


@app.command()
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

    with _byte_progress("merging", quiet) as bar:
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
    template = result.report["sources"].get("chat_template")
    console.print(f"chat template: {escape(template) if template else 'none (no parent has one)'}")


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Argument(help="Model folder, or a recipe YAML (merged in memory).")
    ],
    suite: Annotated[
        list[str] | None, typer.Option("--suite", help="medical and/or forgetting (repeat).")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated lm-eval task, group or tag names.")
    ] = None,
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            help="Parent to compare with: PATH (order: clinical, instruct) or ROLE=PATH.",
        ),
    ] = None,
    backend: Annotated[str, typer.Option(help="hf (transformers) or vllm.")] = "hf",
    device: Annotated[str | None, typer.Option(help="cpu, cuda (default: cuda if any).")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
    batch_size: Annotated[
        str | None, typer.Option(help="Batch size or auto (default: auto on GPU, 8 on CPU).")
    ] = None,
    limit: Annotated[float | None, typer.Option(help="Examples per task.")] = None,
    num_fewshot: Annotated[int | None, typer.Option(help="Few-shot examples.")] = None,
    chat_template: Annotated[
        str, typer.Option(help="auto (when the tokenizer has one), on or off.")
    ] = "auto",
    gen_kwargs: Annotated[
        str | None, typer.Option(help="Generation settings, e.g. max_gen_toks=256.")
    ] = None,
    max_length: Annotated[int | None, typer.Option(help="Longest prompt + answer.")] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Folder of your own lm-eval tasks.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Local task data (see evaluations/README.md).")
    ] = None,
    tensor_parallel_size: Annotated[int, typer.Option(help="vLLM tensor parallelism.")] = 1,
    data_parallel_size: Annotated[int, typer.Option(help="vLLM data parallelism.")] = 1,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="vLLM's share of GPU (or CPU KV-cache) memory.")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Results store (default ~/.cache/mergemed).")
    ] = None,
    no_store: Annotated[
        bool, typer.Option("--no-store", help="Neither read nor write stored results.")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Run code shipped with the model (off by default).")
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow .bin/.pt weights (unpickling can run code).")
    ] = False,
) -> None:
    """Score MODEL (and --against parents) on lm-eval tasks: domain gain and forgetting."""
    from mergemed.evaluate import BackendSettings
    from mergemed.evaluate import evaluate as run_evaluation

    settings = BackendSettings(
        backend=backend,
        device=device,
        dtype=dtype,
        batch_size=_batch_size(batch_size),
        max_length=max_length,
        trust_remote_code=trust_remote_code,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
    )

    def on_event(event: str, details) -> None:
        label = escape(str(details.get("label", "")))
        if event == "model":
            cached = len(details["cached"])
            console.print(
                f"[bold]{label}[/]: {len(details['missing'])} task(s) to run"
                + (f", {cached} from the results store" if cached else "")
            )
        elif event == "task_start":
            console.print(f"  {escape(details['task'])} ...")
        elif event == "task_done":
            seconds = details["seconds"]
            console.print(f"  [green]done[/] {escape(details['task'])} in {seconds:.1f} s")

    report = run_evaluation(
        model,
        against=against or (),
        suites=suite or (),
        tasks=[t.strip() for t in (tasks or "").split(",") if t.strip()],
        backend=settings,
        limit=limit,
        num_fewshot=num_fewshot,
        chat_template=chat_template,
        gen_kwargs=gen_kwargs,
        include=include or (),
        data_dir=data_dir,
        store=False if no_store else store,
        json_path=json_path,
        allow_pickle=allow_pickle,
        on_event=on_event,
    )
    from mergemed.evaluate.report import render_report

    for renderable in render_report(report):
        stdout.print(renderable)
    where = f" -> [bold]{escape(str(json_path))}[/]" if json_path else ""
    console.print(f"[green]evaluated[/] in {report.seconds:.1f} s{where}")


def _batch_size(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise MergemedError(f"--batch-size {text}: expected a whole number or auto") from None
    if value < 1:
        raise MergemedError(f"--batch-size {text}: expected at least 1")
    return value


train_app = typer.Typer(help="Train the models that get merged (continual pretraining, SFT).")
app.add_typer(train_app, name="train")


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
        f"({report['tokens_per_second']:,} tokens/s; tokens: {mix}; padding "
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


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    png: Annotated[
        Path | None, typer.Option(help="Where to write the plot (default: <recipe>.plan.png).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    num_layers: Annotated[
        int | None, typer.Option(help="Layers to assume when the models are not available.")
    ] = None,
) -> None:
    """Show the per-layer, per-component weights RECIPE resolves to, and plot them; no merge."""
    from mergemed.plan import plan_recipe, plot_plan

    summary = plan_recipe(recipe, num_layers=num_layers)
    if as_json:
        stdout.print_json(json.dumps(summary.to_json()))
        return
    table = Table(title=f"{recipe.name}: {summary.recipe.merge_method}", show_lines=False)
    table.add_column("layer", justify="right")
    table.add_column("component")
    for column in summary.columns:
        table.add_column(column, justify="right")
    for row in summary.rows:
        cells = ["-" if row["layer"] is None else str(row["layer"]), row["component"]]
        cells += [_format_value(row[c]) for c in summary.columns]
        table.add_row(*cells)
    stdout.print(table)
    if not summary.used_real_models:
        console.print(f"[yellow]models not found locally: assumed {summary.plan.num_layers} layers")
    picture = plot_plan(summary, png or recipe.with_suffix(".plan.png"))
    console.print(f"plot -> [bold]{picture}[/]")


def _format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@app.command("inspect")
def inspect_command(
    model_a: Annotated[str, typer.Argument(help="First model: a folder or a Hub id.")],
    model_b: Annotated[str, typer.Argument(help="Second model; change is |A-B| / |B|.")],
    base: Annotated[
        str | None,
        typer.Option(help="Common ancestor C: adds the angle between task vectors A-C, B-C."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every number (per tensor too) here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a layers x components heatmap (PNG) here.")
    ] = None,
    metric: Annotated[
        str, typer.Option(help="Table cells: change (|A-B|/|B|), cosine, angle (needs --base).")
    ] = "change",
    top: Annotated[int, typer.Option(help="How many most-changed cells to list.")] = 5,
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow .bin/.pt weights (unpickling can run code).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Compare MODEL_A with MODEL_B per layer and component before merging them."""
    from mergemed.inspect import check_table_metric, inspect_models, render_report, summary_line

    table_metric = check_table_metric(metric, with_base=base is not None)
    with _byte_progress("reading", quiet) as bar:
        task = bar.add_task("inspect", total=None, tensor="")
        report = inspect_models(
            model_a,
            model_b,
            base=base,
            json_path=json_path,
            plot_path=plot,
            allow_pickle=allow_pickle,
            on_start=lambda total: bar.update(task, total=total),
            progress=lambda read, tensor: bar.update(task, advance=read, tensor=tensor),
        )
    for renderable in render_report(report, table_metric, top):
        stdout.print(renderable)
    written = [str(path) for path in (json_path, plot) if path is not None]
    where = f" -> [bold]{escape(', '.join(written))}[/]" if written else ""
    console.print(f"[green]{escape(summary_line(report))}[/]{where}")


@app.command()
def validate(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")]) -> None:
    """Check RECIPE without touching any model; print it as mergemed reads it."""
    from mergemed.errors import RecipeError
    from mergemed.recipe import load_recipe

    try:
        loaded = load_recipe(recipe)
    except RecipeError as error:
        for problem in error.problems or [str(error)]:
            console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    sys.stdout.write(loaded.to_yaml())
    console.print(f"[green]valid[/]: {recipe}")


@app.command()
def methods() -> None:
    """List the merge methods and their parameters."""
    from mergemed.methods import available_methods, get_method

    table = Table(title="merge methods")
    for column in ("method", "base model", "parameters", "description"):
        table.add_column(column)
    for name in available_methods():
        method = get_method(name)
        parameters = ", ".join(
            f"{p.name}{'*' if p.required else '=' + str(p.default)}"
            + (" (per model)" if p.scope == "model" else "")
            for p in method.parameters
        )
        table.add_row(name, method.base_model, parameters, method.description)
    stdout.print(table)
    stdout.print("* required")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo builds its models.")] = Path(
        "mergemed-demo"
    ),
) -> None:
    """Build two tiny parents locally, plan and merge them, and generate from the result."""
    from mergemed.demo import run_demo

    report = run_demo(workdir, console=console)
    stdout.print(report)


if __name__ == "__main__":  # pragma: no cover
    main()
