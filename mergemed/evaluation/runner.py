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
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError
from mergemed.evaluation.candidates import (
    Candidate,
    build_lm,
    first_line,
    load_candidate,
    load_tokenizer,
    max_length,
    parse_against,
    unique_labels,
)
from mergemed.evaluation.fit import Fit, check_fit, token_counter
from mergemed.evaluation.identity import folder_fingerprint, tokenizer_hash
from mergemed.evaluation.prompt_format import GENERATION, PromptFormat, decide, template_hash
from mergemed.evaluation.results import EvaluationReport, ModelEvaluation
from mergemed.evaluation.sampling import draw_sample, sample_fingerprint
from mergemed.evaluation.scores import summarise
from mergemed.evaluation.settings import EvalSettings, eval_settings
from mergemed.evaluation.store import ResultKey, ResultsStore, default_store_path, settings_hash
from mergemed.evaluation.suites import (
    Member,
    leaf_tasks,
    local_data_name,
    resolve_members,
    sample_group,
    suites,
    task_flags,
    task_manager,
    task_version,
    unknown_task,
)
from mergemed.redact import redact

EventCallback = Callable[[str, Mapping[str, Any]], None]
"""Called with (event, details): ``model`` (label, cached, missing), ``task_start`` (label,
task), ``task_done`` (label, task, seconds, cached), ``skip`` (label, task, reason)."""

DATA_DIR_ENV = "MERGEMED_DATA_DIR"
"""Read (never set) when no ``data_dir`` is given, as the task loaders do under plain lm-eval."""


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
    _quiet_lm_eval_logging()
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
    members = _expand_groups(manager, members)
    results_store = _open_store(store)
    samples = SubsetDraws(manager, settings)

    candidates = [
        load_candidate(model, "merged", tokenizer, settings.backend, settings.allow_pickle)
    ]
    for role, path in parse_against(against):
        candidates.append(load_candidate(path, role, None, settings.backend, settings.allow_pickle))
    unique_labels(candidates)

    evaluations: list[ModelEvaluation] = []
    try:
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
            comparison.skips[candidate.label], comparison.fits[candidate.label] = _skip_reasons(
                candidate, comparison
            )
        for candidate in candidates:
            evaluations.append(_evaluate_one(candidate, comparison))
    finally:
        for candidate in candidates:
            candidate.close()

    report = EvaluationReport(
        models=evaluations,
        members=members,
        trade_off=_trade_off(evaluations, members),
        seconds=time.time() - started,
        store_path=str(results_store.path) if results_store else None,
        prompt_format=prompt_format.describe(),
    )
    if json_path is not None:
        _write_json(Path(json_path), report.as_dict())
    return report


def _trade_off(evaluations: list[ModelEvaluation], members: list[Member]) -> Any:
    # A task skipped for any model (a length beyond its context, data offline) is left out
    # of every model's member scores, so comparisons stay like for like.
    skipped_anywhere = {task for e in evaluations for task in e.skipped}
    scored_members = [
        Member(m.name, tuple(t for t in m.tasks if t not in skipped_anywhere), m.kind, m.suite)
        for m in members
    ]
    task_scores = {
        e.label: {
            task: score
            for member in members
            for task in member.tasks
            if (score := e.score(task)) is not None
        }
        for e in evaluations
    }
    by_role = {e.role: e.label for e in evaluations}
    per_sample = {
        e.label: {
            task: pairs
            for member in members
            for task in member.tasks
            if (pairs := e.samples(task)) is not None
        }
        for e in evaluations
    }
    for e in evaluations:
        for member in members:
            if member.baseline is not None:
                _as_drops(e, member, task_scores[e.label], per_sample[e.label])
    return summarise(
        task_scores,
        domain={m.name: m.tasks for m in scored_members if m.kind == "domain" and m.tasks},
        general={m.name: m.tasks for m in scored_members if m.kind == "general" and m.tasks},
        merged=evaluations[0].label,
        clinical=by_role.get("clinical"),
        instruct=by_role.get("instruct"),
        per_sample=per_sample,
    )


