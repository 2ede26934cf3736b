"""``evaluate()``: score a merged model and its parents with lm-eval, reusing stored results.

For each model: find which (task, settings) pairs the results store already holds for its
weights; load the model only if something is missing; run each missing task through
``lm_eval.simple_evaluate`` exactly as a direct call would (same task objects, limit, chat
template and generation settings); store each task's result as soon as it is done, so an
interrupted evaluation resumes where it stopped. Then turn the scores into the trade-off
figures of :mod:`mergemed.evaluation.scores`.

Nothing here changes process-wide state: the data folder reaches the task loaders as lm-eval
task metadata, so two evaluations can run in one process at once.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError
from mergemed.evaluation.backends import release_lm
from mergemed.evaluation.candidates import (
    Candidate,
    build_lm,
    load_candidate,
    load_tokenizer,
    max_length,
    parse_against,
    unique_labels,
)
from mergemed.evaluation.comparison import (
    Comparison,
    EventCallback,
    SubsetDraws,
    data_dir,
    expand_groups,
    output_type,
    run_tasks,
)
from mergemed.evaluation.harness import (
    add_block,
    quiet_lm_eval_logging,
    run_task,
    task_block,
    with_new_tokens,
)
from mergemed.evaluation.identity import folder_fingerprint, tokenizer_hash
from mergemed.evaluation.prompt_format import decide, template_hash
from mergemed.evaluation.results import EvaluationReport, ModelEvaluation
from mergemed.evaluation.sampling import sample_fingerprint
from mergemed.evaluation.settings import EvalSettings, eval_settings
from mergemed.evaluation.store import ResultKey, ResultsStore, default_store_path, settings_hash
from mergemed.evaluation.suites import (
    Member,
    resolve_members,
    suites,
    task_flags,
    task_manager,
    task_version,
)


def evaluate(
    model: str | Path | Any,
    settings: EvalSettings | None = None,
    *,
    against: Sequence[str | Path] | Mapping[str, str | Path] = (),
    store: ResultsStore | str | Path | bool | None = None,
    json_path: str | Path | None = None,
    tokenizer: Any = None,
    on_event: EventCallback | None = None,
    **options: Any,
) -> EvaluationReport:
    """Evaluate a merged model (and the models it is compared against) on lm-eval tasks.

    Args:
        model: a model folder, a recipe YAML (merged in memory, nothing written), a loaded
            ``transformers`` model (pass ``tokenizer`` too), or an ``InMemoryMerge``.
        settings: what to evaluate and how (:class:`EvalSettings`); ``options`` are its
            fields (and :class:`BackendSettings`'s) given as keywords, e.g.
            ``evaluate(path, tasks=["mm_pubmedqa"], limit=20, dtype="bfloat16")``.
        against: parents to compare with: paths in the order clinical, instruct, or
            ``"clinical=PATH"`` / ``"instruct=PATH"`` (or a role -> path mapping).
        store: the results store: a path, a :class:`ResultsStore`, None for the default
            (``~/.cache/mergemed/results.sqlite``), or False to neither read nor write one.
        json_path: also write the report as JSON there.
        on_event: progress callback (see :data:`EventCallback`).

    Raises:
        MergemedError: bad models, task names, data or settings; one line each, before any
            model is loaded where the settings alone are wrong.
    """
    started = time.time()
    settings = eval_settings(settings, **options)
    emit = on_event or (lambda event, details: None)
    quiet_lm_eval_logging()
    results_store = _open_store(store)
    candidates, comparison = _comparison(model, settings, against, tokenizer, results_store, emit)
    evaluations: list[ModelEvaluation] = []
    try:
        for candidate in candidates:
            evaluations.append(_evaluate_one(candidate, comparison))
    finally:
        for candidate in candidates:
            candidate.close()

    report = EvaluationReport(
        models=evaluations,
        members=comparison.members,
        trade_off=comparison.trade_off(evaluations),
        seconds=time.time() - started,
        store_path=str(results_store.path) if results_store else None,
        prompt_format=comparison.prompt_format.describe(),
    )
    if json_path is not None:
        _write_json(Path(json_path), report.as_dict())
    return report


@dataclass
class Preflight:
    """What an evaluation would leave out, found before any model is loaded."""

    skipped: dict[str, dict[str, str]]
    """model label -> task -> why it would be skipped."""
    members: list[Member]
    """The requested members (suite members have ``suite`` set), with their leaf tasks."""

    def member_of(self, task: str) -> Member | None:
        """The member a leaf task belongs to."""
        return next((m for m in self.members if task in m.tasks or task == m.name), None)


def preflight(
    model: str | Path | Any,
    settings: EvalSettings | None = None,
    *,
    against: Sequence[str | Path] | Mapping[str, str | Path] = (),
    tokenizer: Any = None,
    **options: Any,
) -> Preflight:
    """What :func:`evaluate` would skip, and why, for each model: unknown tasks, data that
    cannot be reached offline, prompts that cannot fit. Reads tokenizers and configs only;
    loads no model and scores nothing.

    Raises:
        MergemedError: as :func:`evaluate` does for bad models, task names or settings.
    """
    settings = eval_settings(settings, **options)
    quiet_lm_eval_logging()
    candidates, comparison = _comparison(
        model, settings, against, tokenizer, None, lambda event, details: None
    )
    try:
        skipped = {c.label: dict(comparison.skips[c.label]) for c in candidates}
        return Preflight(skipped, list(comparison.members))
    finally:
        for candidate in candidates:
            candidate.close()


def _comparison(
    model: Any,
    settings: EvalSettings,
    against: Sequence[str | Path] | Mapping[str, str | Path],
    tokenizer: Any,
    results_store: ResultsStore | None,
    emit: EventCallback,
) -> tuple[list[Candidate], Comparison]:
    """The models of one comparison and what they share (tasks, samples, prompt format),
    with every model's skips and fits decided from its tokenizer and config."""
    metadata = settings.task_metadata()
    own = task_manager(settings.include, names=None, metadata=metadata)
    declared = suites(own)
    wanted_names = [
        t
        for s in settings.suites
        if s in declared
        for leaves in declared[s].members.values()
        for t in leaves
    ]
    manager = task_manager(
        settings.include, names=[*wanted_names, *settings.tasks], metadata=metadata
    )
    members = resolve_members(manager, settings.suites, settings.tasks, declared)
    members = expand_groups(manager, members)
    samples = SubsetDraws(manager, settings)
    candidates = [
        load_candidate(model, "merged", tokenizer, settings.backend, settings.allow_pickle)
    ]
    try:
        for role, path in parse_against(against):
            candidates.append(
                load_candidate(path, role, None, settings.backend, settings.allow_pickle)
            )
        unique_labels(candidates)
        prompt_format = decide(
            settings.chat_template,
            [(c.label, c.role, load_tokenizer(c, settings.backend)) for c in candidates],
        )
        comparison = Comparison(
            settings, manager, members, samples, prompt_format, results_store, emit
        )
        # Everything that needs only tokenizers and configs, for every model, before any
        # model is loaded: skips, and the new-token caps (one per task for the comparison).
        for candidate in candidates:
            comparison.check(candidate)
    except BaseException:
        for candidate in candidates:
            candidate.close()
        raise
    return candidates, comparison


def _prompting_tokenizer(candidate: Candidate, tokenizer: Any, template: str | None) -> Any:
    """The tokenizer lm-eval prompts with: the model's own, or a copy carrying the
    comparison's chat template (the model's files and the caller's object stay as they are)."""
    if template is None or getattr(tokenizer, "chat_template", None) == template:
        return tokenizer
    prompting = copy.deepcopy(tokenizer)
    prompting.chat_template = template
    return prompting


def _evaluate_one(candidate: Candidate, comparison: Comparison) -> ModelEvaluation:
    settings, manager, members = comparison.settings, comparison.manager, comparison.members
    samples, store, emit = comparison.samples, comparison.store, comparison.emit
    tokenizer = load_tokenizer(candidate, settings.backend)
    own_template = getattr(tokenizer, "chat_template", None) or None
    local_data = data_dir(settings)
    base_settings: dict[str, Any] = {
        "lm_eval": _version("lm_eval"),
        "data_dir": folder_fingerprint(local_data) if local_data is not None else None,
        "tokenizer_sha256": tokenizer_hash(candidate.tokenizer_folder)
        if candidate.tokenizer_folder
        else None,
    }
    evaluation = ModelEvaluation(
        label=candidate.label,
        role=candidate.role,
        source=candidate.source,
        weights_hash=candidate.weights_hash,
        settings=base_settings,
    )
    evaluation.skipped = dict(comparison.skips[candidate.label])
    limit = max_length(candidate, settings.backend)
    for task, fit in comparison.fits[candidate.label].items():
        if (note := fit.note(limit)) is not None:
            evaluation.notes[task] = note
        if (cap := comparison.new_tokens_cap(task)) is not None and fit.max_gen_toks is None:
            evaluation.notes[task] = f"max_gen_toks capped at {cap} for every model"
    for task, reason in evaluation.skipped.items():
        emit("skip", {"label": candidate.label, "task": task, "reason": reason})
    # Members' tasks are disjoint after expansion, but keep order and drop repeats.
    wanted = list(
        dict.fromkeys(t for m in members for t in run_tasks(m) if t not in evaluation.skipped)
    )
    member_of = {t: m for m in members for t in run_tasks(m)}

    keys: dict[str, tuple[ResultKey, dict[str, Any]]] = {}
    blocks: dict[str, dict[str, Any]] = {}
    templated: dict[str, bool] = {}
    template = comparison.prompt_format.template_for(own_template)
    for task in wanted:
        templated[task] = comparison.prompt_format.uses_template(
            output_type(manager, task), own_template
        )
        task_settings = {
            **base_settings,
            **settings.score_settings(chat_template=templated[task]),
            "chat_template_sha256": template_hash(template) if templated[task] else None,
        }
        if (cap := comparison.new_tokens_cap(task)) is not None:
            task_settings["gen_kwargs"] = with_new_tokens(settings.gen_kwargs, cap)
        if "needs_punkt" in task_flags(manager, task, member_of[task]):
            from mergemed.evaluation.punkt import ensure_punkt

            task_settings["punkt"] = ensure_punkt()
        if settings.limit is not None:
            task_settings["sample"] = sample_fingerprint(samples(task))
        key = ResultKey(
            candidate.weights_hash,
            task,
            task_version(manager, task),
            settings_hash(task_settings),
        )
        keys[task] = (key, task_settings)
        if store is not None and (stored := store.lookup(key)) is not None:
            blocks[task] = stored.result
            evaluation.cached.append(task)
            evaluation.task_seconds[task] = stored.seconds
    missing = [t for t in wanted if t not in blocks]
    emit("model", {"label": candidate.label, "cached": evaluation.cached, "missing": missing})

    evaluation.settings.update(settings.score_settings(chat_template=any(templated.values())))
    evaluation.settings["chat_template_tasks"] = [t for t in wanted if templated[t]]
    if missing:
        prompting = _prompting_tokenizer(candidate, tokenizer, template)
        if prompting is not tokenizer and settings.backend.backend == "vllm":
            raise MergemedError(
                f"{candidate.source}: --backend vllm prompts with the model's own chat "
                "template, not the comparison's; use --chat-template per-model or off"
            )
        lm = build_lm(candidate, settings.backend, prompting)
        try:
            for task in missing:
                emit("task_start", {"label": candidate.label, "task": task})
                begin = time.time()
                arguments = {
                    **settings.lm_eval_arguments(templated[task]),
                    "gen_kwargs": keys[task][1]["gen_kwargs"],
                    "samples": {task: indices} if (indices := samples(task)) is not None else None,
                }
                output = run_task(lm, task, manager, arguments)
                seconds = time.time() - begin
                block = task_block(output, task)
                blocks[task] = block
                evaluation.evaluated.append(task)
                evaluation.task_seconds[task] = seconds
                if store is not None:
                    key, task_settings = keys[task]
                    store.put(
                        key,
                        block,
                        model_label=candidate.label,
                        settings=task_settings,
                        seconds=seconds,
                    )
                emit("task_done", {"label": candidate.label, "task": task, "seconds": seconds})
        finally:
            release_lm(lm)
        del lm
    for task in wanted:
        add_block(evaluation, task, blocks[task])
    return evaluation


# --------------------------------------------------------------------------------------------
# Helpers


def _open_store(store: ResultsStore | str | Path | bool | None) -> ResultsStore | None:
    if store is False:
        return None
    if isinstance(store, ResultsStore):
        return store
    if store is None or store is True:
        return ResultsStore(default_store_path())
    return ResultsStore(store)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path = path.expanduser().absolute()
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise MergemedError(f"--json {path}: cannot write: {error.strerror}") from None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
