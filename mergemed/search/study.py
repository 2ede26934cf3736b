"""Run a search: candidates merged in memory from parents opened once, scored by the
evaluator, trials kept in an Optuna storage (resumable, shareable between machines).

Each trial records its dimension values, the candidate recipe, the summary figures with their
paired standard errors, each member's change, and timings (``trial.user_attrs``); the study
records the space's fingerprint, so a storage or run folder made from another space is
refused. A trial whose worker died (no heartbeat for a minute) is retried once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergemed.search.fidelity import beaten_by, documents, rung_record
from mergemed.search.space import (
    SearchError,
    SearchSpace,
    candidate_recipe,
    grid_points,
    grid_size,
    load_space,
)
from mergemed.search.storage import SearchRun, load_study, open_run, reopen_run

__all__ = [
    "SearchRun",
    "decided",
    "finished_trials",
    "leaderboard",
    "objective_values",
    "open_run",
    "reopen_run",
    "run_search",
    "suggest",
    "total_trials",
]

TrialCallback = Callable[[dict[str, Any]], None]
"""Called with each finished trial's record (see :func:`trial_record`)."""


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """The trial's value for each dimension (lists are chosen by index, so any YAML value
    can be a candidate)."""
    choice: dict[str, Any] = {}
    for name, dimension in space.vary.items():
        values = dimension.grid() if space.strategy == "grid" else dimension.values
        if values is not None:
            choice[name] = values[trial.suggest_categorical(name, list(range(len(values))))]
        else:
            choice[name] = trial.suggest_float(
                name, dimension.low, dimension.high, step=dimension.step
            )
    return choice


def total_trials(space: SearchSpace, trials: int | None = None) -> int:
    """How many finished trials complete the search."""
    if trials is not None:
        return trials
    if space.trials is not None:
        return space.trials
    return grid_size(space)


