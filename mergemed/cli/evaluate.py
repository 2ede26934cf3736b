"""``mergemed evaluate``: score a model and its parents on lm-eval tasks (gain, forgetting).

The evaluation options are made from :class:`~mergemed.evaluation.settings.EvalSettings` and
:class:`~mergemed.evaluation.settings.BackendSettings` (see :mod:`mergemed.cli.settings_options`);
only the model, its parents and where results go are declared here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mergemed.cli.render import console, stdout
from mergemed.cli.settings_options import with_options
from mergemed.evaluation.settings import BackendSettings, EvalSettings


def _evaluate(
    model: Annotated[
        str, typer.Argument(help="Model folder, or a recipe YAML (merged in memory).")
    ],
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            help="Parent to compare with: PATH (order: clinical, instruct) or ROLE=PATH.",
        ),
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Results store (default ~/.cache/mergemed).")
    ] = None,
    no_store: Annotated[
        bool, typer.Option("--no-store", help="Neither read nor write stored results.")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    **options: Any,
) -> None:
    """Score MODEL (and --against parents) on lm-eval tasks: domain gain and forgetting."""
    from mergemed.cli.evaluation_render import render_report
    from mergemed.evaluation import evaluate as run_evaluation
    from mergemed.evaluation.settings import eval_settings

    settings = eval_settings(**options)  # every bad value stops here, before any model loads

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
        settings,
        against=against or (),
        store=False if no_store else store,
        json_path=json_path,
        on_event=on_event,
    )
    for renderable in render_report(report):
        stdout.print(renderable)
    where = f" -> [bold]{escape(str(json_path))}[/]" if json_path else ""
    console.print(f"[green]evaluated[/] in {report.seconds:.1f} s{where}")


evaluate = with_options(_evaluate, EvalSettings, BackendSettings)
evaluate.__name__ = "evaluate"
