"""The figures that answer "what did this merge gain in medicine, and what did it forget?".

For a merged model M with parents C (clinical, continually pretrained) and I (instruct):

* a task's score is its primary lm-eval metric (``acc`` for multiple choice,
  ``prompt_level_strict_acc`` for IFEval-style tasks), with lm-eval's stderr;
* a suite member's score is the mean of its tasks (a group such as the six MMLU medical
  subjects counts once), weighted by the tasks' document counts where the member says so (as
  lm-eval weights MMLU), else unweighted;
* the domain score is the plain mean of its tasks (as the Open Medical-LLM Leaderboard
  averages its nine), the general score the unweighted mean of its members;
* a perplexity member (lower is better) is reported on its own with its change M − I
  (positive: M got worse), never averaged with accuracies;
* **domain gain** = domain(M) − domain(I);
* **domain retention** = domain(M) / domain(C);
* **forgetting** = general(I) − general(M) (positive: M lost ability I had).

Standard errors propagate from lm-eval's per-task stderr, treating tasks as independent: a
mean of n scores has stderr sqrt(Σ se²)/n, a difference sqrt(se_a² + se_b²), and a ratio a/b
the delta-method sqrt((se_a/b)² + (a·se_b/b²)²). A score whose stderr lm-eval did not report
makes every figure built on it carry ``stderr=None``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Score:
    """A value with its standard error (None when unknown)."""

    value: float
    stderr: float | None = None

    def __str__(self) -> str:
        if self.stderr is None:
            return f"{self.value:.4f}"
        return f"{self.value:.4f} ± {self.stderr:.4f}"


def mean(scores: Sequence[Score]) -> Score:
    """Unweighted mean of independent scores."""
    if not scores:
        raise ValueError("mean of no scores")
    value = sum(s.value for s in scores) / len(scores)
    if any(s.stderr is None for s in scores):
        return Score(value, None)
    return Score(value, math.sqrt(sum(s.stderr**2 for s in scores)) / len(scores))


def weighted_mean(scores: Sequence[Score], sizes: Sequence[int]) -> Score:
    """Mean of independent scores weighted by ``sizes``: stderr ``sqrt(Σ (n_i·se_i)²)/Σ n_i``."""
    if not scores or len(scores) != len(sizes) or sum(sizes) <= 0:
        raise ValueError("weighted mean needs one positive size per score")
    total = sum(sizes)
    value = math.fsum(n * s.value for n, s in zip(sizes, scores, strict=True)) / total
    if any(s.stderr is None for s in scores):
        return Score(value, None)
    spread = math.fsum((n * s.stderr) ** 2 for n, s in zip(sizes, scores, strict=True))
    return Score(value, math.sqrt(spread) / total)


def difference(first: Score, second: Score) -> Score:
    """``first − second`` for independent scores."""
    value = first.value - second.value
    if first.stderr is None or second.stderr is None:
        return Score(value, None)
    return Score(value, math.hypot(first.stderr, second.stderr))


def ratio(numerator: Score, denominator: Score) -> Score | None:
    """``numerator / denominator`` (delta method); None when the denominator is 0."""
    if denominator.value == 0:
        return None
    value = numerator.value / denominator.value
    if numerator.stderr is None or denominator.stderr is None:
        return Score(value, None)
    stderr = math.hypot(
        numerator.stderr / denominator.value,
        numerator.value * denominator.stderr / denominator.value**2,
    )
    return Score(value, abs(stderr))


@dataclass
class TaskComparison:
    """One task (or suite member) across the models, with the merge's change on it."""

    name: str
    kind: str  # "domain", "general" or "perplexity"
    scores: dict[str, Score]
    change: Score | None = None
    """domain: M − I (gain); general: I − M (forgetting); perplexity: M − I (positive: M is
    worse); None without both models."""
    tasks: tuple[str, ...] = ()
    """The tasks the member's score averages."""
    weighting: str = "unweighted"
    """``size-weighted`` (by documents, as lm-eval weights MMLU) or ``unweighted``."""
    method: str | None = None
    """How ``change``'s stderr was computed: ``paired`` (same documents, per-sample
    differences) or ``independent`` (sqrt(se_a² + se_b²))."""
    test: str | None = None
    """The paired test of ``change`` ≠ 0 (McNemar for 0/1 scores, else a paired bootstrap)."""
    significant: bool | None = None
    """Whether ``test`` rejects "no difference" at the 5% level."""