def run_search(
    space_source: str | Path | SearchSpace,
    folder: str | Path | None = None,
    *,
    storage: str | None = None,
    trials: int | None = None,
    yes: bool = False,
    max_trials: int | None = None,
    device: str = "cpu",
    on_trial: TrialCallback | None = None,
) -> SearchRun:
    """Run (or continue) a search until it has ``trials`` finished trials in its storage.

    Several processes (on one machine or many, with an RDB storage URL) may run the same
    search at once; each takes the next candidate, none runs one twice.

    Raises:
        SearchError: too many trials without ``yes``, another space in the run folder, a
            storage that cannot be reached, a candidate that is not a valid recipe.
        MergemedError: parents that cannot be merged or scored.
    """

    import optuna
    from optuna.trial import TrialState

    from mergemed.engine import MergeOptions, merge_job_to_memory, prepare_merge
    from mergemed.evaluation import EvalSettings, evaluate

    space = space_source if isinstance(space_source, SearchSpace) else load_space(space_source)
    wanted = total_trials(space, trials)
    ceiling = max_trials if max_trials is not None else space.max_trials
    if wanted > ceiling and not yes:
        raise SearchError(
            f"{wanted} trials is more than max_trials {ceiling}; pass --yes to run them"
        )
    if wanted < 1:
        raise SearchError("the space has no candidates")
    settings = EvalSettings(
        tasks=space.score.tasks,
        suites=space.score.suites,
        limit=space.score.limit,
        **space.score.settings,
    )
    parents = {"clinical": space.score.clinical, "instruct": space.score.instruct}
    base = space.base_recipe()
    first = grid_points(space)[0] if space.strategy == "grid" else None
    seed_recipe = candidate_recipe(space, first or _midpoint(space), base)

    # Everything that can be checked is checked before the run folder or storage is touched:
    # the parents merge (shapes, architectures), and every task can be scored here.
    with prepare_merge(seed_recipe, options=MergeOptions(device=device)) as job:
        notes = _check_scorable(space, settings, parents)
        name = Path(space_source).stem if isinstance(space_source, (str, Path)) else None
        run = open_run(space, folder, storage, name=name)
        run.notes = notes
        study = load_study(run, create=True)
        store = run.folder / "results.sqlite"

        previous: dict[str, Any] = {}

        def objective(trial: Any) -> Any:
            choice = suggest(trial, space)
            if _claimed_earlier(study, trial):
                # Another worker took the same candidate first (samplers may hand one point to
                # two workers at once); the lower trial number keeps it.
                raise optuna.TrialPruned("another worker scores this candidate")
            recipe = candidate_recipe(space, choice, base)
            trial.set_user_attr("choice", choice)
            trial.set_user_attr("recipe", recipe.to_yaml())
            begin = time.time()
            # Tensors whose inputs and parameters the previous candidate shares are reused.
            merged = merge_job_to_memory(job.replan(recipe), reuse=previous.get("merge"))
            trial.set_user_attr("merge_seconds", round(time.time() - begin, 3))
            trial.set_user_attr("reused_tensors", merged.reused)
            previous["merge"] = merged
            try:
                return _score_by_rungs(trial, merged)
            finally:
                merged.cleanup()  # the metadata folder; the tensors stay for the next one

        def _score_by_rungs(trial: Any, merged: Any) -> Any:
            rungs = [*space.score.fidelity, space.score.limit]
            scored, seconds = 0, 0.0
            for index, size in enumerate(rungs):
                rung_settings = settings.model_copy(update={"limit": size})
                report = evaluate(merged, rung_settings, against=parents, store=store)
                record = rung_record(report)
                scored += documents(record)
                seconds += report.seconds
                summary = report.trade_off.as_dict()
                for name, value in (
                    ("summary", summary),
                    ("documents", scored),
                    ("evaluate_seconds", round(seconds, 3)),
                    ("weights_sha256", report.models[0].weights_hash),
                ):
                    trial.set_user_attr(name, value)
                if index == len(rungs) - 1:
                    trial.set_user_attr("full_documents", documents(record))
                    break
                trial.set_user_attr(f"rung{index}", record)
                others = [
                    (t.number, t.user_attrs[f"rung{index}"])
                    for t in study.get_trials(deepcopy=False)
                    if t.number != trial.number and f"rung{index}" in t.user_attrs
                ]
                winner = beaten_by(record, others, space.objectives, space.forgetting_weight)
                if winner is not None:
                    trial.set_user_attr("stopped_at", size)
                    trial.set_user_attr("beaten_by", winner)
                    raise optuna.TrialPruned(f"trial {winner} is better on {size} documents")
            values = objective_values(space, summary)
            return values if len(values) > 1 else values[0]

        def finished(study: Any, trial: Any) -> None:
            if on_trial is not None and (trial.state == TrialState.COMPLETE or _stopped(trial)):
                on_trial(
                    {
                        "number": trial.number,
                        "choice": trial.user_attrs.get("choice"),
                        "values": trial.values,
                        "stopped_at": trial.user_attrs.get("stopped_at"),
                        "beaten_by": trial.user_attrs.get("beaten_by"),
                    }
                )
            if decided(study) >= wanted:
                study.stop()

        done = decided(study)
        if done < wanted:
            study.optimize(
                objective,
                # duplicates yielded to other workers and retries of dead ones count too
                n_trials=2 * (wanted - done) + 2,
                callbacks=[finished],
                catch=(),
            )
    return run


def _check_scorable(space: SearchSpace, settings: Any, parents: dict[str, str]) -> list[str]:
    """Refuse a space naming a task that cannot be scored here (data offline, prompts too long
    for the parents): every candidate would miss it. A suite member that cannot be scored is
    left out for every candidate alike; the returned notes say which and why.

    Raises:
        SearchError: naming the first such task and why.
    """
    from mergemed.evaluation import preflight

    found = preflight(space.score.instruct, settings, against={"clinical": parents["clinical"]})
    notes = []
    for label, reasons in found.skipped.items():
        for task, reason in reasons.items():
            member = found.member_of(task)
            if member is None or member.suite is None:
                named = member.name if member is not None else task
                shown = named if named == task else f"{named} ({task})"
                raise SearchError(f"score.tasks: {shown} cannot be scored ({label}): {reason}")
            notes.append(f"{task} skipped for every candidate ({label}): {reason}")
    return list(dict.fromkeys(notes))


def _stopped(trial: Any) -> bool:
    """Whether a trial was stopped by multi-fidelity (not a duplicate yielded to another)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.PRUNED and "stopped_at" in trial.user_attrs


def decided(study: Any) -> int:
    """Candidates the search has settled: scored on the full sample, or stopped early."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sum(1 for t in trials if t.state == TrialState.COMPLETE or _stopped(t))


def _claimed_earlier(study: Any, trial: Any) -> bool:
    """Whether a lower-numbered running or finished trial has the same parameters."""
    from optuna.trial import TrialState

    others = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
    return any(t.number < trial.number and t.params == trial.params for t in others)


