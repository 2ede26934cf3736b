"""Paired statistics: is model A really better than model B on the same questions?

Every model in a comparison answers the *same* questions, so the two per-sample result lists
are paired: sample i of ``first`` and sample i of ``second`` are the same prompt. A question
that is easy for one model tends to be easy for the other, so the two scores are positively
correlated, and

    Var(mean_A − mean_B) = (Var(A) + Var(B) − 2·Cov(A, B)) / n.

The independent-samples formula of :mod:`mergemed.evaluation.scores`,
``sqrt(se_A² + se_B²)``, drops the covariance term and so overstates the uncertainty of a
difference, often by half or more: real gains then look like noise. Working on the
per-sample differences ``d_i = first_i − second_i`` keeps the covariance in automatically.

Formulas (n samples, d_i = first_i − second_i):

* :func:`paired_difference`: value mean(d), stderr sd(d)/sqrt(n) with the n−1 sample sd,
  i.e. lm-eval's stderr of a mean, applied to the differences.
* :func:`mcnemar`: for 0/1 correctness. Only discordant samples carry information:
  b = #(first right, second wrong), c = #(first wrong, second right). Under "no difference"
  b ~ Binomial(b + c, ½). For b + c ≤ 25 the exact two-sided p-value
  ``min(1, 2·Σ_{i ≤ min(b,c)} C(b+c, i)/2^(b+c))``; above that the continuity-corrected
  chi-square ``x = max(|b − c| − 1, 0)²/(b + c)`` on 1 df, ``p = erfc(sqrt(x/2))``.
  (The max(…, 0) keeps b = c at p = 1 instead of a negative correction.)
* :func:`paired_bootstrap`: resample sample *indices* (both models together, which keeps
  the pairing), the mean difference each time. stderr is the sd of those replicate means,
  the interval their 2.5 and 97.5 percentiles, and the two-sided p-value
  ``min(1, 2·min(share ≤ 0, share ≥ 0))``.
* Across tasks, which are different questions and so independent of each other (paired only
  within a task): :func:`paired_mean_of_differences` takes the unweighted mean of the tasks'
  paired differences, stderr ``sqrt(Σ se_t²)/k``; :func:`weighted_paired_difference` weights
  task t by its sample count n_t/N (value = the paired difference of all samples pooled),
  stderr ``sqrt(Σ (n_t/N)² se_t²)`` (stratified: the between-task spread of the differences
  is not noise, since the tasks are fixed).

Which test:

* 0/1 per-sample accuracy (multiple choice ``acc``, IFEval's per-prompt strict booleans):
  McNemar is the standard exact test; the bootstrap and :func:`paired_difference` work too.
* Anything non-binary (per-sample perplexity, log-likelihoods, F1, partial IFEval credit):
  the bootstrap (or :func:`paired_difference` when n is large enough for the normal
  approximation); McNemar refuses such data.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mergemed.evaluation.scores import Score

EXACT_LIMIT = 25
"""McNemar uses the exact binomial test up to this many discordant samples (b + c)."""


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired 0/1 results.

    ``statistic`` is min(b, c) for the exact test and the corrected chi-square for ``chi2``.
    """

    b: int
    """Samples the first model got right and the second wrong."""
    c: int
    """Samples the first model got wrong and the second right."""
    statistic: float
    p_value: float
    method: Literal["exact", "chi2"]

    def describe(self) -> str:
        """One line for reports, e.g. ``McNemar exact, b=3 c=9, p=0.146``."""
        return f"McNemar {self.method}, b={self.b} c={self.c}, p={_format_p(self.p_value)}"


@dataclass(frozen=True)
class Bootstrap:
    """A paired bootstrap of the mean difference ``first − second``."""

    difference: float
    """The observed mean difference (not the replicates' mean)."""
    stderr: float
    """Standard deviation of the replicate mean differences."""
    low: float
    """2.5th percentile of the replicates."""
    high: float
    """97.5th percentile of the replicates."""
    p_value: float
    """Two-sided; 0.0 means no replicate crossed zero (p < 1/iterations)."""
    iterations: int

    def describe(self) -> str:
        """One line for reports.

        e.g. ``bootstrap 10000x, diff=+0.0300 [+0.0100, +0.0500], p=0.004``.
        """
        p = f"<{1 / self.iterations:.2g}" if self.p_value == 0 else f"={_format_p(self.p_value)}"
        return (
            f"bootstrap {self.iterations}x, diff={self.difference:+.4f} "
            f"[{self.low:+.4f}, {self.high:+.4f}], p{p}"
        )


def _format_p(p: float) -> str:
    return f"{p:.3g}" if p >= 0.001 else f"{p:.1e}"


def _differences(first: Sequence[float], second: Sequence[float]) -> list[float]:
    """Per-sample ``first − second`` after checking the pairing is possible."""
    if len(first) != len(second):
        raise ValueError(
            f"paired results need the same samples: first has {len(first)}, "
            f"second has {len(second)}"
        )
    if len(first) < 2:
        raise ValueError(f"paired statistics need at least 2 samples, got {len(first)}")
    diffs = []
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        d = float(a) - float(b)
        if not math.isfinite(d):
            raise ValueError(f"non-finite result at index {i}: first={a!r}, second={b!r}")
        diffs.append(d)
    return diffs


def paired_difference(first: Sequence[float], second: Sequence[float]) -> Score:
    """Mean of ``first − second`` over the same samples, with its paired standard error.

    Args:
        first, second: per-sample results of two models, in the same sample order.

    Returns:
        ``Score(mean(d), sd(d)/sqrt(n))`` with the n−1 sample sd of the differences d.

    Raises:
        ValueError: unequal lengths, fewer than 2 samples, or a non-finite value.
    """
    diffs = _differences(first, second)
    return Score(statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)))


