"""``evaluate()``: score a merged model and its parents with lm-eval, reusing stored results.

For each model: find which (task, settings) pairs the results store already holds for its
weights; load the model only if something is missing; run each missing task through
``lm_eval.simple_evaluate`` exactly as a direct call would (same task objects, limit, chat
template and generation settings); store each task's result as soon as it is done, so an
interrupted evaluation resumes where it stopped. Then turn the scores into the trade-off
figures of :mod:`mergemed.evaluate.scores`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mergemed.errors import MergemedError
from mergemed.evaluate.backends import (
    BackendSettings,
    check_model_folder,
    load_in_memory_model,
    make_lm,
)
from mergemed.evaluate.identity import (
    folder_weights_hash,
    state_dict_weights_hash,
    tokenizer_hash,
)
from mergemed.evaluate.scores import Score, TradeOff, summarise
from mergemed.evaluate.store import ResultKey, ResultsStore, default_store_path, settings_hash
from mergemed.evaluate.suites import (
    HUB_ONLY,
    SUITES,
    Member,
    resolve_members,
    task_manager,
    task_version,
    unknown_task,
)

ROLES = ("clinical", "instruct")
"""Roles of ``against`` models given without one, in order."""

IFEVAL_TASKS = ("ifeval", "ifeval_med")

EventCallback = Callable[[str, Mapping[str, Any]], None]
"""Called with (event, details): ``model`` (label, cached, missing), ``task_start`` (label,
task), ``task_done`` (label, task, seconds, cached), ``skip`` (label, task, reason)."""


@dataclass
class ModelEvaluation:
    """One model's results: lm-eval's own result blocks per task, and where they came from."""

    label: str
    role: str
    source: str
    weights_hash: str
    lm_eval: dict[str, Any] = field(default_factory=dict)
    """``{"results", "versions", "n-samples", "configs", "higher_is_better"}`` as lm-eval
    returns them, merged over the tasks evaluated now and those read from the store."""
    cached: list[str] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def score(self, task: str) -> Score | None:
        """The task's primary metric, or None if it was not scored."""
        if task not in self.lm_eval.get("results", {}):
            return None
        return primary_score(
            self.lm_eval["results"][task], self.lm_eval.get("configs", {}).get(task, {})
        )


@dataclass
class EvaluationReport:
    """Everything ``mergemed evaluate`` shows and writes."""

    models: list[ModelEvaluation]
    members: list[Member]
    trade_off: TradeOff
    seconds: float
    store_path: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "models": {
                m.label: {
                    "role": m.role,
                    "source": m.source,
                    "weights_sha256": m.weights_hash,
                    "settings": m.settings,
                    "cached_tasks": m.cached,
                    "evaluated_tasks": m.evaluated,
                    "skipped_tasks": m.skipped,
                    "lm_eval": m.lm_eval,
                }
                for m in self.models
            },
            "members": [
                {"name": m.name, "kind": m.kind, "suite": m.suite, "tasks": list(m.tasks)}
                for m in self.members
            ],
            "summary": self.trade_off.as_dict(),
            "seconds": round(self.seconds, 3),
            "results_store": self.store_path,
        }


def primary_score(block: Mapping[str, Any], config: Mapping[str, Any]) -> Score | None:
    """A task's headline number: the first metric of its ``metric_list`` (first filter)."""
    metrics = [
        m["metric"] for m in config.get("metric_list") or [] if isinstance(m.get("metric"), str)
    ]
    keys = [k for k in block if "," in k and not k.split(",", 1)[0].endswith("_stderr")]
    keys = [k for k in keys if isinstance(block[k], (int, float))]
    for metric in [*metrics, None]:
        for key in keys:
            name, _, filter_name = key.partition(",")
            if metric is None or name == metric:
                stderr = block.get(f"{name}_stderr,{filter_name}")
                known = isinstance(stderr, (int, float))
                return Score(float(block[key]), float(stderr) if known else None)
    return None


def _parse_against(against: Sequence[str | Path] | Mapping[str, str | Path]) -> list[tuple]:
    if isinstance(against, Mapping):
        return [(role, str(path)) for role, path in against.items()]
    parsed, free_roles = [], list(ROLES)
    explicit = []
    for item in against:
        text = str(item)
        role, sep, path = text.partition("=")
        if sep and role in (*ROLES, "other") and path:
            explicit.append((role, path))
        else:
            parsed.append([None, text])
    for role, _ in explicit:
        if role in free_roles:
            free_roles.remove(role)
    for entry in parsed:
        entry[0] = free_roles.pop(0) if free_roles else "other"
    return explicit + [tuple(e) for e in parsed]


