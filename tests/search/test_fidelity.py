"""Multi-fidelity: the paired "significantly better" rule in closed form, and a real search on
models whose scores are known (they always answer "yes" or always "maybe"), which must find
the full-sample front while scoring fewer documents."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mergemed.evaluation.scores import Score
from mergemed.search.fidelity import advantages, beaten_by, significantly_better


def record(values: dict[str, list[float]], general: tuple[str, ...] = ()) -> dict:
    """A rung record for tasks whose per-document scores are ``values`` (0/1)."""
    return {
        "scores": {t: [sum(v) / len(v), math.sqrt(_var(v) / len(v))] for t, v in values.items()},
        "sizes": {t: len(v) for t, v in values.items()},
        "samples": {t: [list(range(len(v))), list(v)] for t, v in values.items()},
        "members": {
            "domain": {t: [t] for t in values if t not in general},
            "general": {t: [t] for t in general},
        },
        "weighted": [],
    }


def _var(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def test_advantage_is_the_paired_difference_in_closed_form() -> None:
    a = record({"d": [1, 0, 0, 1, 0, 0, 1, 0], "g": [1, 1, 0, 1, 1, 0, 1, 1]}, general=("g",))
    b = record({"d": [1, 1, 0, 1, 1, 0, 1, 1], "g": [1, 1, 0, 1, 1, 0, 1, 0]}, general=("g",))
    gain, forgetting = advantages(a, b, ["domain_gain", "forgetting"])
    # b − a on d, per document: [0, 1, 0, 0, 1, 0, 0, 1]; paired se = sd(diff)/sqrt(n)
    diff = [0, 1, 0, 0, 1, 0, 0, 1]
    assert gain.value == pytest.approx(3 / 8)
    assert gain.stderr == pytest.approx(math.sqrt(_var(diff) / 8))
    # a's forgetting minus b's = g(b) − g(a) = −1/8 (b forgot more on g)
    assert forgetting.value == pytest.approx(-1 / 8)
    (weighted,) = advantages(a, b, ["weighted"], forgetting_weight=2.0)
    assert weighted.value == pytest.approx(3 / 8 - 2 / 8)
    assert weighted.stderr == pytest.approx(math.hypot(gain.stderr, 2 * forgetting.stderr))


def test_significantly_better_needs_every_objective_and_a_clear_margin() -> None:
    assert significantly_better([Score(0.5, 0.1)])
    assert not significantly_better([Score(0.15, 0.1)])  # within 1.96 se
    assert not significantly_better([Score(0.5, 0.1), Score(-0.01, 0.0)])  # worse on one
    assert significantly_better([Score(0.5, 0.1), Score(0.0, 0.0)])  # equal on the other
    assert not significantly_better([Score(0.5, None)])
    assert not significantly_better([None])
    assert significantly_better([Score(0.1, 0.0)])  # no spread at all: any margin counts
    strong = record({"d": [1] * 10})
    weak = record({"d": [1, 0] * 5})
    same = record({"d": [1, 0] * 5})
    assert beaten_by(weak, [(3, same), (7, strong)], ["domain_gain"]) == 7
    assert beaten_by(strong, [(3, weak)], ["domain_gain"]) is None
    assert beaten_by(weak, [(3, same)], ["domain_gain"]) is None


# ------------------------------------------------------------------------- a real search

pytest.importorskip("optuna")
pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def answering(tiny_eval_models, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(instruct, always-yes, always-maybe): the last two from the first."""
    from mergemed.testing.answering import make_answering_model

    instruct = tiny_eval_models[0]
    folder = tmp_path_factory.mktemp("answering")
    return (
        instruct,
        make_answering_model(folder / "yes", instruct, "yes"),
        make_answering_model(folder / "maybe", instruct, "maybe"),
    )


def write_space(
    folder: Path, instruct: Path, yes: Path, maybe: Path, fidelity: list[int] | None
) -> Path:
    from mergemed.testing.answering import answering_grid_space

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    space = answering_grid_space(yes, maybe, instruct, limit=30, fidelity=fidelity)
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.slow
def test_multi_fidelity_finds_the_full_sample_front_for_less(answering, tmp_path) -> None:
    from mergemed.search.study import leaderboard, run_search

    instruct, yes, maybe = answering
    full_space = write_space(tmp_path / "full", instruct, yes, maybe, None)
    full = leaderboard(run_search(full_space, tmp_path / "a"))
    cheap_space = write_space(tmp_path / "cheap", instruct, yes, maybe, [10])
    cheap = leaderboard(run_search(cheap_space, tmp_path / "b"))

    def front(board: dict) -> set:
        return {row["choice"]["yes_weight"] for row in board["trials"] if row["pareto"]}

    # Closed form: weight above the other's 0.5 answers "yes", below it "maybe"; every
    # "yes" candidate scores the share of yes in the 30-document stratified sample.
    assert front(full) == {1.0, 2.0}
    gains = {row["choice"]["yes_weight"]: row["domain_gain"]["value"] for row in full["trials"]}
    assert gains[1.0] == gains[2.0] > gains[0.1] == gains[0.2]
    assert front(cheap) == front(full)
    stopped = [row for row in cheap["trials"] if row["stopped_at"] is not None]
    assert stopped, "no candidate was stopped early"
    for row in stopped:
        assert row["stopped_at"] == 10 and row["choice"]["yes_weight"] in (0.1, 0.2)
        assert row["documents"] == 10
    complete = [row for row in cheap["trials"] if row["stopped_at"] is None]
    assert all(row["documents"] == 10 + 30 for row in complete)
    cost = cheap["cost"]
    assert cost["documents"] == 10 * len(stopped) + 40 * len(complete)
    assert cost["documents_without_fidelity"] == 30 * 4
    assert cost["saved"] == pytest.approx(1 - cost["documents"] / 120, abs=1e-4)
    assert full["cost"]["saved"] == 0
