"""Gain, retention and forgetting on constructed score tables, against closed forms."""

from __future__ import annotations

import math

import pytest

from mergemed.evaluation.results import primary_score
from mergemed.evaluation.scores import Score, difference, mean, ratio, summarise


def test_mean_difference_ratio_closed_forms() -> None:
    a, b = Score(0.6, 0.03), Score(0.4, 0.04)
    assert mean([a, b]) == Score(pytest.approx(0.5), pytest.approx(0.025))
    assert difference(a, b) == Score(pytest.approx(0.2), pytest.approx(0.05))
    r = ratio(a, b)
    assert r.value == pytest.approx(1.5)
    assert r.stderr == pytest.approx(math.sqrt((0.03 / 0.4) ** 2 + (0.6 * 0.04 / 0.16) ** 2))
    assert ratio(a, Score(0.0, 0.1)) is None
    assert difference(a, Score(0.1)).stderr is None


TABLE = {
    # merged: better at medicine than instruct, worse at general tasks.
    "merged": {
        "pubmedqa": Score(0.60, 0.02),
        "mmlu_anatomy": Score(0.50, 0.04),
        "mmlu_college_medicine": Score(0.70, 0.04),
        "ifeval_med": Score(0.30, 0.05),
    },
    "clinical": {
        "pubmedqa": Score(0.64, 0.02),
        "mmlu_anatomy": Score(0.56, 0.04),
        "mmlu_college_medicine": Score(0.72, 0.04),
        "ifeval_med": Score(0.10, 0.03),
    },
    "instruct": {
        "pubmedqa": Score(0.50, 0.02),
        "mmlu_anatomy": Score(0.40, 0.04),
        "mmlu_college_medicine": Score(0.60, 0.04),
        "ifeval_med": Score(0.45, 0.05),
    },
}
DOMAIN = {"pubmedqa": ["pubmedqa"], "mmlu_medical": ["mmlu_anatomy", "mmlu_college_medicine"]}
GENERAL = {"ifeval_med": ["ifeval_med"]}


def test_summary_figures_equal_their_formulas() -> None:
    trade = summarise(
        TABLE,
        domain=DOMAIN,
        general=GENERAL,
        merged="merged",
        clinical="clinical",
        instruct="instruct",
    )
    # The domain score is the Leaderboard's average: the plain mean of its three tasks.
    domain_m = (0.60 + 0.50 + 0.70) / 3
    domain_i = (0.50 + 0.40 + 0.60) / 3
    domain_c = (0.64 + 0.56 + 0.72) / 3
    suite_se = math.sqrt(0.02**2 + 0.04**2 + 0.04**2) / 3
    assert trade.domain["merged"].value == pytest.approx(domain_m)
    assert trade.domain["merged"].stderr == pytest.approx(suite_se)
    assert trade.domain_gain.value == pytest.approx(domain_m - domain_i)
    # No per-sample results: the independent formula, per task, then averaged.
    task_se = [math.hypot(se, se) for se in (0.02, 0.04, 0.04)]
    assert trade.domain_gain.stderr == pytest.approx(math.sqrt(sum(x**2 for x in task_se)) / 3)
    assert trade.methods["domain_gain"].startswith("independent; plain mean of tasks")
    assert trade.domain_retention.value == pytest.approx(domain_m / domain_c)
    expected_se = math.hypot(suite_se / domain_c, domain_m * suite_se / domain_c**2)
    assert trade.domain_retention.stderr == pytest.approx(expected_se)
    assert trade.forgetting.value == pytest.approx(0.45 - 0.30)
    assert trade.forgetting.stderr == pytest.approx(math.hypot(0.05, 0.05))
    # A member still counts its group once: mmlu_medical = mean of its two subjects.
    per_member = {m.name: m for m in trade.members}
    assert per_member["pubmedqa"].change.value == pytest.approx(0.10)
    assert per_member["mmlu_medical"].change.value == pytest.approx(0.10)
    assert per_member["ifeval_med"].change.value == pytest.approx(0.15)
    assert per_member["ifeval_med"].kind == "general"


def test_members_missing_for_a_model_are_left_out_of_its_comparisons() -> None:
    table = {label: dict(scores) for label, scores in TABLE.items()}
    del table["instruct"]["mmlu_anatomy"]  # instruct lacks half of a group
    trade = summarise(table, domain=DOMAIN, general=GENERAL, merged="merged", instruct="instruct")
    assert trade.domain_gain.value == pytest.approx(0.60 - 0.50)  # pubmedqa only
    assert trade.domain_retention is None  # no clinical model
    assert "instruct" not in {
        label for m in trade.members if m.name == "mmlu_medical" for label in m.scores
    }


def test_primary_score_follows_the_metric_list() -> None:
    block = {
        "alias": "ifeval_med",
        "inst_level_strict_acc,none": 0.5,
        "inst_level_strict_acc_stderr,none": "N/A",
        "prompt_level_strict_acc,none": 0.25,
        "prompt_level_strict_acc_stderr,none": 0.1,
    }
    config = {"metric_list": [{"metric": "prompt_level_strict_acc"}, {"metric": "x"}]}
    assert primary_score(block, config) == Score(0.25, 0.1)
    only_inst = {"metric_list": [{"metric": "inst_level_strict_acc"}]}
    assert primary_score(block, only_inst) == Score(0.5, None)