def _check_limit(limit: float | None) -> None:
    if limit is None:
        return
    if limit <= 0:
        raise MergemedError(f"--limit {limit}: expected a positive number of examples")
    if limit != int(limit) and limit >= 1:
        raise MergemedError(f"--limit {limit}: expected a whole number, or a fraction below 1")


@dataclass
class _Candidate:
    label: str
    role: str
    source: str
    folder: Path | None = None
    model: Any = None
    tokenizer: Any = None
    in_memory: Any = None
    weights_hash: str = ""
    tokenizer_folder: Path | None = None

    def close(self) -> None:
        if self.in_memory is not None:
            self.in_memory.cleanup()


def evaluate(
    model: str | Path | Any,
    *,
    against: Sequence[str | Path] | Mapping[str, str | Path] = (),
    suites: Sequence[str] = (),
    tasks: Sequence[str] = (),
    backend: BackendSettings | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    chat_template: Literal["auto", "on", "off"] = "auto",
    gen_kwargs: str | None = None,
    include: Sequence[str | Path] = (),
    data_dir: str | Path | None = None,
    store: ResultsStore | str | Path | bool | None = None,
    json_path: str | Path | None = None,
    tokenizer: Any = None,
    allow_pickle: bool = False,
    bootstrap_iters: int = 100_000,
    on_event: EventCallback | None = None,
) -> EvaluationReport:
    """Evaluate a merged model (and the models it is compared against) on lm-eval tasks.

    Args:
        model: a model folder, a recipe YAML (merged in memory, nothing written), a loaded
            ``transformers`` model (pass ``tokenizer`` too), or an ``InMemoryMerge``.
        against: parents to compare with: paths in the order clinical, instruct, or
            ``"clinical=PATH"`` / ``"instruct=PATH"`` (or a role -> path mapping).
        suites: ``medical`` (domain) and/or ``forgetting`` (general abilities).
        tasks: further lm-eval task, group or tag names.
        backend: backend settings (default: transformers, CUDA when present).
        limit: examples per task (a whole number, or a fraction below 1).
        num_fewshot: few-shot examples (None: each task's default).
        chat_template: ``auto`` uses a model's chat template when its tokenizer has one.
        gen_kwargs: lm-eval generation arguments for generative tasks (``"max_gen_toks=64"``).
        include: folders of the user's own lm-eval task YAMLs.
        data_dir: where local task data is looked for first (``$MERGEMED_DATA_DIR``).
        store: the results store: a path, a :class:`ResultsStore`, None for the default
            (``~/.cache/mergemed/results.sqlite``), or False to neither read nor write one.
        json_path: also write the report as JSON there.
        bootstrap_iters: lm-eval's bootstrap iterations for stderr of non-mean metrics.
        on_event: progress callback (see :data:`EventCallback`).

    Raises:
        MergemedError: bad models, task names, data or settings; one line each.
    """
    # Task loaders read the data folder from the environment (they also run under plain
    # lm_eval); set it for this call only.
    previous = os.environ.get("MERGEMED_DATA_DIR")
    try:
        return _evaluate(
            model,
            against=against,
            suites=suites,
            tasks=tasks,
            backend=backend,
            limit=limit,
            num_fewshot=num_fewshot,
            chat_template=chat_template,
            gen_kwargs=gen_kwargs,
            include=include,
            data_dir=data_dir,
            store=store,
            json_path=json_path,
            tokenizer=tokenizer,
            allow_pickle=allow_pickle,
            bootstrap_iters=bootstrap_iters,
            on_event=on_event,
        )
    finally:
        if previous is None:
            os.environ.pop("MERGEMED_DATA_DIR", None)
        else:
            os.environ["MERGEMED_DATA_DIR"] = previous