def _midpoint(space: SearchSpace) -> dict[str, Any]:
    return {
        n: (d.values[0] if d.values is not None else (d.low + d.high) / 2)
        for n, d in space.vary.items()
    }


def objective_values(space: SearchSpace, summary: dict[str, Any]) -> list[float]:
    """The trial's objective values from its summary figures.

    Raises:
        SearchError: a figure the objectives need was not computed (no domain tasks, say).
    """
    figures = {}
    for name in ("domain_gain", "forgetting"):
        figure = summary.get(name)
        figures[name] = None if figure is None else figure["value"]
    needed = ["domain_gain", "forgetting"] if space.objectives == ["weighted"] else space.objectives
    missing = [n for n in needed if figures[n] is None]
    if missing:
        raise SearchError(
            f"objective {missing[0]}: not computed for this candidate; score.tasks/suites "
            f"need {'domain' if missing[0] == 'domain_gain' else 'general'} tasks"
        )
    if space.objectives == ["weighted"]:
        return [figures["domain_gain"] - space.forgetting_weight * figures["forgetting"]]
    return [figures[o] for o in space.objectives]


def finished_trials(study: Any) -> list[Any]:
    """The study's settled trials (complete, or stopped early by multi-fidelity), by number."""
    from optuna.trial import TrialState

    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    settled = [t for t in trials if t.state == TrialState.COMPLETE or _stopped(t)]
    return sorted(settled, key=lambda t: t.number)


def leaderboard(run: SearchRun) -> dict[str, Any]:
    """The settled trials with their figures, the Pareto front of the space's objectives over
    the candidates scored on the full sample, the parents' own point, and the evaluation cost
    (what ``mergemed grid show`` prints and writes as ``pareto.json``)."""
    from mergemed.search.pareto import pareto_front

    study = load_study(run)
    space = run.space
    rows = []
    for trial in finished_trials(study):
        summary = trial.user_attrs.get("summary", {})
        rows.append(
            {
                "trial": trial.number,
                "choice": trial.user_attrs.get("choice"),
                "domain_gain": summary.get("domain_gain"),
                "forgetting": summary.get("forgetting"),
                "values": trial.values,
                "stopped_at": trial.user_attrs.get("stopped_at"),
                "beaten_by": trial.user_attrs.get("beaten_by"),
                "documents": trial.user_attrs.get("documents"),
                "merge_seconds": trial.user_attrs.get("merge_seconds"),
                "evaluate_seconds": trial.user_attrs.get("evaluate_seconds"),
                "recipe": trial.user_attrs.get("recipe"),
            }
        )
    complete = [r for r in rows if r["stopped_at"] is None and r["values"]]
    maximize = [o != "forgetting" for o in space.objectives]
    front = {complete[i]["trial"] for i in pareto_front([r["values"] for r in complete], maximize)}
    for row in rows:
        row["pareto"] = row["trial"] in front
    # Every candidate's full sample is the same size, so a complete trial's tells all.
    full = max((t.user_attrs.get("full_documents", 0) for t in finished_trials(study)), default=0)
    spent = sum(r["documents"] or 0 for r in rows)
    cost = {
        "documents": spent,
        "documents_without_fidelity": full * len(rows),
        "saved": round(1 - spent / (full * len(rows)), 4) if full and rows else None,
    }
    parents = _parent_point(study, finished_trials(study))
    return {
        "study": run.study_name,
        "storage": run.shown_storage,
        "objectives": list(space.objectives),
        "trials": rows,
        "cost": cost,
        "clinical_parent": parents,
    }


def _parent_point(study: Any, trials: list[Any]) -> dict[str, float] | None:
    """The clinical parent's domain gain and forgetting against the instruct parent (from a
    complete trial's summary, which scores both parents on the full sample)."""
    for trial in trials:
        if "stopped_at" in trial.user_attrs:
            continue
        summary = trial.user_attrs.get("summary", {})
        domain, general = summary.get("domain_score", {}), summary.get("general_score", {})
        clinical, instruct = summary.get("clinical"), summary.get("instruct")
        point = {}
        if domain.get(clinical) and domain.get(instruct):
            point["domain_gain"] = domain[clinical]["value"] - domain[instruct]["value"]
        if general.get(clinical) and general.get(instruct):
            point["forgetting"] = general[instruct]["value"] - general[clinical]["value"]
        return point or None
    return None
