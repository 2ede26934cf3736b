"""``mergemed card``: an honest model card for a merged folder.

Metadata as the Hub reads it (huggingface_hub's ``ModelCardData`` with ``EvalResult`` entries:
parents as ``base_model``, ``base_model_relation: merge``, tags, licence, ``model-index``), then
the recipe, the per-layer schedule, the evaluation (each task's score for the merge and both
parents, the gain or forgetting with its 95% interval, how it was computed), the search that
chose it, how to reproduce it, and its limitations. Every number comes from the results file it
names; without one the card says "not evaluated" and shows none.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergemed.errors import MergemedError
from mergemed.publish.licences import LicenceDecision, decide_licence, parent_licence

Z95 = 1.959964
"""Two-sided 95% normal quantile: intervals are ``change ± Z95 * stderr``."""

FAILURE_MODES = {
    # failure mode the seed papers report -> the evaluation tasks that would measure it
    "lost instruction following": ("ifeval",),
    "lost long-context ability": ("longctx", "long_context", "ruler", "niah"),
    "verbosity": ("verbosity", "length"),
    "language mixing": ("language_mixing", "lang_mix"),
}


@dataclass
class CardInputs:
    """What a card is built from, read from disk.

    Attributes:
        folder: the merged model folder (``merge.json``, ``recipe.yaml``, ``config.json``).
        merge: its ``merge.json``.
        recipe_text: its ``recipe.yaml``.
        evaluation: an ``mergemed evaluate --json`` file's content, or None.
        evaluation_path: where that file is.
        search: a ``mergemed grid`` export (``leaderboard.json``), or None.
    """

    folder: Path
    merge: dict[str, Any]
    recipe_text: str
    evaluation: dict[str, Any] | None = None
    evaluation_path: Path | None = None
    search: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def read_card_inputs(
    folder: str | Path, evaluation: str | Path | None = None, search: str | Path | None = None
) -> CardInputs:
    """Read a merged folder and the results a card is made from.

    Raises:
        MergemedError: the folder is not a mergemed output, or a results file is unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MergemedError(f"{folder}: not a folder")
    report = folder / "merge.json"
    if not report.is_file():
        raise MergemedError(
            f"{folder}: no merge.json, so not a mergemed merge output; a card describes how a "
            "model was merged"
        )
    merge = _read_json(report, "merge.json")
    recipe = folder / "recipe.yaml"
    recipe_text = recipe.read_text() if recipe.is_file() else ""
    inputs = CardInputs(folder, merge, recipe_text)
    if evaluation is not None:
        inputs.evaluation_path = Path(evaluation)
        inputs.evaluation = _read_json(inputs.evaluation_path, "--eval")
        if "summary" not in inputs.evaluation or "models" not in inputs.evaluation:
            raise MergemedError(
                f"--eval {evaluation}: not a `mergemed evaluate --json` file (expected keys "
                "'models' and 'summary')"
            )
    if search is not None:
        inputs.search = _read_json(Path(search), "--search")
    return inputs


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise MergemedError(f"{what} {path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MergemedError(f"{what} {path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise MergemedError(f"{what} {path}: expected a JSON object")
    return data


def parents_of(inputs: CardInputs) -> dict[str, Path | None]:
    """Parent reference -> its local folder (None when merge.json does not say)."""
    parents = {}
    for reference, entry in (inputs.merge.get("inputs") or {}).items():
        folder = entry.get("folder") if isinstance(entry, dict) else None
        parents[reference] = Path(folder) if folder else None
    return parents


def _hub_id(reference: str) -> str | None:
    """The Hub id of a parent reference (``org/name``, revision dropped), else None."""
    name = reference.split("@", 1)[0]
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")):
        if not Path(name).exists():
            return name
    return None


@dataclass
class EvaluationRow:
    """One task of the card's evaluation table."""

    task: str
    kind: str
    scores: dict[str, tuple[float, float | None]]
    change_name: str
    change: tuple[float, float | None] | None
    method: str | None
    significant: bool | None


def evaluation_rows(evaluation: dict[str, Any]) -> list[EvaluationRow]:
    """The per-task rows of a ``mergemed evaluate --json`` summary, numbers as written."""
    rows = []
    for entry in evaluation["summary"].get("per_task") or []:
        kind = entry.get("kind", "")
        change_name = {"domain": "gain", "general": "forgetting"}.get(kind, "change")
        change = entry.get(change_name)
        rows.append(
            EvaluationRow(
                task=entry["task"],
                kind=kind,
                scores={
                    label: (score["value"], score.get("stderr"))
                    for label, score in (entry.get("scores") or {}).items()
                    if score is not None
                },
                change_name=change_name,
                change=None if change is None else (change["value"], change.get("stderr")),
                method=entry.get("method"),
                significant=entry.get("significant"),
            )
        )
    return rows


def _metric_of(evaluation: dict[str, Any], task: str) -> str:
    for model in evaluation["models"].values():
        config = (model.get("lm_eval") or {}).get("configs", {}).get(task) or {}
        for metric in config.get("metric_list") or []:
            if isinstance(metric, dict) and isinstance(metric.get("metric"), str):
                return metric["metric"]
    return "score"


def eval_results(evaluation: dict[str, Any], model_name: str):
    """``EvalResult`` entries (the ``model-index``): the merged model's score on every task."""
    from huggingface_hub import EvalResult

    merged = evaluation["summary"]["merged"]
    results = []
    for row in evaluation_rows(evaluation):
        if merged not in row.scores:
            continue
        metric = _metric_of(evaluation, row.task)
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=row.task,
                dataset_name=row.task,
                metric_type=metric,
                metric_name=metric,
                metric_value=row.scores[merged][0],
            )
        )
    return results