def _as_drops(
    evaluation: ModelEvaluation,
    member: Member,
    scores: dict[str, Any],
    per_sample: dict[str, Any],
) -> None:
    """Score each of a member's tasks as its drop from the member's baseline on the same
    documents (per document: task − baseline; paired stderr). A task whose documents are not
    the baseline's, or with no baseline result, is left out of the member, never mixed in."""
    from mergemed.evaluation.paired import paired_difference

    base = evaluation.samples(member.baseline)
    for task in member.tasks:
        own = per_sample.get(task)
        if base is None or own is None or own[0] != base[0] or len(own[0]) < 2:
            scores.pop(task, None)
            per_sample.pop(task, None)
            continue
        drops = [float(a) - float(b) for a, b in zip(own[1], base[1], strict=True)]
        scores[task] = paired_difference(own[1], base[1])
        per_sample[task] = (own[0], drops)


def run_tasks(member: Member) -> tuple[str, ...]:
    """What a member runs: its tasks, then its baseline (if any)."""
    return (*member.tasks, member.baseline) if member.baseline else member.tasks


# --------------------------------------------------------------------------------------------
# Tasks


class SubsetDraws:
    """The documents each task runs under ``--limit``, drawn once per evaluation so every
    model answers the same ones (see :mod:`mergemed.evaluation.sampling`)."""

    def __init__(self, manager: Any, settings: EvalSettings):
        self.manager = manager
        self.settings = settings
        self.drawn: dict[str, list[int] | None] = {}
        self.loaded: dict[str, Any] = {}

    def task(self, name: str) -> Any:
        """The lm-eval task object (its documents loaded once)."""
        if name not in self.loaded:
            try:
                self.loaded[name] = self.manager.load([name])["tasks"][name]
            except Exception as error:  # the task's data loader: state it in one line
                raise _task_error(name, error) from None
        return self.loaded[name]

    def __call__(self, task: str) -> list[int] | None:
        """The task's document indices, or None for all of them."""
        if self.settings.limit is None:
            return None
        if task not in self.drawn:
            loaded = self.task(task)
            group = sample_group(self.manager, task)
            self.drawn[task] = draw_sample(
                loaded, self.settings.limit, self.settings.sample_seed, group
            )
        return self.drawn[task]


def _expand_groups(manager: Any, members: list[Member]) -> list[Member]:
    """Replace groups among a member's tasks by their leaf tasks (e.g. ``mmlu``)."""
    expanded = []
    for member in members:
        leaves: list[str] = []
        for task in member.tasks:
            if task not in manager.task_index:
                if member.suite is not None and "hub_only" in member.flags:
                    leaves.append(task)  # decided (skipped or run) per model below
                    continue
                raise unknown_task(manager, task)
            leaves += [t for t in leaf_tasks(manager, task) if t not in leaves]
        expanded.append(
            Member(
                member.name, tuple(leaves), member.kind, member.suite, member.flags, member.baseline
            )
        )
    return expanded


def _offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.lower() in ("1", "true", "yes") for f in flags)


def _data_dir(settings: EvalSettings) -> Path | None:
    if settings.data_dir is not None:
        return settings.data_dir
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser().absolute() if value else None


def _has_local_data(manager: Any, task: str, data_dir: Path | None) -> bool:
    """A local copy the task's own loader will read (lm-eval's own tasks read none)."""
    name = local_data_name(manager, task)
    return data_dir is not None and name is not None and (data_dir / name).is_dir()


