"""The figures that answer "what did this merge gain in medicine, and what did it forget?".

For a merged model M with parents C (clinical, continually pretrained) and I (instruct):

* a task's score is its primary lm-eval metric (``acc`` for multiple choice,
  ``prompt_level_strict_acc`` for IFEval-style tasks), with lm-eval's stderr;
* a suite member's score is the unweighted mean of its tasks (a group such as the six MMLU
  medical subjects counts once), and a suite's score the unweighted mean of its members;
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
from collections.abc import Mapping, Sequence
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
    kind: str  # "domain" or "general"
    scores: dict[str, Score]
    change: Score | None = None
    """domain: M − I (gain); general: I − M (forgetting); None without both models."""


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
            "per_task": [
                {
                    "task": m.name,
                    "kind": m.kind,
                    "scores": {k: plain(v) for k, v in m.scores.items()},
                    "gain" if m.kind == "domain" else "forgetting": plain(m.change),
                }
                for m in self.members
            ],
        }


def summarise(
    task_scores: Mapping[str, Mapping[str, Score]],
    *,
    domain: Mapping[str, Sequence[str]],
    general: Mapping[str, Sequence[str]],
    merged: str,
    clinical: str | None = None,
    instruct: str | None = None,
) -> TradeOff:
    """Build the trade-off figures.

    Args:
        task_scores: model label -> task name -> score.
        domain: domain suite members -> their tasks (a plain task maps to ``[itself]``).
        general: the same for general-ability (forgetting) members.
        merged, clinical, instruct: model labels of M, C and I (C and I optional).

    A member counts for a model only if all of its tasks were scored for that model; suite
    figures comparing two models use the members both have.
    """
    result = TradeOff(merged=merged, clinical=clinical, instruct=instruct)
    member_scores: dict[str, dict[str, Score]] = {label: {} for label in task_scores}
    for kind, members in (("domain", domain), ("general", general)):
        for member, tasks in members.items():
            scores: dict[str, Score] = {}
            for label, by_task in task_scores.items():
                if tasks and all(t in by_task for t in tasks):
                    scores[label] = mean([by_task[t] for t in tasks])
                    member_scores[label][member] = scores[label]
            if not scores:
                continue
            comparison = TaskComparison(member, kind, scores)
            if instruct in scores and merged in scores:
                comparison.change = (
                    difference(scores[merged], scores[instruct])
                    if kind == "domain"
                    else difference(scores[instruct], scores[merged])
                )
            result.members.append(comparison)

    def suite(label: str, members: Mapping[str, Sequence[str]], among: set[str]) -> Score | None:
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

    if common := shared(merged, instruct, domain):
        result.domain_gain = difference(
            suite(merged, domain, common), suite(instruct, domain, common)
        )
    if common := shared(merged, clinical, domain):
        result.domain_retention = ratio(
            suite(merged, domain, common), suite(clinical, domain, common)
        )
    if common := shared(merged, instruct, general):
        result.forgetting = difference(
            suite(instruct, general, common), suite(merged, general, common)
        )
    return result