def _binary(values: Sequence[float], name: str) -> list[int]:
    out = []
    for i, v in enumerate(values):
        if v not in (0, 1):  # also True/False and 0.0/1.0; NaN fails
            raise ValueError(f"McNemar needs 0/1 results: {name}[{i}] is {v!r}")
        out.append(int(v))
    return out


def mcnemar(first: Sequence[float], second: Sequence[float]) -> McNemar:
    """McNemar's test on paired 0/1 correctness (1 = right).

    Exact two-sided binomial test when b + c ≤ 25, else the continuity-corrected chi-square
    (1 df). No discordant samples gives p = 1.

    Raises:
        ValueError: unequal lengths, fewer than 2 samples, or a value other than 0/1 (the
            message names the first bad index).
    """
    _differences(first, second)
    a_right, b_right = _binary(first, "first"), _binary(second, "second")
    b = sum(1 for x, y in zip(a_right, b_right, strict=True) if x and not y)
    c = sum(1 for x, y in zip(a_right, b_right, strict=True) if y and not x)
    discordant = b + c
    if discordant <= EXACT_LIMIT:
        k = min(b, c)
        # Integer tail count first: exact, and no underflow from 0.5**n.
        tail = sum(math.comb(discordant, i) for i in range(k + 1))
        p = min(1.0, 2 * tail / 2**discordant)
        return McNemar(b, c, float(k), p, "exact")
    statistic = max(abs(b - c) - 1, 0) ** 2 / discordant
    return McNemar(b, c, statistic, min(1.0, math.erfc(math.sqrt(statistic / 2))), "chi2")


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method)."""
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def paired_bootstrap(
    first: Sequence[float],
    second: Sequence[float],
    *,
    iterations: int = 10_000,
    seed: int = 0,
) -> Bootstrap:
    """Paired bootstrap of the mean difference ``first − second``.

    Each replicate draws n sample indices with replacement (``random.Random(seed)``, so the
    result is deterministic for a seed) and takes the mean difference over them.

    Raises:
        ValueError: unequal lengths, fewer than 2 samples, a non-finite value, or
            ``iterations`` < 2.
    """
    diffs = _differences(first, second)
    if iterations < 2:
        raise ValueError(f"the bootstrap needs at least 2 iterations, got {iterations}")
    rng = random.Random(seed)
    n = len(diffs)
    # Drawing from the differences is drawing sample indices: each d_i is one sample's pair.
    replicates = sorted(math.fsum(rng.choices(diffs, k=n)) / n for _ in range(iterations))
    at_most = sum(1 for r in replicates if r <= 0) / iterations
    at_least = sum(1 for r in replicates if r >= 0) / iterations
    return Bootstrap(
        difference=statistics.fmean(diffs),
        stderr=statistics.stdev(replicates),
        low=_percentile(replicates, 0.025),
        high=_percentile(replicates, 0.975),
        p_value=min(1.0, 2 * min(at_most, at_least)),
        iterations=iterations,
    )


PerTask = Mapping[str, tuple[Sequence[float], Sequence[float]]]
"""Task name -> (first model's per-sample results, second model's), paired within a task."""


def _per_task(per_task: PerTask) -> list[tuple[int, Score]]:
    if not per_task:
        raise ValueError("no tasks to aggregate")
    out = []
    for task, (first, second) in per_task.items():
        try:
            out.append((len(first), paired_difference(first, second)))
        except ValueError as error:
            raise ValueError(f"task {task!r}: {error}") from None
    return out


def paired_mean_of_differences(per_task: PerTask) -> Score:
    """Unweighted mean over tasks of each task's paired difference.

    stderr ``sqrt(Σ se_t²)/k``: tasks are different questions, so independent of each other.
    """
    scores = [score for _, score in _per_task(per_task)]
    k = len(scores)
    return Score(
        math.fsum(s.value for s in scores) / k,
        math.sqrt(math.fsum(s.stderr**2 for s in scores)) / k,
    )


def weighted_paired_difference(per_task: PerTask) -> Score:
    """Mean over tasks of the paired differences, weighted by each task's sample count.

    The value equals the paired difference over all samples pooled; the stderr
    ``sqrt(Σ (n_t/N)² se_t²)`` treats the tasks as fixed strata.
    """
    sized = _per_task(per_task)
    total = sum(n for n, _ in sized)
    return Score(
        math.fsum(n * s.value for n, s in sized) / total,
        math.sqrt(math.fsum((n * s.stderr) ** 2 for n, s in sized)) / total,
    )


def p_value(result: McNemar | Bootstrap | Score) -> float:
    """The two-sided p-value of a test result; for a Score the normal approximation of
    "value ≠ 0", ``erfc(|value/stderr|/sqrt(2))``.

    Raises:
        ValueError: a Score without a stderr.
    """
    if isinstance(result, (McNemar, Bootstrap)):
        return result.p_value
    if result.stderr is None:
        raise ValueError("a score without a stderr has no p-value")
    if result.stderr == 0:
        return 1.0 if result.value == 0 else 0.0
    return math.erfc(abs(result.value / result.stderr) / math.sqrt(2))


def significant(result: McNemar | Bootstrap | Score, alpha: float = 0.05) -> bool:
    """Whether the difference is significant at level ``alpha`` (two-sided, p < alpha)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return p_value(result) < alpha