@dataclass
class TradeOff:
    """The summary figures; None where a needed model or task is missing."""

    merged: str
    clinical: str | None
    instruct: str | None
    domain: dict[str, Score] = field(default_factory=dict)
    general: dict[str, Score] = field(default_factory=dict)
    domain_gain: Score | None = None
    domain_retention: Score | None = None
    forgetting: Score | None = None
    members: list[TaskComparison] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)
    """How each summary figure's stderr was computed, and which tasks or members it holds."""

    def as_dict(self) -> dict:
        def plain(score: Score | None):
            return None if score is None else {"value": score.value, "stderr": score.stderr}

        return {
            "merged": self.merged,
            "clinical": self.clinical,
            "instruct": self.instruct,
            "domain_score": {k: plain(v) for k, v in self.domain.items()},
            "general_score": {k: plain(v) for k, v in self.general.items()},
            "domain_gain": plain(self.domain_gain),
            "domain_retention": plain(self.domain_retention),
            "forgetting": plain(self.forgetting),
            "methods": self.methods,
            "per_task": [
                {
                    "task": m.name,
                    "kind": m.kind,
                    "tasks": list(m.tasks),
                    "weighting": m.weighting,
                    "scores": {k: plain(v) for k, v in m.scores.items()},
                    _CHANGE_NAMES[m.kind]: plain(m.change),
                    "method": m.method,
                    "test": m.test,
                    "significant": m.significant,
                }
                for m in self.members
            ],
        }


_CHANGE_NAMES = {"domain": "gain", "general": "forgetting", "perplexity": "change"}


def summarise(
    task_scores: Mapping[str, Mapping[str, Score]],
    *,
    domain: Mapping[str, Sequence[str]],
    general: Mapping[str, Sequence[str]],
    merged: str,
    clinical: str | None = None,
    instruct: str | None = None,
    per_sample: PerSample | None = None,
    perplexity: Mapping[str, Sequence[str]] | None = None,
    weighted: Collection[str] = (),
    sizes: Mapping[str, Mapping[str, int]] | None = None,
) -> TradeOff:
    """Build the trade-off figures.

    Args:
        task_scores: model label -> task name -> score.
        domain: domain suite members -> their tasks (a plain task maps to ``[itself]``).
        general: the same for general-ability (forgetting) members.
        merged, clinical, instruct: model labels of M, C and I (C and I optional).
        per_sample: model label -> task -> ``(doc_ids, values)`` of the primary metric;
            where two models have them on the same documents, their differences are paired.
        perplexity: perplexity members -> their tasks (reported each on its own).
        weighted: the members whose tasks are averaged by size.
        sizes: model label -> task -> documents scored (needed for ``weighted`` members; a
            member without every size falls back to the unweighted mean and says so).

    A member counts for a model only if all of its tasks were scored for that model; suite
    figures comparing two models use the members both have. The domain score is the plain
    mean of its tasks (as the Open Medical-LLM Leaderboard averages its nine); the general
    score the mean of its members.
    """
    result = TradeOff(merged=merged, clinical=clinical, instruct=instruct)
    member_scores: dict[str, dict[str, Score]] = {label: {} for label in task_scores}
    known_sizes = sizes or {}
    kinds = (("domain", domain), ("general", general), ("perplexity", perplexity or {}))
    for kind, members in kinds:
        for member, tasks in members.items():
            by_size = member in weighted and all(
                t in known_sizes.get(label, {}) for label in task_scores for t in tasks
            )
            scores: dict[str, Score] = {}
            for label, by_task in task_scores.items():
                if tasks and all(t in by_task for t in tasks):
                    scores[label] = _member_mean(
                        [by_task[t] for t in tasks],
                        tasks,
                        known_sizes[label] if by_size else None,
                    )
                    member_scores[label][member] = scores[label]
            if not scores:
                continue
            weighting = "size-weighted" if by_size else "unweighted"
            if member in weighted and not by_size:
                weighting = "unweighted (document counts unknown)"
            comparison = TaskComparison(
                member, kind, scores, tasks=tuple(tasks), weighting=weighting
            )
            if instruct in scores and merged in scores:
                first, second = (instruct, merged) if kind == "general" else (merged, instruct)
                sized = {t: known_sizes[first][t] for t in tasks} if by_size else None
                _compare(comparison, first, second, tasks, task_scores, per_sample or {}, sized)
            result.members.append(comparison)
    member_sizes = {
        m.name: (
            {t: known_sizes[merged][t] for t in m.tasks} if m.weighting == "size-weighted" else None
        )
        for m in result.members
    }

    def suite(label: str, members: Mapping[str, Sequence[str]], among: set[str]) -> Score | None:
        if members is domain:  # the Leaderboard's average: every task counts once
            chosen = [task_scores[label][t] for m in members if m in among for t in members[m]]
        else:
            chosen = [member_scores[label][m] for m in members if m in among]
        return mean(chosen) if chosen else None

    labels = list(task_scores)
    for label in labels:
        own = set(member_scores[label])
        if (score := suite(label, domain, own)) is not None:
            result.domain[label] = score
        if (score := suite(label, general, own)) is not None:
            result.general[label] = score

    def shared(first: str | None, second: str | None, members) -> set[str]:
        if first not in member_scores or second not in member_scores:
            return set()
        return set(member_scores[first]) & set(member_scores[second]) & set(members)

    samples = per_sample or {}
    if common := shared(merged, instruct, domain):
        tasks = [t for m in domain if m in common for t in domain[m]]
        result.domain_gain, method = _suite_change(
            merged, instruct, {t: [t] for t in tasks}, task_scores, samples
        )
        result.methods["domain_gain"] = f"{method}; plain mean of tasks: {', '.join(tasks)}"
    if common := shared(merged, clinical, domain):
        result.domain_retention = ratio(
            suite(merged, domain, common), suite(clinical, domain, common)
        )
        result.methods["domain_retention"] = "independent (delta method) over the same tasks"
    if common := shared(merged, instruct, general):
        chosen = {m: general[m] for m in general if m in common}
        result.forgetting, method = _suite_change(
            instruct, merged, chosen, task_scores, samples, member_sizes
        )
        result.methods["forgetting"] = f"{method}; mean of members: {', '.join(chosen)}"
    return result


