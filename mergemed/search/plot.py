"""The Pareto scatter of a search: domain gain against forgetting, parents marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_front(board: dict[str, Any], path: Path) -> Path:
    """Write a PNG: every finished candidate, the front joined and labelled, the instruct
    parent at the origin (gain and forgetting are measured from it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in board["trials"] if r["domain_gain"] and r["forgetting"]]
    figure, axes = plt.subplots(figsize=(6, 4.5))
    xs = [r["forgetting"]["value"] for r in rows]
    ys = [r["domain_gain"]["value"] for r in rows]
    axes.scatter(xs, ys, c="0.6", label="candidates")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["forgetting"]["value"])
    if front:
        axes.plot(
            [r["forgetting"]["value"] for r in front],
            [r["domain_gain"]["value"] for r in front],
            "o-",
            c="tab:red",
            label="Pareto front",
        )
        for r in front:
            axes.annotate(str(r["trial"]), (r["forgetting"]["value"], r["domain_gain"]["value"]))
    axes.scatter([0], [0], marker="*", s=160, c="tab:blue", label="instruct parent")
    axes.set_xlabel("forgetting (I − M), lower is better")
    axes.set_ylabel("domain gain (M − I), higher is better")
    axes.set_title(board["study"])
    axes.legend(loc="best")
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=120)
    plt.close(figure)
    partial.replace(path)
    return path