def test_per_sample_results_give_paired_changes_and_a_test() -> None:
    """Same documents for both models: the change's stderr is the paired one (closed form:
    sd of the differences / sqrt(n)) and McNemar judges it; far below the independent one."""
    import statistics

    n = 40
    instruct = [1.0 if i % 4 else 0.0 for i in range(n)]  # 30 right
    merged = [1.0 if (i % 4 or i < 8) else 0.0 for i in range(n)]  # the same + 2 more right
    docs = list(range(n))
    table = {
        "merged": {"pubmedqa": Score(sum(merged) / n, 0.07)},
        "instruct": {"pubmedqa": Score(sum(instruct) / n, 0.07)},
    }
    per_sample = {
        "merged": {"pubmedqa": (docs, merged)},
        "instruct": {"pubmedqa": (docs, instruct)},
    }
    trade = summarise(
        table,
        domain={"pubmedqa": ["pubmedqa"]},
        general={},
        merged="merged",
        instruct="instruct",
        per_sample=per_sample,
    )
    differences = [a - b for a, b in zip(merged, instruct, strict=True)]
    paired_se = statistics.stdev(differences) / math.sqrt(n)
    member = trade.members[0]
    assert member.method == "paired"
    assert member.change.value == pytest.approx(2 / n)
    assert member.change.stderr == pytest.approx(paired_se)
    assert member.change.stderr < math.hypot(0.07, 0.07) / 2
    assert member.test == "McNemar exact, b=2 c=0, p=0.5" and member.significant is False
    assert trade.domain_gain.stderr == pytest.approx(paired_se)
    assert trade.methods["domain_gain"].startswith("paired")
    # Different documents: no pairing, the independent formula.
    per_sample["instruct"]["pubmedqa"] = ([d + 1 for d in docs], instruct)
    unpaired = summarise(
        table,
        domain={"pubmedqa": ["pubmedqa"]},
        general={},
        merged="merged",
        instruct="instruct",
        per_sample=per_sample,
    )
    assert unpaired.members[0].method == "independent" and unpaired.members[0].test is None
    assert unpaired.members[0].change.stderr == pytest.approx(math.hypot(0.07, 0.07))


def test_a_size_weighted_member_is_lm_evals_weighted_mean() -> None:
    sizes = {label: {"mmlu_anatomy": 135, "mmlu_college_medicine": 173} for label in TABLE}
    trade = summarise(
        TABLE,
        domain=DOMAIN,
        general=GENERAL,
        merged="merged",
        instruct="instruct",
        weighted={"mmlu_medical"},
        sizes=sizes,
    )
    member = next(m for m in trade.members if m.name == "mmlu_medical")
    assert member.weighting == "size-weighted"
    assert member.tasks == ("mmlu_anatomy", "mmlu_college_medicine")
    # lm-eval's weight_by_size: Σ n·acc / Σ n; stderr sqrt(Σ (n·se)²) / Σ n
    value = (135 * 0.50 + 173 * 0.70) / 308
    assert member.scores["merged"].value == pytest.approx(value)
    assert member.scores["merged"].stderr == pytest.approx(math.hypot(135, 173) * 0.04 / 308)
    gain = (135 * (0.50 - 0.40) + 173 * (0.70 - 0.60)) / 308
    assert member.change.value == pytest.approx(gain)
    assert member.method == "independent"
    # The domain score stays the Leaderboard's plain mean of tasks.
    assert trade.domain["merged"].value == pytest.approx((0.60 + 0.50 + 0.70) / 3)
    # Without the document counts the member says it is unweighted.
    fallback = summarise(
        TABLE, domain=DOMAIN, general=GENERAL, merged="merged", weighted={"mmlu_medical"}
    )
    member = next(m for m in fallback.members if m.name == "mmlu_medical")
    assert member.weighting.startswith("unweighted")
    assert member.scores["merged"].value == pytest.approx(0.60)


def test_weighted_paired_change_is_the_pooled_per_document_mean() -> None:
    ids_a, ids_b = list(range(4)), list(range(10))
    per_sample = {
        "merged": {"a": (ids_a, [1, 1, 0, 1]), "b": (ids_b, [1, 0] * 5)},
        "instruct": {"a": (ids_a, [0, 1, 0, 0]), "b": (ids_b, [0, 0] * 5)},
    }
    scores = {
        label: {t: Score(sum(v) / len(v), 0.1) for t, (_, v) in tasks.items()}
        for label, tasks in per_sample.items()
    }
    sizes = {label: {"a": 4, "b": 10} for label in scores}
    trade = summarise(
        scores,
        domain={"ab": ["a", "b"]},
        general={},
        merged="merged",
        instruct="instruct",
        per_sample=per_sample,
        weighted={"ab"},
        sizes=sizes,
    )
    (member,) = trade.members
    pooled = [1 - 0, 1 - 1, 0 - 0, 1 - 0] + [1, 0] * 5
    assert member.method == "paired"
    assert member.change.value == pytest.approx(sum(pooled) / len(pooled))


def test_perplexity_members_stand_alone() -> None:
    table = {
        "merged": {**TABLE["merged"], "general_ppl": Score(31.0)},
        "instruct": {**TABLE["instruct"], "general_ppl": Score(25.0)},
    }
    trade = summarise(
        table,
        domain=DOMAIN,
        general=GENERAL,
        perplexity={"general_ppl": ["general_ppl"]},
        merged="merged",
        instruct="instruct",
    )
    ppl = next(m for m in trade.members if m.name == "general_ppl")
    assert ppl.kind == "perplexity" and ppl.change.value == pytest.approx(6.0)  # M − I
    # forgetting holds only the accuracy members
    assert trade.forgetting.value == pytest.approx(0.45 - 0.30)
    assert "general_ppl" not in trade.methods["forgetting"]
    assert trade.as_dict()["per_task"][-1]["change"]["value"] == pytest.approx(6.0)
