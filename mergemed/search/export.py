"""Write a search's chosen candidates as full checkpoints, through the engine."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergemed.search.space import SearchError
from mergemed.search.storage import SearchRun
from mergemed.search.study import leaderboard

SORTS = ("rank", "domain_gain", "forgetting", "value")


def ranked_trials(board: dict[str, Any], sort: str = "rank") -> list[dict[str, Any]]:
    """The leaderboard's trials, best first.

    ``rank``: the Pareto front first (by domain gain), then the rest by domain gain;
    ``domain_gain`` highest first; ``forgetting`` lowest first; ``value`` the first objective
    value (the weighted score for a single-objective search), highest first.

    Raises:
        SearchError: an unknown ``sort``.
    """
    if sort not in SORTS:
        raise SearchError(f"--sort {sort}: expected one of {', '.join(SORTS)}")

    def figure(row: dict[str, Any], name: str) -> float:
        value = (row.get(name) or {}).get("value")
        return float("nan") if value is None else value

    def key(row: dict[str, Any]) -> tuple:
        gain, forgetting = figure(row, "domain_gain"), figure(row, "forgetting")
        if sort == "rank":
            return (not row["pareto"], -gain, forgetting, row["trial"])
        if sort == "domain_gain":
            return (-gain, row["trial"])
        if sort == "forgetting":
            return (forgetting, row["trial"])
        return (-(row["values"] or [float("-inf")])[0], row["trial"])

    return sorted(board["trials"], key=key)


def export_candidates(
    run: SearchRun,
    output: str | Path,
    *,
    top: int = 1,
    sort: str = "rank",
    device: str = "cpu",
    overwrite: bool = False,
    on_start: Callable[[dict[str, Any], Path], None] | None = None,
) -> list[Path]:
    """Merge the ``top`` best finished candidates to ``output/trial-<n>/`` with the engine
    (each folder gets its ``recipe.yaml`` and ``merge.json`` as any merge does) and write
    ``output/export.json`` listing them with their scores.

    Raises:
        SearchError: no finished trial, ``top`` below 1, an unknown ``sort``.
        MergemedError: from the engine (an existing folder without ``overwrite``...).
    """
    from mergemed.engine import merge
    from mergemed.recipe import load_recipe

    if top < 1:
        raise SearchError(f"--top {top}: expected at least 1")
    board = leaderboard(run)
    chosen = ranked_trials(board, sort)[:top]
    if not chosen:
        raise SearchError(f"{run.folder}: no finished trial to export yet")
    output = Path(output).expanduser().absolute()
    written = []
    for row in chosen:
        folder = output / f"trial-{row['trial']}"
        if on_start is not None:
            on_start(row, folder)
        output.mkdir(parents=True, exist_ok=True)
        merge(load_recipe(row["recipe"]), folder, device=device, overwrite=overwrite)
        written.append(folder)
    listing = [
        {
            key: row[key]
            for key in ("trial", "choice", "domain_gain", "forgetting", "values", "pareto")
        }
        | {"folder": str(folder)}
        for row, folder in zip(chosen, written, strict=True)
    ]
    partial = output / ".export.json.partial"
    partial.write_text(json.dumps({"study": board["study"], "exported": listing}, indent=2) + "\n")
    partial.replace(output / "export.json")
    return written