def _interval(value: float, stderr: float | None) -> str:
    if stderr is None:
        return f"{value:+.4f} (no stderr)"
    return f"{value:+.4f} [{value - Z95 * stderr:+.4f}, {value + Z95 * stderr:+.4f}]"


def _evaluation_section(inputs: CardInputs) -> list[str]:
    evaluation = inputs.evaluation
    if evaluation is None:
        return [
            "## Evaluation",
            "",
            "**Not evaluated.** No evaluation results were given when this card was made "
            "(`mergemed card --eval results.json`), so this card reports no score.",
        ]
    summary = evaluation["summary"]
    labels = [summary.get("merged"), summary.get("clinical"), summary.get("instruct")]
    labels = [label for label in labels if label]
    digest = hashlib.sha256(inputs.evaluation_path.read_bytes()).hexdigest()[:16]
    lines = [
        "## Evaluation",
        "",
        f"From `{inputs.evaluation_path.name}` (sha256 {digest}…), written by "
        "`mergemed evaluate` through lm-eval. Gain is merged − instruct on domain tasks; "
        "forgetting is instruct − merged on general tasks (positive: ability lost); intervals "
        "are 95% (± 1.96 standard errors, paired over the same documents where marked).",
        "",
        "| task | kind | " + " | ".join(labels) + " | change [95% interval] | how |",
        "|---|---|" + "---|" * len(labels) + "---|---|",
    ]
    for row in evaluation_rows(evaluation):
        cells = []
        for label in labels:
            score = row.scores.get(label)
            cells.append("—" if score is None else f"{score[0]:.4f}")
        change = "—" if row.change is None else f"{row.change_name} " + _interval(*row.change)
        how = row.method or ""
        if row.significant is not None:
            how += "; significant" if row.significant else "; not significant"
        lines.append(f"| {row.task} | {row.kind} | " + " | ".join(cells) + f" | {change} | {how} |")
    for name, key in (("Domain gain", "domain_gain"), ("Forgetting", "forgetting")):
        figure = summary.get(key)
        if figure:
            lines += ["", f"**{name}**: {_interval(figure['value'], figure.get('stderr'))}"]
    return lines


def _search_section(inputs: CardInputs) -> list[str]:
    search = inputs.search
    if not search:
        return []
    trials = search.get("trials") or search.get("rows") or []
    front = [t for t in trials if isinstance(t, dict) and t.get("pareto")]
    return [
        "## How this schedule was chosen",
        "",
        f"A `mergemed grid` search of {len(trials)} trials; {len(front)} were on the Pareto "
        "front of domain gain against forgetting. The leaderboard it exported is the source.",
    ]


def _limitations(inputs: CardInputs) -> list[str]:
    tasks = []
    if inputs.evaluation is not None:
        for member in inputs.evaluation.get("members") or []:
            tasks += [member.get("name", ""), *member.get("tasks", [])]
    lines = [
        "## Limitations",
        "",
        "**Not for clinical decisions.** This is a research artefact made by merging weights; "
        "it has not been validated for diagnosis, treatment or any use on patients.",
        "",
        "Failure modes reported for merged and continually pretrained clinical models, and "
        "whether this card's evaluation measured them:",
        "",
    ]
    for mode, markers in FAILURE_MODES.items():
        measured = sorted({t for t in tasks if any(m in t.lower() for m in markers)})
        status = f"measured ({', '.join(measured)})" if measured else "**not measured**"
        lines.append(f"* {mode}: {status}")
    return lines


