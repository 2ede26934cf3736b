"""All rich output of the command line: the two consoles, progress bars and tables.

Library code returns data; this module decides how it looks in a terminal. User text (paths,
tensor names, model names) is always escaped, so it is never read as rich markup.
"""

from __future__ import annotations

from typing import Any

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

console = Console(stderr=True, emoji=False)
"""Progress, summaries and errors (stderr)."""
stdout = Console(emoji=False)
"""Results a user may pipe on: tables, JSON, YAML (stdout)."""


def print_error(message: str) -> None:
    """Print ``error: MESSAGE`` on stderr as one line."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def byte_progress(label: str, quiet: bool) -> Progress:
    """A transient progress bar counting bytes, with the current tensor's name."""
    return Progress(
        TextColumn(f"[bold]{escape(label)}[/]"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[tensor]}", style="dim", markup=False),
        console=console,
        disable=quiet,
        transient=True,
    )


def format_value(value: Any) -> str:
    """A schedule value as a table cell: ``-`` for none, 4 significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plan_table(title: str, columns: list[str], rows: list[dict[str, Any]]) -> Table:
    """The per-layer, per-component table of ``mergemed plan``."""
    table = Table(title=escape(title), show_lines=False)
    table.add_column("layer", justify="right")
    table.add_column("component")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for row in rows:
        cells = ["-" if row["layer"] is None else str(row["layer"]), escape(row["component"])]
        cells += [format_value(row[c]) for c in columns]
        table.add_row(*cells)
    return table


def methods_table(methods: list[Any]) -> Table:
    """The table of ``mergemed methods``: name, base model, parameters, description."""
    table = Table(title="merge methods")
    for column in ("method", "base model", "parameters", "description"):
        table.add_column(column)
    for method in methods:
        parameters = ", ".join(
            f"{p.name}{'*' if p.required else '=' + str(p.default)}"
            + (" (per model)" if p.scope == "model" else "")
            for p in method.parameters
        )
        table.add_row(
            escape(method.name), method.base_model, escape(parameters), escape(method.description)
        )
    return table