def _evaluate(
    model,
    *,
    against,
    suites,
    tasks,
    backend,
    limit,
    num_fewshot,
    chat_template,
    gen_kwargs,
    include,
    data_dir,
    store,
    json_path,
    tokenizer,
    allow_pickle,
    bootstrap_iters,
    on_event,
) -> EvaluationReport:
    started = time.time()
    backend = backend or BackendSettings()
    _check_limit(limit)
    if chat_template not in ("auto", "on", "off"):
        raise MergemedError(f"--chat-template {chat_template}: expected auto, on or off")
    if not suites and not tasks:
        raise MergemedError("nothing to evaluate: give --suite and/or --tasks")
    if data_dir is not None:
        folder = Path(data_dir).expanduser().absolute()
        if not folder.is_dir():
            raise MergemedError(f"--data-dir {data_dir}: not a folder")
        os.environ["MERGEMED_DATA_DIR"] = str(folder)
    emit = on_event or (lambda event, details: None)
    _quiet_lm_eval_logging()
    wanted_names = [t for s in suites for m in SUITES.get(s, {}).values() for t in m]
    manager = task_manager(include, names=[*wanted_names, *tasks])
    members = resolve_members(manager, suites, tasks)
    members = _expand_groups(manager, members)
    results_store = _open_store(store)

    candidates = [_candidate(model, "merged", tokenizer, backend, allow_pickle)]
    for role, path in _parse_against(against):
        candidates.append(_candidate(path, role, None, backend, allow_pickle))
    _unique_labels(candidates)

    evaluations: list[ModelEvaluation] = []
    try:
        for candidate in candidates:
            evaluations.append(
                _evaluate_one(
                    candidate,
                    members=members,
                    manager=manager,
                    backend=backend,
                    limit=limit,
                    num_fewshot=num_fewshot,
                    chat_template=chat_template,
                    gen_kwargs=gen_kwargs,
                    store=results_store,
                    bootstrap_iters=bootstrap_iters,
                    emit=emit,
                )
            )
    finally:
        for candidate in candidates:
            candidate.close()

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
    trade_off = summarise(
        task_scores,
        domain={m.name: m.tasks for m in scored_members if m.kind == "domain" and m.tasks},
        general={m.name: m.tasks for m in scored_members if m.kind == "general" and m.tasks},
        merged=evaluations[0].label,
        clinical=by_role.get("clinical"),
        instruct=by_role.get("instruct"),
    )
    report = EvaluationReport(
        models=evaluations,
        members=members,
        trade_off=trade_off,
        seconds=time.time() - started,
        store_path=str(results_store.path) if results_store else None,
    )
    if json_path is not None:
        _write_json(Path(json_path), report.as_dict())
    return report


# --------------------------------------------------------------------------------------------
# Models


def _candidate(source, role, tokenizer, backend, allow_pickle) -> _Candidate:
    from mergemed.engine import InMemoryMerge, merge_to_memory

    if isinstance(source, InMemoryMerge):
        return _from_memory(source, role, "in-memory merge")
    if not isinstance(source, (str, Path)):
        if tokenizer is None:
            raise MergemedError("a loaded model needs its tokenizer: evaluate(model, tokenizer=)")
        state = source.state_dict()
        name = getattr(getattr(source, "config", None), "_name_or_path", "") or "model"
        return _Candidate(
            label=Path(name).name or "model",
            role=role,
            source=f"loaded model ({name})",
            model=source,
            tokenizer=tokenizer,
            weights_hash=state_dict_weights_hash(state),
        )
    path = Path(source).expanduser()
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        if backend.backend == "vllm":
            raise MergemedError(
                f"{path}: --backend vllm loads models from a folder; "
                "run mergemed merge first, or evaluate the recipe with --backend hf"
            )
        merged = merge_to_memory(path, allow_pickle=allow_pickle)
        candidate = _from_memory(merged, role, f"recipe {path}")
        candidate.label = path.stem
        return candidate
    check_model_folder(path)
    return _Candidate(
        label=path.absolute().name,
        role=role,
        source=str(path.absolute()),
        folder=path.absolute(),
        weights_hash=folder_weights_hash(path, allow_pickle=allow_pickle),
        tokenizer_folder=path.absolute(),
    )


def _from_memory(merged: Any, role: str, source: str) -> _Candidate:
    return _Candidate(
        label="merged",
        role=role,
        source=source,
        in_memory=merged,
        weights_hash=state_dict_weights_hash(merged.state_dict),
        tokenizer_folder=merged.folder,
    )


def _unique_labels(candidates: list[_Candidate]) -> None:
    seen: dict[str, int] = {}
    for candidate in candidates:
        count = seen.get(candidate.label, 0)
        seen[candidate.label] = count + 1
        if count:
            candidate.label = f"{candidate.label}-{count + 1}"


