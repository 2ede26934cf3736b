"""Paired statistics against closed forms, scipy, and simulations of correlated models."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from mergemed.evaluation.paired import (
    Bootstrap,
    McNemar,
    mcnemar,
    p_value,
    paired_bootstrap,
    paired_difference,
    paired_mean_of_differences,
    significant,
    weighted_paired_difference,
)
from mergemed.evaluation.scores import Score, difference

# --- paired_difference: closed forms ---------------------------------------------------------


def test_paired_difference_closed_form_binary_differences() -> None:
    # d = first − second = [1,0,0,1,0,0,1,0,0,1]: mean 0.4; sample variance with n−1:
    # (4·0.6² + 6·0.4²)/9 = 2.4/9; stderr sqrt(2.4/9/10) = sqrt(2/75).
    d = [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    second = [0, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    first = [x + y for x, y in zip(d, second, strict=True)]
    result = paired_difference(first, second)
    assert result.value == pytest.approx(0.4)
    assert result.stderr == pytest.approx(math.sqrt(2 / 75))


def test_paired_difference_closed_form_signed() -> None:
    # d = [1, −1, 0, 0]: mean 0, variance (1 + 1)/3, stderr sqrt(2/3/4) = sqrt(1/6).
    result = paired_difference([1, 0, 1, 0], [0, 1, 1, 0])
    assert result.value == pytest.approx(0.0)
    assert result.stderr == pytest.approx(math.sqrt(1 / 6))


def test_shared_per_question_offset_cancels() -> None:
    """Adding the same per-question amount to both models (a question's difficulty) changes
    neither the paired difference nor its stderr, while the independent stderr grows."""
    rng = random.Random(5)
    first = [rng.gauss(0.6, 0.1) for _ in range(50)]
    second = [rng.gauss(0.5, 0.1) for _ in range(50)]
    offset = [rng.gauss(0, 3) for _ in range(50)]
    shifted = paired_difference(
        [a + o for a, o in zip(first, offset, strict=True)],
        [b + o for b, o in zip(second, offset, strict=True)],
    )
    plain = paired_difference(first, second)
    assert shifted.value == pytest.approx(plain.value)
    assert shifted.stderr == pytest.approx(plain.stderr)
    assert paired_difference(first, first) == Score(0.0, 0.0)


# --- simulation: correlated 0/1 models --------------------------------------------------------

N_QUESTIONS = 400
EXPERIMENTS = 2000
# Beta(0.15, 0.15) puts most questions near "everyone right" or "everyone wrong", as on real
# benchmarks; the first model (say, the merge) gains 10% of the remaining headroom on each.
DIFFICULTY = 0.15
GAIN = 0.10


def correlated_outcomes(np, rng, experiments: int, n: int):
    """(first, second) 0/1 arrays of shape (experiments, n): per question a probability p
    drawn once, the second model right with p, the first with p + GAIN·(1 − p)."""
    p = rng.beta(DIFFICULTY, DIFFICULTY, size=(experiments, n))
    first = (rng.random((experiments, n)) < p + GAIN * (1 - p)).astype(float)
    second = (rng.random((experiments, n)) < p).astype(float)
    return first, second


def simulate_standard_errors(seed: int = 0) -> dict[str, float]:
    """Empirical sd of the mean difference over repeated experiments, against the average
    paired and independent-samples stderr."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(seed)
    first, second = correlated_outcomes(np, rng, EXPERIMENTS, N_QUESTIONS)
    paired = [paired_difference(a, b) for a, b in zip(first.tolist(), second.tolist(), strict=True)]
    se_first = first.std(axis=1, ddof=1) / math.sqrt(N_QUESTIONS)
    se_second = second.std(axis=1, ddof=1) / math.sqrt(N_QUESTIONS)
    independent = [
        difference(Score(0.0, float(sa)), Score(0.0, float(sb))).stderr
        for sa, sb in zip(se_first, se_second, strict=True)
    ]
    return {
        "empirical_sd": statistics.stdev(s.value for s in paired),
        "paired_se": statistics.fmean(s.stderr for s in paired),
        "independent_se": statistics.fmean(independent),
        "mean_difference": statistics.fmean(s.value for s in paired),
    }


def test_paired_stderr_matches_simulated_spread_and_independent_overstates() -> None:
    numbers = simulate_standard_errors()
    empirical = numbers["empirical_sd"]
    # True mean difference GAIN·E[1 − p] = GAIN/2 for the symmetric Beta.
    assert numbers["mean_difference"] == pytest.approx(GAIN / 2, abs=3 * empirical / 40)
    assert numbers["paired_se"] == pytest.approx(empirical, rel=0.10), numbers
    assert numbers["independent_se"] / empirical > 1.5, numbers
    assert numbers["independent_se"] / numbers["paired_se"] > 1.5, numbers


# --- McNemar ----------------------------------------------------------------------------------


def pairs(b: int, c: int, both_right: int = 0, both_wrong: int = 0, seed: int = 0):
    """Per-sample 0/1 results with the given discordant (b, c) and concordant counts."""
    rows = [(1, 0)] * b + [(0, 1)] * c + [(1, 1)] * both_right + [(0, 0)] * both_wrong
    random.Random(seed).shuffle(rows)
    return [r[0] for r in rows], [r[1] for r in rows]


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 5, 2 * 0.5**5),
        (5, 0, 2 * 0.5**5),
        (1, 6, 2 * (1 + 7) / 2**7),
        (3, 9, 2 * (1 + 12 + 66 + 220) / 2**12),
        (0, 1, 1.0),  # 2·0.5 = 1
        (4, 4, 1.0),
        (0, 25, 2 * 0.5**25),
    ],
)
def test_mcnemar_exact_closed_forms(b: int, c: int, expected: float) -> None:
    result = mcnemar(*pairs(b, c, both_right=7, both_wrong=3))
    assert (result.b, result.c, result.method) == (b, c, "exact")
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.statistic == min(b, c)


