"""The training report (``training.json``) written next to a trained model: what it saw, how
fast, and the loss curves (training, and held-out per source) as a PNG."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def loss_curves(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """``{"train": [(step, loss)...], "held_out/<source>": [...]}`` from a Trainer's log."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = int(entry.get("step", 0))
        for key, value in entry.items():
            if key == "loss":
                curves.setdefault("train", []).append((step, float(value)))
            elif key == "eval_loss":
                curves.setdefault("held_out", []).append((step, float(value)))
            elif key.startswith("eval_") and key.endswith("_loss"):
                name = key.removeprefix("eval_").removesuffix("_loss")
                curves.setdefault(f"held_out/{name}", []).append((step, float(value)))
    return curves


def plot_losses(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    """Draw the loss curves (one line each) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4), dpi=120)
    for name, points in curves.items():
        if points:
            steps, losses = zip(*points, strict=True)
            style = "-" if name == "train" else "o--"
            axes.plot(steps, losses, style, label=name, alpha=0.4 if name == "train" else 1.0)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("training and held-out loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return path


def write_report(folder: Path, report: Mapping[str, Any]) -> Path:
    """Write ``training.json`` (and ``loss.png`` when there are losses) into ``folder``."""
    curves = report.get("loss_curves") or {}
    if curves:
        plot_losses(curves, folder / "loss.png")
    path = folder / "training.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
