"""Run a search: candidates merged in memory from parents opened once, scored by the
evaluator, trials kept in an Optuna storage (resumable, shareable between machines).

Each trial records its dimension values, the candidate recipe, the summary figures with their
paired standard errors, each member's change, and timings (``trial.user_attrs``); the study
records the space's fingerprint, so a storage or run folder made from another space is
refused. A trial whose worker died (no heartbeat for a minute) is retried once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError
from mergemed.redact import redact
from mergemed.search.fidelity import beaten_by, documents, rung_record
from mergemed.search.space import (
    SearchError,
    SearchSpace,
    candidate_recipe,
    grid_points,
    grid_size,
    load_space,
)

HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60
RUN_FILE = "search.json"

TrialCallback = Callable[[dict[str, Any]], None]
"""Called with each finished trial's record (see :func:`trial_record`)."""


@dataclass
class SearchRun:
    """Where a search lives: its run folder, its storage and its study name."""

    folder: Path
    storage: str
    study_name: str
    space: SearchSpace = field(repr=False)
    notes: list[str] = field(default_factory=list)
    """What the search leaves out for every candidate (suite members it cannot score)."""

    @property
    def shown_storage(self) -> str:
        """The storage URL with any password masked."""
        return redact(self.storage)


def open_run(
    space_source: str | Path | SearchSpace,
    folder: str | Path | None = None,
    storage: str | None = None,
    *,
    name: str | None = None,
) -> SearchRun:
    """Create or reopen a run folder for a space (``runs/<name>/`` by default: the space
    file's name, else ``search``).

    Raises:
        SearchError: the folder holds a search of another space, or cannot be written.
    """
    space = space_source if isinstance(space_source, SearchSpace) else load_space(space_source)
    if name is None:
        name = Path(space_source).stem if isinstance(space_source, (str, Path)) else "search"
    run_folder = Path(folder) if folder is not None else Path("runs") / name
    run_folder = run_folder.expanduser().absolute()
    fingerprint = space.fingerprint()
    record_path = run_folder / RUN_FILE
    if record_path.is_file():
        recorded = json.loads(record_path.read_text())
        if recorded.get("space_sha256") != fingerprint:
            raise SearchError(
                f"{run_folder}: holds a search of another space (its {RUN_FILE} records "
                f"space {recorded.get('space_sha256', '?')[:12]}, this one is {fingerprint[:12]}); "
                "use another --run-dir"
            )
        storage = storage or recorded.get("storage")
    storage = storage or f"sqlite:///{run_folder / 'study.sqlite'}"
    try:
        run_folder.mkdir(parents=True, exist_ok=True)
        if not record_path.is_file():
            _write_atomic(
                record_path,
                {
                    "space_sha256": fingerprint,
                    "study": f"mergemed-{fingerprint[:16]}",
                    # never the password: it comes from the environment when needed
                    "storage": redact(storage) if "://" in storage else storage,
                    # the base recipe inline, so the folder alone reopens the search
                    "space": {**space.model_dump(mode="json"), "recipe": space.base_recipe()},
                },
            )
    except OSError as error:
        raise SearchError(f"{run_folder}: cannot write the run folder: {error.strerror}") from None
    return SearchRun(run_folder, _with_password(storage), f"mergemed-{fingerprint[:16]}", space)


def reopen_run(folder: str | Path) -> SearchRun:
    """A run folder's search, from its ``search.json`` alone (for ``show`` and ``export``).

    Raises:
        SearchError: the folder holds no search.
    """
    run_folder = Path(folder).expanduser().absolute()
    try:
        recorded = json.loads((run_folder / RUN_FILE).read_text())
        space = SearchSpace.model_validate(recorded["space"])
    except (OSError, ValueError, KeyError):
        raise SearchError(
            f"{run_folder}: not a search run folder (no readable {RUN_FILE})"
        ) from None
    return SearchRun(run_folder, _with_password(recorded["storage"]), recorded["study"], space)


def _with_password(storage: str) -> str:
    """A storage URL whose password was masked gets it back from the environment."""
    secret = os.environ.get("MERGEMED_STORAGE_PASSWORD") or os.environ.get("PGPASSWORD")
    if "***@" in storage and secret:
        return storage.replace("***@", f"{secret}@", 1)
    return storage


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(partial, path)


def load_study(run: SearchRun, *, create: bool = False) -> Any:
    """The run's Optuna study (created with ``create``), checked against the space.

    Raises:
        SearchError: the storage cannot be reached (named, password masked) or its study was
            made from another space.
    """
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return _checked_study(run, create, _open_study(run, create))
        except SearchError as error:
            # Workers starting together race to create the schema (SQLite: "table ...
            # already exists"; PostgreSQL: a unique violation); the loser retries.
            racing = any(m in str(error) for m in SCHEMA_RACES)
            if not racing or attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


STORAGE_ATTEMPTS = 5
SCHEMA_RACES = ("already exists", "UniqueViolation", "IntegrityError")


def _open_study(run: SearchRun, create: bool) -> Any:
    import optuna
    from optuna.storages import RDBStorage

    try:
        storage = RDBStorage(run.storage, **_heartbeat())
        space = run.space
        directions = _directions(space)
        if create:
            study = optuna.create_study(
                study_name=run.study_name,
                storage=storage,
                load_if_exists=True,
                directions=directions,
                sampler=_sampler(space),
            )
        else:
            study = optuna.load_study(
                study_name=run.study_name, storage=storage, sampler=_sampler(space)
            )
    except MergemedError:
        raise
    except KeyError:
        raise SearchError(f"{run.folder}: no search has started there yet") from None
    except Exception as error:  # SQLAlchemy and drivers raise many kinds
        raise SearchError(
            f"storage {run.shown_storage}: cannot be used: "
            f"{redact(type(error).__name__ + ': ' + str(error).splitlines()[0])}"
        ) from None
    return study


def _checked_study(run: SearchRun, create: bool, study: Any) -> Any:
    space = run.space
    fingerprint = space.fingerprint()
    recorded = study.user_attrs.get("space_sha256")
    if recorded is None and create:
        study.set_user_attr("space_sha256", fingerprint)
    elif recorded is not None and recorded != fingerprint:
        raise SearchError(
            f"storage {run.shown_storage}: study {run.study_name} was made from another space"
        )
    return study


def _heartbeat() -> dict[str, Any]:
    """Heartbeat settings: a trial whose worker stopped beating is retried once (the
    callback's name changed in Optuna 4.9)."""
    from optuna import storages

    settings: dict[str, Any] = {
        "heartbeat_interval": HEARTBEAT_SECONDS,
        "grace_period": GRACE_SECONDS,
    }
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
        settings["heartbeat_stale_trial_callback"] = storages.RetryHeartbeatStaleTrialCallback(
            max_retry=1
        )
    else:  # Optuna < 4.9
        settings["failed_trial_callback"] = storages.RetryFailedTrialCallback(max_retry=1)
    return settings


def _directions(space: SearchSpace) -> list[str]:
    return ["minimize" if o == "forgetting" else "maximize" for o in space.objectives]


def _sampler(space: SearchSpace) -> Any:
    import optuna

    if space.strategy == "grid":
        return optuna.samplers.GridSampler(
            {n: list(range(len(d.grid()))) for n, d in space.vary.items()}, seed=space.seed
        )
    if space.strategy == "random":
        return optuna.samplers.RandomSampler(seed=space.seed)
    if space.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=space.seed, multivariate=True)
    if space.strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed)
    return optuna.samplers.CmaEsSampler(seed=space.seed)


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