def _load_tokenizer(candidate: _Candidate, backend: BackendSettings) -> Any:
    if candidate.tokenizer is not None:
        return candidate.tokenizer
    from transformers import AutoTokenizer

    try:
        candidate.tokenizer = AutoTokenizer.from_pretrained(
            candidate.tokenizer_folder, trust_remote_code=backend.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise MergemedError(
            f"{candidate.tokenizer_folder}: cannot load the tokenizer: {_first_line(error)}"
        ) from None
    return candidate.tokenizer


def _max_length(candidate: _Candidate, backend: BackendSettings) -> int:
    """The prompt length the backend will allow: ``--max-length``, else what lm-eval's HFLM
    reads from the config and tokenizer (see :func:`longctx.model_max_length`)."""
    from mergemed.evaluate.longctx import model_max_length

    if backend.max_length is not None:
        return backend.max_length
    if candidate.model is not None:
        config = candidate.model.config
    else:
        from transformers import AutoConfig

        folder = candidate.folder or candidate.in_memory.folder
        config = AutoConfig.from_pretrained(folder, trust_remote_code=backend.trust_remote_code)
    return model_max_length(config, _load_tokenizer(candidate, backend))


# --------------------------------------------------------------------------------------------
# Tasks


def _expand_groups(manager: Any, members: list[Member]) -> list[Member]:
    """Replace groups among a member's tasks by their leaf tasks (e.g. ``mmlu``)."""
    from mergemed.evaluate.suites import leaf_tasks

    expanded = []
    for member in members:
        leaves: list[str] = []
        for task in member.tasks:
            if task not in manager.task_index:
                if member.suite is not None and member.name in HUB_ONLY:
                    leaves.append(task)  # decided (skipped or run) per model below
                    continue
                raise unknown_task(manager, task)
            leaves += [t for t in leaf_tasks(manager, task) if t not in leaves]
        expanded.append(Member(member.name, tuple(leaves), member.kind, member.suite))
    return expanded


def _offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.lower() in ("1", "true", "yes") for f in flags)


def _has_local_data(task: str, member: str) -> bool:
    """A local copy under ``$MERGEMED_DATA_DIR`` (folders take lm-eval's task names)."""
    root = os.environ.get("MERGEMED_DATA_DIR")
    names = (task.removeprefix("mm_"), task, member)
    return bool(root) and any((Path(root) / name).exists() for name in names)


def _skip_reasons(
    candidate: _Candidate,
    members: list[Member],
    manager: Any,
    backend: BackendSettings,
    limit: float | None,
) -> dict[str, str]:
    reasons: dict[str, str] = {}
    for member in members:
        for task in member.tasks:
            if member.suite is not None and member.name in HUB_ONLY:
                if task not in manager.task_index:
                    reasons[task] = "task not known to this lm-eval version"
                elif _offline() and not _has_local_data(task, member.name):
                    reasons[task] = (
                        "its data is on the Hugging Face Hub and the Hub is offline; "
                        "give a local copy with --data-dir"
                    )
    long_context = [t for m in members for t in m.tasks if t.startswith("pubmedqa_longctx_")]
    if long_context:
        from mergemed.evaluate.longctx import lengths_that_fit

        _, skipped = lengths_that_fit(
            long_context,
            _load_tokenizer(candidate, backend),
            _max_length(candidate, backend),
            limit=int(limit) if limit is not None and limit >= 1 else None,
        )
        for task, reason in dict(skipped).items():
            reasons.setdefault(task, reason.removeprefix(f"{task}: ").removesuffix("; skipped"))
    return reasons


# --------------------------------------------------------------------------------------------
# Running