def build_card(
    inputs: CardInputs,
    *,
    licence: str | None = None,
    model_name: str | None = None,
    schedule_image: str | None = None,
) -> tuple[Any, LicenceDecision]:
    """The model card of a merged folder (a huggingface_hub ``ModelCard``) and the licence
    decision behind its ``license`` field (``other`` when none could be decided)."""
    from huggingface_hub import ModelCard, ModelCardData

    merge = inputs.merge
    parents = parents_of(inputs)
    decision = decide_licence(
        {reference: parent_licence(folder) for reference, folder in parents.items()}, licence
    )
    method = merge.get("merge_method", "merge")
    name = model_name or inputs.folder.absolute().name
    hub_parents = [h for h in (_hub_id(r) for r in parents) if h]
    data = ModelCardData(
        model_name=name,
        base_model=hub_parents or None,
        library_name="transformers",
        tags=["merge", "mergemed", "medical", method],
        license=decision.licence or "other",
        eval_results=eval_results(inputs.evaluation, name) if inputs.evaluation else None,
        base_model_relation="merge",
    )
    if inputs.evaluation_path is not None:
        data.mergemed_evaluation = {
            "path": str(inputs.evaluation_path.absolute()),
            "sha256": hashlib.sha256(inputs.evaluation_path.read_bytes()).hexdigest(),
        }
    if decision.licence is None:
        data.license_name = "undecided"
    versions = merge.get("versions") or {}
    body = [
        f"# {name}",
        "",
        f"A `{method}` merge of {len(parents)} models made with mergemed "
        f"{merge.get('mergemed_version', '')}.",
        "",
        "## Parents",
        "",
        "| model | revision | licence |",
        "|---|---|---|",
    ]
    for reference in parents:
        revision = ((merge.get("inputs") or {}).get(reference) or {}).get("revision") or "local"
        body.append(f"| {reference} | {revision} | {decision.parents.get(reference)} |")
    body += ["", f"Licence: {decision.licence or 'not decided'} ({decision.reason}).", ""]
    body += ["## Recipe", "", "```yaml", inputs.recipe_text.rstrip(), "```", ""]
    if schedule_image:
        body += ["## Schedule", "", f"![per-layer schedule]({schedule_image})", ""]
    body += [*_evaluation_section(inputs), ""]
    body += _search_section(inputs) + ([""] if inputs.search else [])
    body += [
        "## Reproduce",
        "",
        "```bash",
        f'pip install "mergemed=={merge.get("mergemed_version", "")}"',
        "mergemed merge recipe.yaml -o merged/",
        "```",
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + f"; merged on {merge.get('device', 'cpu')} in {merge.get('seconds', '?')} s.",
        "",
    ]
    body += _limitations(inputs)
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    return ModelCard(text), decision


def write_card(
    folder: str | Path,
    *,
    evaluation: str | Path | None = None,
    search: str | Path | None = None,
    licence: str | None = None,
    model_name: str | None = None,
) -> tuple[Path, LicenceDecision]:
    """Write ``<folder>/README.md`` (and ``schedule.png`` when the recipe can be planned).

    Returns:
        The card's path and the licence decision.

    Raises:
        MergemedError: the folder or a results file is not what a card is made from.
    """
    inputs = read_card_inputs(folder, evaluation, search)
    schedule = _schedule_plot(inputs)
    card, decision = build_card(
        inputs, licence=licence, model_name=model_name, schedule_image=schedule
    )
    path = inputs.folder / "README.md"
    partial = path.with_name(".README.md.partial")
    partial.write_text(str(card))
    partial.replace(path)
    return path, decision


def _schedule_plot(inputs: CardInputs) -> str | None:
    """Plot the recipe's per-layer schedule into the folder; None when it cannot be planned."""
    if not inputs.recipe_text:
        return None
    from mergemed.plan import plan_recipe, plot_plan
    from mergemed.recipe import load_recipe

    try:
        recipe = load_recipe(yaml.safe_load(inputs.recipe_text))
        layers = json.loads((inputs.folder / "config.json").read_text()).get("num_hidden_layers")
        plot_plan(plan_recipe(recipe, num_layers=layers), inputs.folder / "schedule.png")
    except (MergemedError, OSError, ValueError) as error:
        inputs.notes.append(f"no schedule plot: {error}")
        return None
    return "schedule.png"