def _skip_reasons(
    candidate: Candidate, comparison: Comparison
) -> tuple[dict[str, str], dict[str, Fit]]:
    """Why each task cannot run on this model (unknown, data offline, too long), and what the
    others need to fit its context; from the tokenizer and config only."""
    settings, manager, members = comparison.settings, comparison.manager, comparison.members
    samples = comparison.samples
    reasons: dict[str, str] = {}
    data_dir = _data_dir(settings)
    long_context: list[str] = []
    for member in members:
        for task in run_tasks(member):
            if task not in manager.task_index:
                reasons[task] = "task not known to this lm-eval version"
                continue
            flags = task_flags(manager, task, member)
            if "long_context" in flags:
                long_context.append(task)
            if member.suite is None or "hub_only" not in flags:
                continue
            if _offline() and not _has_local_data(manager, task, data_dir):
                reasons[task] = (
                    "its data is on the Hugging Face Hub and the Hub is offline; "
                    "give a local copy with --data-dir"
                )
    if long_context:
        from mergemed.evaluation.longctx import lengths_that_fit

        _, skipped = lengths_that_fit(
            long_context,
            load_tokenizer(candidate, settings.backend),
            max_length(candidate, settings.backend),
            data_dir=data_dir,
            samples={task: samples(task) for task in long_context},
        )
        for task, reason in dict(skipped).items():
            reasons.setdefault(task, reason.removeprefix(f"{task}: ").removesuffix("; skipped"))
    fits: dict[str, Fit] = {}
    tokenizer = load_tokenizer(candidate, settings.backend)
    own_template = getattr(tokenizer, "chat_template", None) or None
    limit = max_length(candidate, settings.backend)
    for task in dict.fromkeys(t for m in members for t in run_tasks(m)):
        if task in reasons or task in long_context:
            continue
        uses = comparison.prompt_format.uses_template(_output_type(manager, task), own_template)
        template = comparison.prompt_format.template_for(own_template) if uses else None
        fits[task] = check_fit(
            samples.task(task),
            samples(task),
            token_counter(tokenizer, template),
            limit,
            gen_kwargs=settings.gen_kwargs,
        )
        if fits[task].skip:
            reasons[task] = fits[task].skip
    return reasons, fits


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class Comparison:
    """What every model of one evaluation shares: settings, tasks, document samples, the
    prompt format and where results go."""

    settings: EvalSettings
    manager: Any
    members: list[Member]
    samples: SubsetDraws
    prompt_format: PromptFormat
    store: ResultsStore | None
    emit: EventCallback
    skips: dict[str, dict[str, str]] = field(default_factory=dict)
    """model label -> task -> why it is skipped."""
    fits: dict[str, dict[str, Fit]] = field(default_factory=dict)
    """model label -> task -> what fitting it into that model's context needs."""

    def new_tokens_cap(self, task: str) -> int | None:
        """The ``max_gen_toks`` cap of a generation task, the same for every model (the
        smallest any model needs), or None when every model fits the task as it is."""
        caps = [f[task].max_gen_toks for f in self.fits.values() if task in f]
        caps = [c for c in caps if c is not None]
        return min(caps) if caps else None


def _output_type(manager: Any, task: str) -> str:
    entry = manager.task_index.get(task)
    return str(((entry.cfg if entry else None) or {}).get("output_type", GENERATION))


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
    data_dir = _data_dir(settings)
    base_settings: dict[str, Any] = {
        "lm_eval": _version("lm_eval"),
        "data_dir": folder_fingerprint(data_dir) if data_dir is not None else None,
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
            _output_type(manager, task), own_template
        )
        task_settings = {
            **base_settings,
            **settings.score_settings(chat_template=templated[task]),
            "chat_template_sha256": template_hash(template) if templated[task] else None,
        }
        if (cap := comparison.new_tokens_cap(task)) is not None:
            task_settings["gen_kwargs"] = _with_new_tokens(settings.gen_kwargs, cap)
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
        if store is not None and (stored := store.get(key)) is not None:
            blocks[task] = stored
            evaluation.cached.append(task)
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
        for task in missing:
            emit("task_start", {"label": candidate.label, "task": task})
            begin = time.time()
            arguments = {
                **settings.lm_eval_arguments(templated[task]),
                "gen_kwargs": keys[task][1]["gen_kwargs"],
                "samples": {task: indices} if (indices := samples(task)) is not None else None,
            }
            output = _run_task(lm, task, manager, arguments)
            seconds = time.time() - begin
            block = _task_block(output, task)
            blocks[task] = block
            evaluation.evaluated.append(task)
            if store is not None:
                key, task_settings = keys[task]
                store.put(
                    key, block, model_label=candidate.label, settings=task_settings, seconds=seconds
                )
            emit("task_done", {"label": candidate.label, "task": task, "seconds": seconds})
        del lm
    for task in wanted:
        _add_block(evaluation, task, blocks[task])
    return evaluation


