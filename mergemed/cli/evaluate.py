"""``mergemed evaluate``: score a model and its parents on lm-eval tasks (gain, forgetting)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mergemed.cli.render import console, stdout
from mergemed.errors import MergemedError


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
