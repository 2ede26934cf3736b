"""The study's report: ``results.json``, ``pareto.png`` and ``RESULTS.md`` from what the stages
left in the work folder (evaluation JSONs, training reports, the grid's leaderboard)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from design import HEADLINE_TASK, headline_family, headline_groups
from findings import findings, headline_findings, score_text

MEMBERS = {
    "mm_pubmedqa": ("PubMedQA acc", "higher"),
    "ifeval_med": ("ifeval_med strict", "higher"),
    "ifeval_general": ("ifeval_general strict", "higher"),
    "pubmedqa_longctx": ("long-context drop", "higher"),
    "general_ppl": ("general word ppl", "lower"),
    "pubmedqa_ppl": ("medical word ppl", "lower"),
}
"""Member -> (column title, which way is better)."""
PACKAGES = ("mergemed", "torch", "transformers", "lm_eval", "gguf", "trl", "optuna")


def _version(package: str) -> str:
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "not installed"


def collect(
    study: Any, plan: list[dict[str, Any]], path_of: Callable[[str], Path] | None = None
) -> list[dict[str, Any]]:
    """One row per model: its scores per member and its change from the instruct parent
    (M − I, paired where the documents are shared), over every evaluation call of it (the
    files ``path_of(name)``, by default the main evaluation's)."""
    rows = []
    for entry in plan:
        data = json.loads((path_of or study.eval_path)(entry["name"]).read_text())
        row: dict[str, Any] = {**entry, "scores": {}, "changes": {}, "skipped": {}, "extra": {}}
        row["sizes"] = {}
        row["domain_gain"] = row["forgetting"] = None
        for call in data["calls"]:
            summary = call["summary"]
            label = summary["merged"]
            for member in summary["per_task"]:
                name = member["task"]
                row["scores"][name] = member["scores"].get(label)
                change = member.get("gain") or member.get("change") or member.get("forgetting")
                if entry["kind"] != "parent" and change is not None:
                    flip = -1 if "forgetting" in member else 1  # forgetting is I − M; show M − I
                    row["changes"][name] = {
                        "value": flip * change["value"] + 0.0,  # no "-0.000"
                        "stderr": change["stderr"],
                        "method": member["method"],
                        "test": member["test"],
                        "significant": member["significant"],
                    }
            model = call["models"][label]
            row["skipped"].update(model["skipped_tasks"])
            for task, counts in model["lm_eval"].get("n-samples", {}).items():
                row["sizes"][task] = counts.get("effective", counts.get("original"))
            results = model["lm_eval"].get("results", {})
            for task in ("ifeval_med", "ifeval_general"):
                value = results.get(task, {}).get("inst_level_strict_acc,none")
                if isinstance(value, (int, float)):
                    row["extra"][f"{task} instruction-level"] = value
            row["domain_gain"] = row["domain_gain"] or summary.get("domain_gain")
            row["forgetting"] = row["forgetting"] or summary.get("forgetting")
        row["task_seconds"] = data["study"].get("task_seconds", {})
        row["stored_tasks"] = data["study"].get("stored_tasks", [])
        rows.append(row)
    return rows


def _change_cell(change: dict[str, Any] | None, digits: int = 3) -> str:
    if change is None:
        return "–"
    text = f"{change['value']:+.{digits}f}"
    if change.get("stderr") is not None:
        text += f" ± {change['stderr']:.{digits}f}"
    if change.get("significant"):
        text += " *"
    return text


def _relative_cell(score: dict[str, Any] | None, reference: dict[str, Any] | None) -> str:
    """A perplexity's change from the instruct parent's, in percent of it."""
    if not score or not reference or not reference.get("value"):
        return "–"
    return f"{100 * (score['value'] - reference['value']) / reference['value']:+.1f}%"


def _members(rows: list[dict[str, Any]]) -> list[str]:
    present = {name for row in rows for name in row["scores"]}
    return [name for name in MEMBERS if name in present]


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Domain gain against forgetting (both from the instruct parent, with stderr bars), the
    Pareto front joined; beside it the medical-perplexity change against forgetting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mergemed.search.pareto import pareto_front

    colours = {"parent": "tab:blue", "cpt": "tab:red", "slerp": "tab:orange"}
    colours.update({"definemed": "tab:green", "ties": "tab:purple"})
    markers = {None: "*", "0:1": "o", "1:1": "s", "9:1": "^"}
    placed = [r for r in rows if r["kind"] == "parent" or (r["domain_gain"] and r["forgetting"])]
    figure, panels = plt.subplots(1, 2, figsize=(13, 5))

    def point(row: dict[str, Any]) -> tuple[float, float, float, float]:
        if row["kind"] == "parent":
            return 0.0, 0.0, 0.0, 0.0
        gain, forgetting = row["domain_gain"], row["forgetting"]
        return forgetting["value"], gain["value"], forgetting["stderr"] or 0, gain["stderr"] or 0

    for row in placed:
        x, y, dx, dy = point(row)
        panels[0].errorbar(
            x,
            y,
            xerr=dx,
            yerr=dy,
            fmt=markers[row.get("ratio")],
            color=colours[row["kind"]],
            alpha=0.8,
            ms=7,
        )
        panels[0].annotate(
            row["name"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    points = [point(row)[:2] for row in placed]
    front = sorted((points[i] for i in pareto_front(points, [False, True])), key=lambda p: p[0])
    panels[0].plot(
        [p[0] for p in front], [p[1] for p in front], "-", c="0.3", lw=1, label="Pareto front"
    )
    panels[0].set_xlabel("forgetting: instruct − model, mean of general members (lower is better)")
    panels[0].set_ylabel("domain gain: model − instruct, PubMedQA acc (higher is better)")
    panels[0].axhline(0, c="0.8", lw=0.6)
    panels[0].axvline(0, c="0.8", lw=0.6)
    for kind, colour in colours.items():
        panels[0].plot([], [], "o", c=colour, label=kind)
    for ratio, marker in markers.items():
        if ratio:
            panels[0].plot([], [], marker, c="0.5", label=f"general:medical {ratio}")
    panels[0].legend(fontsize=7, loc="best")
    medical = [r for r in placed if (r["scores"].get("pubmedqa_ppl") or {}).get("value")]
    base = next((r for r in rows if r["kind"] == "parent"), None)
    reference = ((base or {}).get("scores", {}).get("pubmedqa_ppl") or {}).get("value")
    if medical and reference:
        for row in medical:
            x = point(row)[0]
            y = 100 * (reference - row["scores"]["pubmedqa_ppl"]["value"]) / reference
            panels[1].plot(x, y, markers[row.get("ratio")], color=colours[row["kind"]], ms=7)
            panels[1].annotate(
                row["name"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        panels[1].set_ylabel("medical perplexity reduction from instruct, % (higher is better)")
    panels[1].set_xlabel("forgetting (as left)")
    panels[1].axhline(0, c="0.8", lw=0.6)
    figure.suptitle(
        "SmolLM2-135M-Instruct: continual pretraining on PubMedQA text, then merging back"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _machine() -> dict[str, Any]:
    import psutil
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_report": [round(x, 2) for x in os.getloadavg()],
        "gpu": gpu,
    }


def write_results(study: Any, plan: list[dict[str, Any]]) -> Path:
    """Write results.json, pareto.png, RESULTS.md (and copies of the configs, recipes and the
    grid's space and front) into the results folder; returns RESULTS.md."""
    out = study.results
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(study, plan)
    family = headline_family(study.settings)
    headline = (
        collect(study, family, study.headline_path)
        if family and all(study.headline_path(e["name"]).is_file() for e in family)
        else []
    )
    for kind in ("configs", "recipes", "search"):
        if (study.work / kind).is_dir():
            shutil.copytree(study.work / kind, out / kind, dirs_exist_ok=True)
    board_path = study.grid_dir() / "leaderboard.json"
    board = json.loads(board_path.read_text()) if board_path.is_file() else None
    if (study.grid_dir() / "pareto.png").is_file():
        shutil.copy(study.grid_dir() / "pareto.png", out / "grid_pareto.png")
    plot(rows, out / "pareto.png")
    training = {}
    for entry in plan:
        report = study.work / "models" / entry["name"] / "training.json"
        if entry["kind"] == "cpt" and report.is_file():
            training[entry["name"]] = json.loads(report.read_text())
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(study.settings).items()
    }
    facts = {
        "settings": settings,
        "machine": _machine(),
        "versions": {p: _version(p) for p in PACKAGES},
        "timings_seconds": study.timings,
        "stored_results": _stored_results({"evaluate": rows, "headline": headline}),
        "models": rows,
        "headline": {"task": HEADLINE_TASK, "models": headline},
        "training": {name: _training_facts(report) for name, report in training.items()},
        "grid": board,
        "prompt_format": _prompt_format(study),
    }
    (out / "results.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    path = out / "RESULTS.md"
    path.write_text(render(study, facts))
    return path


def _stored_results(stages: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The task results the evaluation stages read from the store instead of computing them:
    how many, of how many, and the scoring seconds the store recorded when they were computed
    (an earlier run of the work folder; the stages' own times leave them out), per stage."""
    seconds: dict[str, float] = {}
    untimed = count = total = 0
    for stage, rows in stages.items():
        seconds[stage] = 0.0
        for row in rows:
            total += len(row["task_seconds"])
            for task in row["stored_tasks"]:
                count += 1
                spent = row["task_seconds"].get(f"{row['name']}/{task}")
                if spent is None:
                    untimed += 1
                else:
                    seconds[stage] += spent
    return {
        "count": count,
        "of": total,
        "seconds": round(sum(seconds.values()), 1),
        "seconds_by_stage": {stage: round(value, 1) for stage, value in seconds.items()},
        "untimed": untimed,
    }


def _compute_seconds(facts: dict[str, Any]) -> float:
    """The stages' own times plus the scoring time of results read from the store: what a
    run from an empty work folder would have taken."""
    return sum(facts["timings_seconds"].values()) + facts["stored_results"]["seconds"]


def _prompt_format(study: Any) -> str:
    """How the instruct parent's evaluation formatted prompts (the same for every model)."""
    calls = json.loads(study.eval_path("instruct").read_text())["calls"]
    return "; ".join(dict.fromkeys(call.get("prompt_format", "") for call in calls))


def _training_facts(report: dict[str, Any]) -> dict[str, Any]:
    """A CPT run's report without its curves, with the last held-out loss per source."""
    facts = {key: value for key, value in report.items() if key != "loss_curves"}
    curves = report.get("loss_curves", {})
    facts["held_out"] = {k: c[-1][1] for k, c in curves.items() if k.startswith("held_out") and c}
    return facts


def render(study: Any, facts: dict[str, Any]) -> str:
    rows, s = facts["models"], study.settings
    headline = facts["headline"]["models"]
    members = _members(rows)
    total = _compute_seconds(facts)
    lines = ["# SmolLM2-135M-Instruct x PubMedQA: forgetting after CPT, recovery by merging", ""]

    def documents(limit: float | None) -> str:
        return "all" if limit is None else f"{limit:g}"

    lines += [
        f"Documents per task: PubMedQA {documents(s.pubmedqa_limit)} of 500, the other tasks "
        f"{documents(s.limit)} (a seeded, label-stratified sample, the same for every model)"
        + (
            f"; the headline `{HEADLINE_TASK}`, {documents(s.headline_limit)} of 200 prompts, "
            f"for CPT {s.grid_ratio} and its merges. "
            if headline
            else ". "
        )
        + f"CPT budget {s.cpt_tokens:,} tokens per model ({s.cpt_steps} steps of "
        f"{s.tokens_per_step:,} tokens, learning rate {s.learning_rate:g}); "
        f"wall time {total / 3600:.2f} h on {facts['machine']['cpu_cores']} CPU cores "
        f"(GPU: {facts['machine']['gpu']}).",
        "",
        *_departure_lines(s),
        "## What the numbers show, and what they do not",
        "",
        *headline_findings(headline, s, HEADLINE_TASK),
        *findings(rows, s),
        "",
        *_headline_section(headline, s),
        "## Every model (value ± stderr over documents)",
        "",
        "| model | " + " | ".join(MEMBERS[m][0] for m in members) + " |",
        "|---|" + "---|" * len(members),
    ]
    extras = sorted({name for row in rows for name in row["extra"]})
    lines[-2] += "".join(f" {name} |" for name in extras)
    lines[-1] += "---|" * len(extras)
    for row in rows:
        cells = [score_text(row["scores"].get(m), 2 if m.endswith("ppl") else 3) for m in members]
        cells += [f"{row['extra'][name]:.3f}" if name in row["extra"] else "–" for name in extras]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Change from the instruct parent (model − instruct; paired ± stderr, * p < 0.05)",
        "",
        "| model | " + " | ".join(MEMBERS[m][0] for m in members) + " |",
        "|---|" + "---|" * len(members),
    ]
    for row in rows[1:]:
        cells = [
            _relative_cell(row["scores"].get(m), rows[0]["scores"].get(m))
            if m.endswith("ppl")
            else _change_cell(row["changes"].get(m))
            for m in members
        ]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracies: higher is better (the IFEval-style sets: prompt-level strict accuracy, "
        "mergemed's score; their instruction-level accuracy, without stderr, is shown too); "
        "the long-context column is accuracy with distractors "
        "minus accuracy with the gold abstract alone (lengths that fit the model, "
        f"`--max-length {s.max_length}`); perplexities: lower is better, their changes are in "
        "percent of the instruct parent's, and lm-eval gives them no stderr (not tested).",
        "",
        "![domain gain against forgetting](pareto.png)",
        "",
        *_training_section(facts),
        *_grid_section(facts),
        *_method_section(study, facts, members),
    ]
    return "\n".join(lines) + "\n"


def _training_section(facts: dict[str, Any]) -> list[str]:
    lines = [
        "## Continual pretraining",
        "",
        "| model | tokens (general, medical) | repeats (general, medical) | held-out loss "
        "general / medical | seconds | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, report in facts["training"].items():
        tokens = report["tokens_per_source"]
        repeats = report["repeats_per_source"]
        held = report["held_out"]
        general, medical = (held.get(f"held_out/{s}", float("nan")) for s in ("general", "medical"))
        lines.append(
            f"| {name} | {tokens.get('general', 0):,}, {tokens.get('medical', 0):,} | "
            f"{repeats.get('general', 0):.2f}, {repeats.get('medical', 0):.2f} | "
            f"{general:.3f} / {medical:.3f} | "
            f"{report['train_seconds']:.0f} | {report['tokens_per_second']:,} |"
        )
    return [*lines, ""]


def _grid_section(facts: dict[str, Any]) -> list[str]:
    board = facts["grid"]
    if not board:
        return []
    s = facts["settings"]
    lines = [
        f"## Schedule search on CPT {s['grid_ratio']} (`mergemed grid`)",
        "",
        f"Layer-wise SLERP, attention × MLP gradients, scored on {', '.join(s['grid_tasks'])} "
        f"({s['grid_limit']:g} documents each) against the same parents; front first.",
        "",
        "| trial | schedule | domain gain | forgetting | Pareto |",
        "|---|---|---|---|---|",
    ]
    from mergemed.search.export import ranked_trials

    for trial in ranked_trials(board):
        choice = json.dumps(trial.get("choice"), separators=(",", ":"))
        lines.append(
            f"| {trial['trial']} | `{choice}` | {_change_cell(trial.get('domain_gain'))} | "
            f"{_change_cell(trial.get('forgetting'))} | {'yes' if trial['pareto'] else ''} |"
        )
    return [*lines, "", "![the grid's front](grid_pareto.png)", ""]


def _departure_lines(settings: Any) -> list[str]:
    """A paragraph naming the settings this run changed from the script's defaults."""
    from design import departures

    changed = departures(settings)
    if not changed:
        return ["These are the script's default settings.", ""]

    def shown(value: Any) -> str:
        if value is None:
            return "all"
        if isinstance(value, tuple):
            return ",".join(value)
        return f"{value:,}" if isinstance(value, int) else f"{value:g}"

    parts = [
        f"`--{name.replace('_', '-')}` {shown(value)} (default {shown(default)})"
        for name, value, default in changed
    ]
    return [
        "**Not the default settings.** This run changed " + "; ".join(parts) + ". Smaller "
        "samples widen every interval; compare runs only at the same settings.",
        "",
    ]


def _headline_section(headline: list[dict[str, Any]], settings: Any) -> list[str]:
    """The headline task on its own sample: the grid ratio's family, scores and paired
    changes from the instruct parent."""
    if not headline:
        return []
    title = MEMBERS[HEADLINE_TASK][0]
    size = headline[0]["sizes"].get(HEADLINE_TASK)
    lines = [
        f"## Headline: `{HEADLINE_TASK}` on {size} prompts, CPT {settings.grid_ratio} and its "
        "merges",
        "",
        "The main table's instruction-following columns rest on a small sample; here the "
        f"instruct parent, the CPT {settings.grid_ratio} model and every merge of it answer "
        f"{size} `{HEADLINE_TASK}` prompts (the same prompts for every model), so the best "
        "merge is picked among all of them on the same footing.",
        "",
        f"| model | {title} | change from instruct (paired ± stderr, * p < 0.05) | "
        "instruction-level |",
        "|---|---|---|---|",
    ]
    for row in headline:
        level = row["extra"].get(f"{HEADLINE_TASK} instruction-level")
        change = row["changes"].get(HEADLINE_TASK) if row["kind"] != "parent" else None
        lines.append(
            f"| {row['label']} | {score_text(row['scores'].get(HEADLINE_TASK))} | "
            f"{_change_cell(change)} | {'–' if level is None else f'{level:.3f}'} |"
        )
    return [*lines, ""]


def _timing_lines(facts: dict[str, Any]) -> list[str]:
    stored = facts["stored_results"]
    text = (
        "Each stage's seconds are those of the run that finished it (a resumed study keeps "
        "the times of the stages it skipped)."
    )
    if stored["count"]:
        text += (
            f" {stored['count']} of the {stored['of']} task results were read from the result "
            "store, computed by an earlier run of this work folder at the same settings; the "
            f"evaluation rows count the {stored['seconds']:.0f} s of scoring the store recorded "
            "for them then"
            + (f" ({stored['untimed']} have no recorded time)" if stored["untimed"] else "")
            + "."
        )
    return [text]


def _method_section(study: Any, facts: dict[str, Any], members: list[str]) -> list[str]:
    s, work = study.settings, study.work
    timings = facts["timings_seconds"]

    def group(prefix: str) -> float:
        return sum(v for k, v in timings.items() if k.startswith(prefix))

    from design import eval_groups, eval_options

    options = eval_options(study.settings)
    common = (
        f" --dtype float32 --gen-kwargs {options['gen_kwargs']}"
        + (f" --max-length {s.max_length}" if s.max_length else "")
        + f" --store {work}/results.sqlite"
    )
    evaluate_lines = [
        f"mergemed evaluate {work}/models/<model> --against instruct={work}/models/instruct "
        f"[--against clinical={work}/models/cpt-<ratio>] --tasks {','.join(group['tasks'])}"
        + (f" --limit {group['limit']:g}" if group["limit"] is not None else "")
        + common
        for group in eval_groups(study.settings)
    ]
    if facts["headline"]["models"]:
        cpt = f"cpt-{s.grid_ratio.replace(':', '-')}"
        evaluate_lines += [
            f"mergemed evaluate {work}/models/<instruct, {cpt} or a merge of it> "
            f"--against instruct={work}/models/instruct [--against clinical={work}/models/{cpt}]"
            f" --tasks {','.join(group['tasks'])}"
            + (f" --limit {group['limit']:g}" if group["limit"] is not None else "")
            + common
            + "   # headline"
            for group in headline_groups(study.settings)
        ]
    lines = [
        "## How it was made",
        "",
        "```",
        " ".join(s.command),
        "```",
        "",
        "is, stage by stage, these mergemed commands (configs and recipes are copied beside "
        "this file):",
        "",
        "```",
        f"mergemed import gguf SmolLM2-135M-Instruct.Q4_1.gguf -o {work}/models/instruct",
        *[f"mergemed train cpt {work}/configs/cpt-{r}.yaml" for r in ("0-1", "1-1", "9-1")],
        f"mergemed merge {work}/recipes/<model>.yaml -o {work}/models/<model>   # 15 merges",
        *evaluate_lines,
        f"mergemed grid {work}/search/grid_space.yaml",
        "```",
        "",
        "Medical text: the 500 PubMedQA *train* questions' abstracts and long answers (the test "
        "split is what PubMedQA, the long-context task and the medical perplexity evaluate). "
        "General text: *The Devil's Dictionary* without the documents `general_ppl` holds out "
        "(`text_perplexity/build.py --train-output`); no other general text ships offline, and "
        "text generated by the instruct model itself would turn the mix into self-distillation.",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    for name, prefix in (
        ("fetch", "fetch"),
        ("import gguf", "import"),
        ("data", "data"),
        ("train cpt (3)", "cpt"),
        ("merge (15)", "merge"),
        ("evaluate (19)", "evaluate"),
        (f"headline {HEADLINE_TASK} ({len(facts['headline']['models'])})", "headline"),
        ("grid", "grid"),
    ):
        stored = facts["stored_results"]["seconds_by_stage"].get(prefix, 0.0)
        lines.append(f"| {name} | {group(prefix) + stored:.0f} |")
    lines.append(f"| total | {_compute_seconds(facts):.0f} |")
    lines += ["", *_timing_lines(facts)]
    machine = facts["machine"]
    lines += [
        "",
        f"Machine: {machine['platform']}, {machine['cpu_cores']} CPU cores "
        f"({machine['torch_threads']} torch threads), {machine['memory_gib']} GiB, "
        f"GPU: {machine['gpu']}; Python {machine['python']}; load average when the report "
        f"was written: {', '.join(map(str, machine['load_average_at_report']))}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()) + ".",
        "",
        f"Prompt format: {facts['prompt_format']}.",
        "",
        "Per-model evaluation times (per task) are in `results.json`.",
    ]
    return lines