def _with_new_tokens(gen_kwargs: str | None, cap: int) -> str:
    """``gen_kwargs`` with ``max_gen_toks`` set to ``cap``."""
    items = [i for i in (gen_kwargs or "").split(",") if i.strip()]
    kept = [i for i in items if i.partition("=")[0].strip() != "max_gen_toks"]
    return ",".join([*kept, f"max_gen_toks={cap}"])


def _add_block(evaluation: ModelEvaluation, task: str, block: Mapping[str, Any]) -> None:
    for section, name in (
        ("results", "results"),
        ("versions", "version"),
        ("n-samples", "n-samples"),
        ("configs", "config"),
        ("higher_is_better", "higher_is_better"),
        ("per_sample", "per_sample"),
    ):
        if name in block:
            evaluation.lm_eval.setdefault(section, {})[task] = block[name]


def _run_task(lm: Any, task: str, manager: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
    import lm_eval

    try:
        output = lm_eval.simple_evaluate(
            model=lm, tasks=[task], task_manager=manager, log_samples=True, **arguments
        )
    except MergemedError:
        raise
    except Exception as error:  # lm-eval and datasets raise many kinds; state it in one line
        raise _task_error(task, error) from None
    if output is None or task not in output.get("results", {}):
        raise MergemedError(f"task {task}: lm-eval returned no result")
    return output


def _task_error(task: str, error: Exception) -> Exception:
    """What to raise for an error inside lm-eval or a task: one redacted line, or (with
    ``MERGEMED_DEBUG``) the error itself with its traceback and its secrets masked."""
    if isinstance(error, MergemedError):
        return error
    if os.environ.get("MERGEMED_DEBUG"):
        _redact_message(error)
        return error
    return MergemedError(
        redact(f"task {task}: {type(error).__name__}: {first_line(error)}")
        + " (MERGEMED_DEBUG=1 shows the traceback)"
    )


def _redact_message(error: BaseException) -> None:
    """Take secrets out of an error's message and notes (its traceback is kept)."""
    error.args = tuple(redact(a) if isinstance(a, str) else a for a in error.args)
    if getattr(error, "__notes__", None):
        error.__notes__ = [redact(str(note)) for note in error.__notes__]


def _task_block(output: Mapping[str, Any], task: str) -> dict[str, Any]:
    """One task's part of lm-eval's output, JSON-safe."""
    block = {
        "results": output["results"][task],
        "version": output.get("versions", {}).get(task),
        "n-samples": output.get("n-samples", {}).get(task),
        "config": output.get("configs", {}).get(task),
        "higher_is_better": output.get("higher_is_better", {}).get(task),
        "per_sample": per_sample_scores(output.get("samples", {}).get(task) or []),
    }
    return json.loads(json.dumps(block, default=str))


def per_sample_scores(logged: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """lm-eval's logged samples reduced to what paired statistics need: ``doc_id`` and, per
    ``metric,filter``, each document's value (in ``doc_id`` order; prompts and responses are
    not kept)."""
    by_filter: dict[str, list[Mapping[str, Any]]] = {}
    for sample in logged:
        by_filter.setdefault(str(sample.get("filter", "none")), []).append(sample)
    scores: dict[str, list[Any]] = {}
    for filter_name, rows in by_filter.items():
        rows = sorted(rows, key=lambda r: r["doc_id"])
        scores.setdefault("doc_id", [r["doc_id"] for r in rows])
        for metric in rows[0].get("metrics", []) if rows else []:
            scores[f"{metric},{filter_name}"] = [r.get(metric) for r in rows]
    return scores


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


def _quiet_lm_eval_logging() -> None:
    """lm-eval warns at every task about things mergemed has settled (custom loaders,
    pretrained objects); its errors still show."""
    if not os.environ.get("MERGEMED_DEBUG"):
        for name in ("lm-eval", "lm_eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
    # The report lists skipped lengths once; the module's own warning would repeat them.
    logging.getLogger("mergemed.evaluation.longctx").setLevel(logging.ERROR)
