"""Rich tables of an :class:`~mergemed.evaluation.runner.EvaluationReport` (the CLI prints
them; nothing here computes a score)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from mergemed.evaluation.scores import Score


def _cell(score: Score | None, signed: bool = False) -> str:
    if score is None:
        return "-"
    value = f"{score.value:+.3f}" if signed else f"{score.value:.3f}"
    return value if score.stderr is None else f"{value} ±{score.stderr:.3f}"


def _skip_notes(report: Any) -> Text | None:
    """One line per reason: which members (and how many of their tasks) were skipped, for
    which models."""
    grouped: dict[str, dict[str, dict[str, set[str]]]] = {}
    member_of = {task: m.name for m in report.members for task in m.tasks}
    for model in report.models:
        for task, reason in model.skipped.items():
            members = grouped.setdefault(reason, {})
            entry = members.setdefault(member_of.get(task, task), {"tasks": set(), "models": set()})
            entry["tasks"].add(task)
            entry["models"].add(model.label)
    if not grouped:
        return None
    everyone = {m.label for m in report.models}
    notes = Text()
    for reason, members in grouped.items():
        names = []
        models: set[str] = set()
        for member, entry in members.items():
            count = len(entry["tasks"])
            only = next(iter(entry["tasks"]))
            names.append(only if count == 1 else f"{member} ({count} tasks)")
            models |= entry["models"]
        who = "every model" if models == everyone else ", ".join(sorted(models))
        notes.append(f"skipped {', '.join(names)} for {who}: {reason}\n", style="yellow")
    return notes


def render_report(report: Any) -> list[Any]:
    """A per-task table (tasks × models, lm-eval's primary metric ± stderr) and, when parents
    were given, the summary figures."""
    labels = [m.label for m in report.models]
    roles = {m.label: m.role for m in report.models}
    table = Table(title="scores (primary metric ± stderr)")
    table.add_column("task")
    table.add_column("metric")
    for label in labels:
        table.add_column(f"{label}\n({roles[label]})", justify="right")
    for member in report.members:
        baseline = getattr(member, "baseline", None)
        for task in (*member.tasks, baseline) if baseline else member.tasks:
            scores = [m.score(task) for m in report.models]
            if all(s is None for s in scores):
                continue
            config = report.models[0].lm_eval.get("configs", {}).get(task) or {}
            metrics = config.get("metric_list") or [{}]
            metric = metrics[0].get("metric", "") if isinstance(metrics[0], dict) else ""
            table.add_row(task, str(metric), *[_cell(s) for s in scores])
    renderables: list[Any] = [table]

    trade = report.trade_off
    if trade.members and (trade.instruct or trade.clinical):
        summary = Table(title="what the merge gained and forgot")
        summary.add_column("member")
        summary.add_column("kind")
        for label in labels:
            summary.add_column(label, justify="right")
        summary.add_column("gain M−I · forgetting I−M · perplexity M−I", justify="right")
        summary.add_column("paired test")
        for member in trade.members:
            mark = "" if member.method != "independent" else " (indep.)"
            test = member.test or "-"
            if member.significant:
                test += " *"
            summary.add_row(
                member.name,
                member.kind,
                *[_cell(member.scores.get(label)) for label in labels],
                _cell(member.change, signed=True) + mark,
                test,
            )
        renderables.append(summary)
        lines = Text()
        for name, value, signed in (
            ("domain gain", trade.domain_gain, True),
            ("domain retention", trade.domain_retention, False),
            ("forgetting", trade.forgetting, True),
        ):
            if value is not None:
                key = name.replace(" ", "_")
                how = trade.methods.get(key)
                lines.append(
                    f"{name}: {_cell(value, signed)}" + (f"  ({how})" if how else "") + "\n"
                )
        if lines:
            renderables.append(lines)
    if getattr(report, "prompt_format", ""):
        renderables.append(Text(f"prompt format: {report.prompt_format}"))
    adapted: dict[tuple[str, str], list[str]] = {}
    for model in report.models:
        for task, note in getattr(model, "notes", {}).items():
            adapted.setdefault((task, note), []).append(model.label)
    if adapted:
        text = Text()
        for (task, note), labels_with in adapted.items():
            text.append(f"note: {task}: {note} ({', '.join(labels_with)})\n")
        renderables.append(text)
    notes = _skip_notes(report)
    if notes:
        renderables.append(notes)
    return renderables