def test_mcnemar_exact_matches_scipy_binomtest() -> None:
    stats = pytest.importorskip("scipy.stats")
    for total in range(1, 26):
        for b in range(total + 1):
            result = mcnemar(*pairs(b, total - b, both_right=2))
            assert result.method == "exact"
            expected = stats.binomtest(b, total, 0.5).pvalue
            assert result.p_value == pytest.approx(expected, rel=1e-9), (b, total - b)


def test_mcnemar_no_discordant_samples() -> None:
    result = mcnemar([1, 0, 1, 1], [1, 0, 1, 1])
    assert result == McNemar(0, 0, 0.0, 1.0, "exact")


def test_mcnemar_chi2_against_normal_tail() -> None:
    # b=10, c=30: x = (20 − 1)²/40 = 9.025; a 1-df chi-square tail is a two-sided normal tail
    # at sqrt(x).
    result = mcnemar(*pairs(10, 30, both_right=50, both_wrong=10))
    assert result.method == "chi2"
    assert result.statistic == pytest.approx(9.025)
    normal = statistics.NormalDist()
    assert result.p_value == pytest.approx(2 * (1 - normal.cdf(math.sqrt(9.025))), rel=1e-9)


@pytest.mark.parametrize(("b", "c"), [(10, 30), (13, 13), (12, 14), (40, 25), (100, 60)])
def test_mcnemar_chi2_matches_scipy(b: int, c: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    result = mcnemar(*pairs(b, c, both_right=20))
    assert result.method == "chi2"
    x = max(abs(b - c) - 1, 0) ** 2 / (b + c)
    assert result.statistic == pytest.approx(x)
    assert result.p_value == pytest.approx(stats.chi2.sf(x, df=1), rel=1e-9, abs=1e-15)


def test_mcnemar_switches_to_chi2_above_25_and_equal_counts_give_one() -> None:
    assert mcnemar(*pairs(12, 13)).method == "exact"
    assert mcnemar(*pairs(13, 13)).method == "chi2"
    for b in (1, 6, 12, 13, 20, 200):
        assert mcnemar(*pairs(b, b, both_right=3)).p_value == 1.0


def test_mcnemar_accepts_bools_and_floats() -> None:
    first, second = pairs(3, 9, both_right=5)
    as_bools = mcnemar([bool(x) for x in first], [bool(x) for x in second])
    as_floats = mcnemar([float(x) for x in first], [float(x) for x in second])
    assert as_bools == as_floats == mcnemar(first, second)


def test_mcnemar_describe() -> None:
    assert mcnemar(*pairs(3, 9, both_right=5)).describe() == "McNemar exact, b=3 c=9, p=0.146"
    assert mcnemar(*pairs(10, 30)).describe() == "McNemar chi2, b=10 c=30, p=0.00266"


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_deterministic_for_a_seed() -> None:
    first, second = pairs(30, 45, both_right=100, both_wrong=25)
    one = paired_bootstrap(first, second, iterations=500, seed=3)
    assert one == paired_bootstrap(first, second, iterations=500, seed=3)
    other = paired_bootstrap(first, second, iterations=500, seed=4)
    assert other != one
    assert one.difference == other.difference == pytest.approx(-15 / 200)
    assert one.low < one.difference < one.high
    assert isinstance(one, Bootstrap) and one.iterations == 500


def test_bootstrap_stderr_matches_paired_stderr_on_a_large_sample() -> None:
    np = pytest.importorskip("numpy")
    first, second = correlated_outcomes(np, np.random.default_rng(1), 1, 3000)
    first, second = first[0].tolist(), second[0].tolist()
    boot = paired_bootstrap(first, second, iterations=2000, seed=0)
    paired = paired_difference(first, second)
    assert boot.difference == pytest.approx(paired.value)
    assert boot.stderr == pytest.approx(paired.stderr, rel=0.10)
    # The p-values of the two views of the same question agree roughly, too.
    assert significant(boot) == significant(paired)


def simulate_bootstrap_coverage(seed: int = 2) -> float:
    """Share of experiments whose 95% bootstrap interval covers the true mean difference."""
    np = pytest.importorskip("numpy")
    experiments, n = 400, 100
    first, second = correlated_outcomes(np, np.random.default_rng(seed), experiments, n)
    truth = GAIN / 2
    covered = 0
    for i, (a, b) in enumerate(zip(first.tolist(), second.tolist(), strict=True)):
        boot = paired_bootstrap(a, b, iterations=400, seed=i)
        covered += boot.low <= truth <= boot.high
    return covered / experiments


def test_bootstrap_interval_covers_the_truth_95_percent_of_the_time() -> None:
    coverage = simulate_bootstrap_coverage()
    assert coverage == pytest.approx(0.95, abs=0.03)


def test_bootstrap_p_value_extremes() -> None:
    same = paired_bootstrap([1, 0, 1, 0.5], [1, 0, 1, 0.5], iterations=50)
    assert (same.difference, same.stderr, same.low, same.high, same.p_value) == (0, 0, 0, 0, 1)
    always_better = paired_bootstrap([2, 3, 4, 5], [1, 1, 1, 1], iterations=200)
    assert always_better.p_value == 0.0
    assert always_better.describe().endswith("p<0.005")
    assert not significant(same) and significant(always_better)


# --- aggregates over tasks --------------------------------------------------------------------

# Task "a": d = [1, 0, 0, 1] → mean 1/2, variance (4·¼)/3 = 1/3, se² = 1/12.
# Task "b": d = [1, −1]      → mean 0, variance 2, se² = 1.
TASKS = {
    "a": ([1, 0, 1, 1], [0, 0, 1, 0]),
    "b": ([1, 0], [0, 1]),
}


def test_unweighted_mean_of_differences_closed_form() -> None:
    result = paired_mean_of_differences(TASKS)
    assert result.value == pytest.approx(0.25)
    assert result.stderr == pytest.approx(math.sqrt(1 / 12 + 1) / 2)


def test_weighted_difference_closed_form() -> None:
    result = weighted_paired_difference(TASKS)
    assert result.value == pytest.approx(1 / 3)
    assert result.stderr == pytest.approx(math.sqrt((4 / 6) ** 2 / 12 + (2 / 6) ** 2 * 1))


def test_weighted_difference_equals_pooled_paired_difference() -> None:
    rng = random.Random(11)
    tasks = {}
    for name, size in (("pubmedqa", 500), ("medqa", 127), ("anatomy", 35), ("tiny", 2)):
        tasks[name] = (
            [rng.random() < 0.6 for _ in range(size)],
            [rng.random() < 0.5 for _ in range(size)],
        )
    pooled = paired_difference(
        [x for f, _ in tasks.values() for x in f], [x for _, s in tasks.values() for x in s]
    )
    assert weighted_paired_difference(tasks).value == pytest.approx(pooled.value, rel=1e-12)
    # The unweighted mean differs: every task counts once, whatever its size.
    unweighted = paired_mean_of_differences(tasks).value
    per_task = [paired_difference(*pair).value for pair in tasks.values()]
    assert unweighted == pytest.approx(statistics.fmean(per_task))


# --- significance helpers ---------------------------------------------------------------------


def test_significant_on_scores_and_tests() -> None:
    # z = 2 → p = 0.0455; z = 1.667 → p = 0.0956.
    assert p_value(Score(0.1, 0.05)) == pytest.approx(0.04550026, rel=1e-6)
    assert significant(Score(0.1, 0.05)) and not significant(Score(0.1, 0.06))
    assert significant(Score(-0.1, 0.05))
    assert significant(Score(0.1, 0.06), alpha=0.1)
    exact = mcnemar(*pairs(0, 5))  # p = 0.0625
    assert not significant(exact) and significant(exact, alpha=0.1)
    with pytest.raises(ValueError, match="without a stderr"):
        significant(Score(0.1))
    with pytest.raises(ValueError, match="alpha"):
        significant(exact, alpha=1.5)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("function", [paired_difference, mcnemar, paired_bootstrap])
def test_unequal_lengths_and_too_few_samples(function) -> None:
    with pytest.raises(ValueError, match="same samples: first has 3, second has 2"):
        function([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        function([1], [0])
    with pytest.raises(ValueError, match="at least 2 samples, got 0"):
        function([], [])


def test_non_finite_values_refused() -> None:
    with pytest.raises(ValueError, match="non-finite result at index 2"):
        paired_difference([0.1, 0.2, float("nan")], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite result at index 0"):
        paired_bootstrap([float("inf"), 1.0], [0.0, 1.0])


def test_mcnemar_refuses_non_binary_naming_the_index() -> None:
    with pytest.raises(ValueError, match=r"0/1 results: first\[2\] is 0.5"):
        mcnemar([1, 0, 0.5, 2], [1, 0, 1, 1])
    with pytest.raises(ValueError, match=r"second\[1\] is -1"):
        mcnemar([1, 0, 1], [1, -1, 0])


def test_aggregate_errors_name_the_task() -> None:
    with pytest.raises(ValueError, match="no tasks"):
        paired_mean_of_differences({})
    with pytest.raises(ValueError, match=r"task 'medqa': .*first has 3, second has 4"):
        weighted_paired_difference({"pubmedqa": ([1, 0], [0, 0]), "medqa": ([1] * 3, [0] * 4)})


def test_bootstrap_needs_two_iterations() -> None:
    with pytest.raises(ValueError, match="at least 2 iterations"):
        paired_bootstrap([1, 0], [0, 0], iterations=1)
