"""``mergemed grid``: search merge schedules (``grid SPACE``), show a run (``grid show RUN``),
export its best candidates (``grid export RUN --top K -o DIR``).

``mergemed grid SPACE.yaml`` is short for ``mergemed grid run SPACE.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from mergemed.cli.render import console, stdout


class _RunByDefault(TyperGroup):
    """A group whose first argument, when it is not a subcommand, is ``run``'s."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


grid_app = typer.Typer(
    cls=_RunByDefault,
    help="Search merge schedules for the best domain gain for the least forgetting.",
    no_args_is_help=True,
)


@grid_app.command("run")
def run(
    space: Annotated[Path, typer.Argument(help="Search space YAML.")],
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run folder (default runs/<space name>).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL shared by workers (default: SQLite in the run folder); "
            "a password comes from $MERGEMED_STORAGE_PASSWORD or $PGPASSWORD."
        ),
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Finished trials to reach.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Run more than max_trials.")] = False,
    max_trials: Annotated[
        int | None,
        typer.Option("--max-trials", help="Refuse more trials than this without --yes."),
    ] = None,
    device: Annotated[str, typer.Option(help="Where candidates are merged.")] = "cpu",
) -> None:
    """Run (or continue) the search in SPACE until it has its trials."""
    import time

    from mergemed.search.study import leaderboard, run_search

    started = time.time()

    def on_trial(record: dict[str, Any]) -> None:
        if record.get("stopped_at") is not None:
            outcome = (
                f"stopped at {record['stopped_at']} documents "
                f"(trial {record['beaten_by']} is better)"
            )
        else:
            outcome = ", ".join(f"{v:+.4f}" for v in record["values"] or [])
        console.print(f"trial {record['number']}: {escape(str(record['choice']))} -> {outcome}")

    result = run_search(
        space,
        run_dir,
        storage=storage,
        trials=trials,
        yes=yes,
        max_trials=max_trials,
        device=device,
        on_trial=on_trial,
    )
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    board = leaderboard(result)
    _print_board(board)
    console.print(
        f"{len(board['trials'])} finished trials in {result.folder} "
        f"(storage {escape(result.shown_storage)}), {time.time() - started:.1f} s"
    )


@grid_app.command("show")
def show(
    run_dir: Annotated[Path, typer.Argument(help="A search's run folder.")],
    sort: Annotated[
        str,
        typer.Option(help="Sort by rank (Pareto front first), domain_gain, forgetting or value."),
    ] = "rank",
) -> None:
    """Print a search's leaderboard and Pareto front; write pareto.json and pareto.png (also
    while the search runs)."""
    from mergemed.search.export import ranked_trials
    from mergemed.search.plot import plot_front
    from mergemed.search.study import leaderboard, reopen_run

    run = reopen_run(run_dir)
    board = leaderboard(run)
    _print_board(board, sort)
    front = [row for row in board["trials"] if row["pareto"]]
    (run.folder / "pareto.json").write_text(json.dumps(front, indent=2) + "\n")
    ranked = ranked_trials(board)
    picture = plot_front(board, run.folder / "pareto.png", ranked[0] if ranked else None)
    console.print(f"Pareto front: {run.folder / 'pareto.json'}, {picture}")


@grid_app.command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A search's run folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the checkpoints.")],
    top: Annotated[int, typer.Option(help="How many of the best candidates.")] = 1,
    sort: Annotated[
        str, typer.Option(help="What best means: rank, domain_gain, forgetting or value.")
    ] = "rank",
    device: Annotated[str, typer.Option(help="Where the merges run.")] = "cpu",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing folders.")
    ] = False,
) -> None:
    """Merge the best candidates of a search to full checkpoints (with their recipes)."""
    import time

    from mergemed.search.export import export_candidates
    from mergemed.search.study import reopen_run

    started = time.time()

    def on_start(row: dict[str, Any], folder: Path) -> None:
        console.print(f"trial {row['trial']} -> {escape(str(folder))}")

    written = export_candidates(
        reopen_run(run_dir),
        output,
        top=top,
        sort=sort,
        device=device,
        overwrite=overwrite,
        on_start=on_start,
    )
    console.print(
        f"exported {len(written)} candidates to {escape(str(Path(output).absolute()))} "
        f"(export.json lists them), {time.time() - started:.1f} s"
    )


def _value(figure: dict[str, Any] | None) -> str:
    if not figure:
        return "-"
    stderr = figure.get("stderr")
    return f"{figure['value']:+.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def board_table(board: dict[str, Any], sort: str = "rank") -> Table:
    """A search's leaderboard as a rich table, best first (see ``ranked_trials``)."""
    from mergemed.search.export import ranked_trials

    rows = ranked_trials(board, sort)
    table = Table(title=f"search {board['study']}")
    for column in (
        "trial",
        "candidate",
        "domain gain",
        "forgetting",
        "Pareto",
        "documents",
        "merge s",
        "score s",
    ):
        table.add_column(column, justify="right" if column != "candidate" else "left")
    for row in rows:
        table.add_row(
            str(row["trial"]),
            escape(", ".join(f"{k}={v}" for k, v in (row["choice"] or {}).items())),
            _value(row["domain_gain"]),
            _value(row["forgetting"]),
            "*" if row["pareto"] else "",
            _documents(row),
            f"{row['merge_seconds'] or 0:.1f}",
            f"{row['evaluate_seconds'] or 0:.1f}",
        )
    return table


def _print_board(board: dict[str, Any], sort: str = "rank") -> None:
    stdout.print(board_table(board, sort))
    cost = board.get("cost") or {}
    if cost.get("saved") is not None and cost["documents"] != cost["documents_without_fidelity"]:
        console.print(
            f"multi-fidelity: {cost['documents']} documents scored against "
            f"{cost['documents_without_fidelity']} on full samples ({share(cost['saved'])})"
        )


def _documents(row: dict[str, Any]) -> str:
    scored = str(row.get("documents") or "-")
    if row.get("stopped_at") is not None:
        return f"{scored} (stopped at {row['stopped_at']}: trial {row['beaten_by']} better)"
    return scored


def share(saved: float) -> str:
    """``25% saved`` or, when rungs cost more than they stopped, ``25% more``."""
    return f"{saved:.0%} saved" if saved >= 0 else f"{-saved:.0%} more"