PerSample = Mapping[str, Mapping[str, tuple[Sequence[int], Sequence[float]]]]
"""model label -> task -> (document ids, per-document primary metric)."""


def _paired_values(
    first: str, second: str, task: str, per_sample: PerSample
) -> tuple[list[float], list[float]] | None:
    """Both models' per-document values of ``task`` when they are on the same documents and
    numeric (booleans count as 0/1), else None."""
    a = per_sample.get(first, {}).get(task)
    b = per_sample.get(second, {}).get(task)
    if a is None or b is None or list(a[0]) != list(b[0]) or len(a[0]) < 2:
        return None
    values = []
    for series in (a[1], b[1]):
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in series):
            return None
        values.append([float(v) for v in series])
    return values[0], values[1]


def _member_change(
    first: str,
    second: str,
    tasks: Sequence[str],
    task_scores,
    per_sample: PerSample,
    sizes: Mapping[str, int] | None = None,
) -> tuple[Score, str, tuple[list[float], list[float]] | None]:
    """first − second on a member (mean of its tasks, by ``sizes`` when given): paired when
    every task has per-sample values on the same documents, else independent. Also the
    pooled pairs, for a test."""
    from mergemed.evaluation.paired import paired_mean_of_differences, weighted_paired_difference

    pairs = {t: _paired_values(first, second, t, per_sample) for t in tasks}
    if all(p is not None for p in pairs.values()):
        pooled = (
            [v for t in tasks for v in pairs[t][0]],
            [v for t in tasks for v in pairs[t][1]],
        )
        combine = weighted_paired_difference if sizes else paired_mean_of_differences
        return combine(pairs), "paired", pooled
    first_score = _member_mean([task_scores[first][t] for t in tasks], tasks, sizes)
    second_score = _member_mean([task_scores[second][t] for t in tasks], tasks, sizes)
    return difference(first_score, second_score), "independent", None


def _member_mean(
    scores: Sequence[Score], tasks: Sequence[str], sizes: Mapping[str, int] | None
) -> Score:
    """A member's score from its tasks' scores: by size when ``sizes`` is given."""
    return weighted_mean(scores, [sizes[t] for t in tasks]) if sizes else mean(scores)


def _compare(
    comparison: TaskComparison,
    first: str,
    second: str,
    tasks: Sequence[str],
    task_scores,
    per_sample: PerSample,
    sizes: Mapping[str, int] | None = None,
) -> None:
    from mergemed.evaluation.paired import mcnemar, paired_bootstrap, significant

    comparison.change, comparison.method, pooled = _member_change(
        first, second, tasks, task_scores, per_sample, sizes
    )
    if pooled is None:
        return
    binary = all(v in (0.0, 1.0) for series in pooled for v in series)
    test = mcnemar(*pooled) if binary else paired_bootstrap(*pooled, iterations=2000)
    comparison.test = test.describe()
    comparison.significant = significant(test)


def _suite_change(
    first: str,
    second: str,
    members: Mapping[str, Sequence[str]],
    task_scores,
    per_sample: PerSample,
    member_sizes: Mapping[str, Mapping[str, int] | None] | None = None,
) -> tuple[Score, str]:
    """first − second over a suite (mean of its members' changes). Members are different
    questions, so their changes combine as independent: sqrt(Σ se²)/k."""
    sizes = member_sizes or {}
    changes = [
        _member_change(first, second, t, task_scores, per_sample, sizes.get(m))
        for m, t in members.items()
    ]
    methods = {method for _, method, _ in changes}
    label = methods.pop() if len(methods) == 1 else "paired where available"
    return mean([score for score, _, _ in changes]), label
