"""Multi-fidelity scoring: a candidate is scored on small samples first and goes on to the
next, larger sample only while no other candidate beats it significantly.

A rung is one sample size of ``score.fidelity`` (then ``score.limit``, the full sample). At
every rung each task's sample is the same stratified draw for every candidate, so two
candidates' scores there are paired document by document. After a candidate is scored at a
rung below the full one, it is compared with every candidate already scored at that rung: it
stops (an Optuna ``PRUNED`` trial, its figures kept) when another is at least as good on every
objective and better on one by more than ``Z`` paired standard errors of the difference. The
difference is computed by :func:`mergemed.evaluation.scores.summarise` with the other
candidate in the instruct parent's place, so it is the same paired statistic as a merge's gain
and forgetting (per-document differences; members combined as independent).

What that saves is counted in documents scored per candidate (the parents are scored once per
rung and cached in the run's results store).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from mergemed.evaluation.scores import Score, summarise

Z = 1.96
"""Standard errors a difference must clear: a two-sided 5% level."""

RungRecord = dict[str, Any]
"""What a trial keeps per rung: the candidate's per-task scores, sizes and per-document values,
and the suite members they were combined by (JSON-serialisable)."""


def rung_record(report: Any) -> RungRecord:
    """The merged candidate's results in ``report`` (an ``EvaluationReport``), for comparing it
    with other candidates at the same rung."""
    merged = report.models[0]
    members = report.trade_off.members
    tasks = sorted({task for member in members for task in member.tasks})
    scores, sizes, samples = {}, {}, {}
    for task in tasks:
        score = merged.score(task)
        if score is None:
            continue
        scores[task] = [score.value, score.stderr]
        sizes[task] = merged.size(task)
        per_document = merged.samples(task)
        if per_document is not None:
            samples[task] = [list(per_document[0]), [_number(v) for v in per_document[1]]]
    return {
        "scores": scores,
        "sizes": sizes,
        "samples": samples,
        "members": {
            kind: {m.name: list(m.tasks) for m in members if m.kind == kind}
            for kind in ("domain", "general")
        },
        "weighted": [m.name for m in members if m.weighting == "size-weighted"],
    }


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, (bool, int, float)) else value


def documents(record: RungRecord) -> int:
    """Documents the candidate was scored on at this rung (all tasks)."""
    return sum(size or 0 for size in record["sizes"].values())


def advantages(
    record: RungRecord,
    other: RungRecord,
    objectives: Sequence[str],
    forgetting_weight: float = 1.0,
) -> list[Score | None]:
    """How much better ``other`` is than ``record`` on each objective (positive: ``other`` is
    better), with the paired standard error of the difference; None where it cannot be
    computed (no shared tasks)."""
    both = {"candidate": record, "other": other}
    trade = summarise(
        {
            label: {t: Score(v, se) for t, (v, se) in r["scores"].items()}
            for label, r in both.items()
        },
        domain=record["members"]["domain"],
        general=record["members"]["general"],
        merged="candidate",
        instruct="other",
        per_sample={
            label: {t: (ids, values) for t, (ids, values) in r["samples"].items()}
            for label, r in both.items()
        },
        weighted=record["weighted"],
        sizes={label: r["sizes"] for label, r in both.items()},
    )
    # domain_gain here is candidate − other; forgetting is general(other) − general(candidate),
    # i.e. the candidate's forgetting minus the other's.
    gain, forgetting = trade.domain_gain, trade.forgetting
    result: list[Score | None] = []
    for objective in objectives:
        if objective == "domain_gain":
            result.append(None if gain is None else Score(-gain.value, gain.stderr))
        elif objective == "forgetting":
            result.append(forgetting)
        elif gain is None or forgetting is None:
            result.append(None)
        else:
            value = -gain.value + forgetting_weight * forgetting.value
            stderr = (
                None
                if gain.stderr is None or forgetting.stderr is None
                else math.hypot(gain.stderr, forgetting_weight * forgetting.stderr)
            )
            result.append(Score(value, stderr))
    return result


def significantly_better(advantage: Sequence[Score | None], z: float = Z) -> bool:
    """Whether the advantages say "at least as good on every objective, and better on one by
    more than ``z`` standard errors"."""
    if not advantage or any(a is None for a in advantage):
        return False
    if any(a.value < 0 for a in advantage):
        return False
    return any(a.stderr is not None and a.value - z * a.stderr > 0 for a in advantage)


def beaten_by(
    record: RungRecord,
    others: Iterable[tuple[int, RungRecord]],
    objectives: Sequence[str],
    forgetting_weight: float = 1.0,
    z: float = Z,
) -> int | None:
    """The number of the first other trial that is significantly better than ``record`` at
    this rung, or None: the candidate is still promising."""
    for number, other in others:
        if significantly_better(advantages(record, other, objectives, forgetting_weight), z):
            return number
    return None