def _evaluate_one(
    candidate: _Candidate,
    *,
    members: list[Member],
    manager: Any,
    backend: BackendSettings,
    limit: float | None,
    num_fewshot: int | None,
    chat_template: str,
    gen_kwargs: str | None,
    store: ResultsStore | None,
    bootstrap_iters: int,
    emit: EventCallback,
) -> ModelEvaluation:
    tokenizer = _load_tokenizer(candidate, backend)
    use_template = chat_template == "on" or (
        chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    )
    if use_template and not getattr(tokenizer, "chat_template", None):
        raise MergemedError(
            f"{candidate.source}: --chat-template on, but the tokenizer has no chat template"
        )
    base_settings: dict[str, Any] = {
        "lm_eval": _version("lm_eval"),
        **backend.key(),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "chat_template": use_template,
        "gen_kwargs": gen_kwargs,
        "tokenizer_sha256": tokenizer_hash(candidate.tokenizer_folder)
        if candidate.tokenizer_folder
        else None,
        "data_dir": os.environ.get("MERGEMED_DATA_DIR"),
        "bootstrap_iters": bootstrap_iters,
    }
    evaluation = ModelEvaluation(
        label=candidate.label,
        role=candidate.role,
        source=candidate.source,
        weights_hash=candidate.weights_hash,
        settings=base_settings,
    )
    evaluation.skipped = _skip_reasons(candidate, members, manager, backend, limit)
    for task, reason in evaluation.skipped.items():
        emit("skip", {"label": candidate.label, "task": task, "reason": reason})
    wanted = [
        t for m in members for t in m.tasks if t not in evaluation.skipped
    ]  # members' tasks are disjoint after expansion, but keep order and drop repeats
    wanted = list(dict.fromkeys(wanted))

    keys: dict[str, tuple[ResultKey, dict[str, Any]]] = {}
    blocks: dict[str, dict[str, Any]] = {}
    for task in wanted:
        settings = dict(base_settings)
        if task in IFEVAL_TASKS:
            from mergemed.evaluate.punkt import ensure_punkt

            settings["punkt"] = ensure_punkt()
        key = ResultKey(
            candidate.weights_hash, task, task_version(manager, task), settings_hash(settings)
        )
        keys[task] = (key, settings)
        if store is not None and (stored := store.get(key)) is not None:
            blocks[task] = stored
            evaluation.cached.append(task)
    missing = [t for t in wanted if t not in blocks]
    emit("model", {"label": candidate.label, "cached": evaluation.cached, "missing": missing})

    if missing:
        lm = _build_lm(candidate, backend, tokenizer)
        for task in missing:
            emit("task_start", {"label": candidate.label, "task": task})
            begin = time.time()
            if task in IFEVAL_TASKS:
                from mergemed.evaluate.punkt import ensure_punkt

                ensure_punkt()
            output = _run_task(
                lm,
                task,
                manager,
                limit=limit,
                num_fewshot=num_fewshot,
                apply_chat_template=use_template,
                gen_kwargs=gen_kwargs,
                bootstrap_iters=bootstrap_iters,
            )
            seconds = time.time() - begin
            block = _task_block(output, task)
            blocks[task] = block
            evaluation.evaluated.append(task)
            if store is not None:
                key, settings = keys[task]
                store.put(
                    key, block, model_label=candidate.label, settings=settings, seconds=seconds
                )
            emit("task_done", {"label": candidate.label, "task": task, "seconds": seconds})
        del lm
    for task in wanted:
        block = blocks[task]
        for section, name in (
            ("results", "results"),
            ("versions", "version"),
            ("n-samples", "n-samples"),
            ("configs", "config"),
            ("higher_is_better", "higher_is_better"),
        ):
            if name in block:
                evaluation.lm_eval.setdefault(section, {})[task] = block[name]
    return evaluation


def _build_lm(candidate: _Candidate, backend: BackendSettings, tokenizer: Any) -> Any:
    if candidate.in_memory is not None and candidate.model is None:
        candidate.model = load_in_memory_model(candidate.in_memory, backend.resolved_device())
    if candidate.model is not None:
        if backend.backend == "vllm":
            raise MergemedError(
                "--backend vllm: vLLM loads models from a folder; use --backend hf for a model "
                "in memory"
            )
        return make_lm(backend, model=candidate.model, tokenizer=tokenizer)
    return make_lm(backend, folder=candidate.folder)


def _run_task(lm: Any, task: str, manager: Any, **settings: Any) -> dict[str, Any]:
    import lm_eval

    try:
        output = lm_eval.simple_evaluate(
            model=lm, tasks=[task], task_manager=manager, log_samples=False, **settings
        )
    except MergemedError:
        raise
    except Exception as error:  # lm-eval and datasets raise many kinds; state it in one line
        if os.environ.get("MERGEMED_DEBUG"):
            raise
        raise MergemedError(
            f"task {task}: {type(error).__name__}: {_first_line(error)} "
            "(MERGEMED_DEBUG=1 shows the traceback)"
        ) from None
    if output is None or task not in output.get("results", {}):
        raise MergemedError(f"task {task}: lm-eval returned no result")
    return output


def _task_block(output: Mapping[str, Any], task: str) -> dict[str, Any]:
    """One task's part of lm-eval's output, JSON-safe."""
    block = {
        "results": output["results"][task],
        "version": output.get("versions", {}).get(task),
        "n-samples": output.get("n-samples", {}).get(task),
        "config": output.get("configs", {}).get(task),
        "higher_is_better": output.get("higher_is_better", {}).get(task),
    }
    return json.loads(json.dumps(block, default=str))


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
    logging.getLogger("mergemed.evaluate.longctx").setLevel(logging.ERROR)
