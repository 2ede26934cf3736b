"""What every model of one evaluation shares, and what it is compared by.

A :class:`Comparison` holds the settings, the resolved suite members, the documents each task
runs (:class:`SubsetDraws`, drawn once so every model answers the same ones), the prompt
format, and — from each model's tokenizer and config alone, before any model loads — which
tasks it must skip and what the rest need to fit its context (:meth:`Comparison.check`).
:meth:`Comparison.trade_off` turns the models' scores into gain, retention and forgetting on
the tasks every model ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mergemed.evaluation.candidates import Candidate, load_tokenizer, max_length
from mergemed.evaluation.fit import Fit, check_fit, token_counter
from mergemed.evaluation.harness import task_error
from mergemed.evaluation.prompt_format import GENERATION, PromptFormat
from mergemed.evaluation.results import ModelEvaluation
from mergemed.evaluation.sampling import draw_sample
from mergemed.evaluation.scores import TradeOff, summarise
from mergemed.evaluation.settings import EvalSettings
from mergemed.evaluation.store import ResultsStore
from mergemed.evaluation.suites import (
    Member,
    leaf_tasks,
    local_data_name,
    sample_group,
    task_flags,
    unknown_task,
)

EventCallback = Callable[[str, Mapping[str, Any]], None]
"""Called with (event, details): ``model`` (label, cached, missing), ``task_start`` (label,
task), ``task_done`` (label, task, seconds, cached), ``skip`` (label, task, reason)."""

DATA_DIR_ENV = "MERGEMED_DATA_DIR"
"""Read (never set) when no ``data_dir`` is given, as the task loaders do under plain lm-eval."""


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
    _probed: dict[str, str | None] = field(default_factory=dict, repr=False)

    def new_tokens_cap(self, task: str) -> int | None:
        """The ``max_gen_toks`` cap of a generation task, the same for every model (the
        smallest any model needs), or None when every model fits the task as it is."""
        caps = [f[task].max_gen_toks for f in self.fits.values() if task in f]
        caps = [c for c in caps if c is not None]
        return min(caps) if caps else None

    def hub_unreachable(self) -> str | None:
        """Why the Hugging Face Hub cannot be reached, from one probe per comparison (so
        Hub-only tasks are skipped with a note instead of lm-eval retrying and aborting), or
        None when it answers."""
        if "hub" not in self._probed:
            self._probed["hub"] = probe_hub()
        return self._probed["hub"]

    def check(self, candidate: Candidate) -> None:
        """Record which tasks the model must skip and what the others need to fit its
        context, from its tokenizer and config only (before any model is loaded)."""
        self.skips[candidate.label], self.fits[candidate.label] = _skip_reasons(candidate, self)

    def trade_off(self, evaluations: list[ModelEvaluation]) -> TradeOff:
        """Gain, retention and forgetting of the merged model (``evaluations[0]``)."""
        return _trade_off(evaluations, self.members)


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
                raise task_error(name, error) from None
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


def expand_groups(manager: Any, members: list[Member]) -> list[Member]:
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
        expanded.append(replace(member, tasks=tuple(leaves)))
    return expanded


HUB_PROBE_SECONDS = 5.0


def probe_hub(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """One unauthenticated HEAD request to the Hub's endpoint (``$HF_ENDPOINT`` if set):
    None when it answers at all, else the reason in a few words."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    request = urllib.request.Request(endpoint.rstrip("/") + "/api/datasets", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as error:  # refused, timed out, no route, bad endpoint
        reason = getattr(error, "reason", None) or error
        return f"{endpoint}: {type(reason).__name__}"
    return None


def _offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.lower() in ("1", "true", "yes") for f in flags)


def data_dir(settings: EvalSettings) -> Path | None:
    """The data folder the task loaders read: ``settings.data_dir``, else ``$MERGEMED_DATA_DIR``."""
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
    local = data_dir(settings)
    long_context: list[str] = []
    for member in members:
        for task in run_tasks(member):
            if task not in manager.task_index:
                reasons[task] = "task not known to this lm-eval version"
                continue
            flags = task_flags(manager, task, member)
            if "long_context" in flags:
                long_context.append(task)
            if "hub_only" not in flags:
                continue
            if _has_local_data(manager, task, local):
                continue
            if _offline():
                reasons[task] = (
                    "its data is on the Hugging Face Hub and the Hub is offline; "
                    "give a local copy with --data-dir"
                )
            elif (unreachable := comparison.hub_unreachable()) is not None:
                reasons[task] = (
                    f"its data is on the Hugging Face Hub, which is unreachable ({unreachable}); "
                    "give a local copy with --data-dir"
                )
    if long_context:
        from mergemed.evaluation.longctx import lengths_that_fit

        _, skipped = lengths_that_fit(
            long_context,
            load_tokenizer(candidate, settings.backend),
            max_length(candidate, settings.backend),
            data_dir=local,
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
        uses = comparison.prompt_format.uses_template(output_type(manager, task), own_template)
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


def run_tasks(member: Member) -> tuple[str, ...]:
    """What a member runs: its tasks, then its baseline (if any)."""
    return (*member.tasks, member.baseline) if member.baseline else member.tasks


def output_type(manager: Any, task: str) -> str:
    """The task's lm-eval ``output_type`` (``generate_until`` when it declares none)."""
    entry = manager.task_index.get(task)
    return str(((entry.cfg if entry else None) or {}).get("output_type", GENERATION))


def _trade_off(evaluations: list[ModelEvaluation], members: list[Member]) -> TradeOff:
    # A task skipped for any model (a length beyond its context, data offline) is left out
    # of every model's member scores, so comparisons stay like for like.
    skipped_anywhere = {task for e in evaluations for task in e.skipped}
    scored_members = [
        replace(m, tasks=tuple(t for t in m.tasks if t not in skipped_anywhere)) for m in members
    ]
    task_scores = _per_task(evaluations, members, ModelEvaluation.score)
    sizes = _per_task(evaluations, members, ModelEvaluation.size)
    per_sample = _per_task(evaluations, members, ModelEvaluation.samples)
    by_role = {e.role: e.label for e in evaluations}
    for e in evaluations:
        for member in members:
            if member.baseline is not None:
                _as_drops(e, member, task_scores[e.label], per_sample[e.label])
    return summarise(
        task_scores,
        domain={m.name: m.tasks for m in scored_members if m.kind == "domain" and m.tasks},
        general={m.name: m.tasks for m in scored_members if m.kind == "general" and m.tasks},
        perplexity={m.name: m.tasks for m in scored_members if m.kind == "perplexity" and m.tasks},
        weighted={m.name for m in members if m.weight_by_size},
        sizes=sizes,
        merged=evaluations[0].label,
        clinical=by_role.get("clinical"),
        instruct=by_role.get("instruct"),
        per_sample=per_sample,
    )


def _per_task(
    evaluations: list[ModelEvaluation],
    members: list[Member],
    value: Callable[[ModelEvaluation, str], Any],
) -> dict[str, dict[str, Any]]:
    """model label -> task -> ``value(evaluation, task)``, for the members' tasks that have one."""
    return {
        e.label: {
            task: found
            for member in members
            for task in member.tasks
            if (found := value(e, task)) is not None
        }
        for e in evaluations
    }


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
