"""The Pareto scatter of a search (domain gain against forgetting, both parents marked) and,
beside it, the per-layer schedule of the chosen candidate."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def plot_front(board: dict[str, Any], path: Path, chosen: dict[str, Any] | None = None) -> Path:
    """Write a PNG: every settled candidate (those stopped early by multi-fidelity hollow), the
    front joined and labelled, the instruct parent at the origin (gain and forgetting are
    measured from it) and the clinical parent; with ``chosen`` (a leaderboard row), its
    per-layer schedule in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (axes, curve) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = [r for r in board["trials"] if r["domain_gain"]]
    two_d = all(r["forgetting"] for r in rows) and bool(rows)

    def x(row: dict[str, Any]) -> float:
        return row["forgetting"]["value"] if two_d else row["trial"]

    complete = [r for r in rows if r.get("stopped_at") is None]
    stopped = [r for r in rows if r.get("stopped_at") is not None]
    gains = [r["domain_gain"]["value"] for r in complete]
    axes.scatter([x(r) for r in complete], gains, c="0.55", label="candidates")
    if stopped:
        gains = [r["domain_gain"]["value"] for r in stopped]
        axes.scatter([x(r) for r in stopped], gains, facecolors="none", edgecolors="0.55",
                     label="stopped early (multi-fidelity)")  # fmt: skip
    front = sorted((r for r in rows if r["pareto"]), key=x)
    if front:
        axes.plot([x(r) for r in front], [r["domain_gain"]["value"] for r in front], "o-",
                  c="tab:red", label="Pareto front")  # fmt: skip
        for r in front:
            axes.annotate(str(r["trial"]), (x(r), r["domain_gain"]["value"]))
    if two_d:
        axes.scatter([0], [0], marker="*", s=160, c="tab:blue", label="instruct parent")
        clinical = board.get("clinical_parent") or {}
        if "domain_gain" in clinical and "forgetting" in clinical:
            axes.scatter([clinical["forgetting"]], [clinical["domain_gain"]], marker="P", s=120,
                         c="tab:green", label="clinical parent")  # fmt: skip
        axes.set_xlabel("forgetting (I − M), lower is better")
    else:
        axes.axhline(0, c="tab:blue", lw=0.8, label="instruct parent")
        axes.set_xlabel("trial")
    axes.set_ylabel("domain gain (M − I), higher is better")
    axes.set_title(board["study"])
    axes.legend(loc="best", fontsize=8)
    _plot_schedule(curve, chosen)
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=120)
    plt.close(figure)
    partial.replace(path)
    return path


def _plot_schedule(axis: Any, chosen: dict[str, Any] | None) -> None:
    """The chosen candidate's numeric parameters per layer, one line per component (through
    ``mergemed plan``; models that are not local are assumed to have the recipe's slice
    layers)."""
    from mergemed.errors import MergemedError
    from mergemed.plan import plan_recipe
    from mergemed.recipe import load_recipe

    if chosen is None or not chosen.get("recipe"):
        axis.set_axis_off()
        return
    try:
        table = plan_recipe(load_recipe(chosen["recipe"]))
    except MergemedError as error:
        axis.text(0.5, 0.5, f"no schedule: {error}"[:120], ha="center", wrap=True)
        axis.set_axis_off()
        return
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in table.rows:
        for column in table.columns:
            value = row.get(column)
            if row["layer"] is not None and isinstance(value, int | float):
                if not isinstance(value, bool):
                    lines[f"{column} {row['component']}"].append((row["layer"], float(value)))
    for name, points in lines.items():
        xs, ys = zip(*points, strict=True)
        axis.plot(xs, ys, marker="o", markersize=3, label=name)
    axis.set_xlabel("layer")
    axis.set_ylabel("parameter")
    axis.set_title(f"chosen: trial {chosen['trial']}")
    axis.grid(alpha=0.3)
    if lines:
        axis.legend(fontsize=7, ncol=2)
