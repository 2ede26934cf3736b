"""Search spaces: grids, ranges, paths into the recipe, one-line errors; the Pareto front
against hand-computed sets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mergemed.search import candidate_recipe, grid_size, load_space, pareto_front
from mergemed.search.space import SearchError, grid_points

RECIPE = {
    "merge_method": "slerp",
    "base_model": "a",
    "models": [{"model": "a"}, {"model": "b"}],
    "parameters": {"t": [{"filter": "self_attn", "value": 0.5}, {"value": 0.5}]},
}


def space(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(body))
    return path


BASE = """
recipe:
  merge_method: slerp
  base_model: a
  models: [{model: a}, {model: b}]
  parameters:
    t:
      - filter: self_attn
        value: 0.5
      - value: 0.5
score: {tasks: [mm_pubmedqa], clinical: b, instruct: a}
"""


def test_a_grid_is_the_cartesian_product_of_values_and_stepped_ranges(tmp_path) -> None:
    path = space(
        tmp_path,
        BASE
        + """
vary:
  attn: {path: parameters.t.0.value, values: [[0, 0.5, 1], [1, 0.5, 0]]}
  rest: {path: parameters.t.1.value, low: 0.2, high: 0.8, step: 0.3}
""",
    )
    loaded = load_space(path)
    assert grid_size(loaded) == 6
    points = grid_points(loaded)
    assert points[0] == {"attn": [0, 0.5, 1], "rest": 0.2}
    assert [p["rest"] for p in points[:3]] == [0.2, 0.5, 0.8]
    recipe = candidate_recipe(loaded, points[4])
    assert recipe.parameters["t"][0].value == [1, 0.5, 0]
    assert recipe.parameters["t"][1].value == 0.5
    assert len(loaded.fingerprint()) == 64


@pytest.mark.parametrize(
    ("vary", "message"),
    [
        ("vary: {}", "vary: expected at least one dimension"),
        (
            "vary:\n  x: {path: parameters.t.7.value, values: [0.1]}",
            "vary.x.path: 'parameters.t.7.value' is not in the recipe (no 'parameters.t.7')",
        ),
        ("vary:\n  x: {path: parameters.t.0.value, low: 0, high: 1}", "strategy grid needs"),
        ("vary:\n  x: {path: parameters.t.0.value, values: []}", "at least one value"),
        ("vary:\n  x: {path: parameters.t.0.value, low: 1, high: 0, step: 0.1}", "low <= high"),
        ("vary:\n  x: {path: parameters.t.0.value, values: [2.5]}", "candidate x=2.5:"),
        ("vary:\n  x: {path: merge_method, values: [slerp, nope]}", "candidate x='nope':"),
    ],
)
def test_bad_spaces_are_one_line_errors(tmp_path, vary: str, message: str) -> None:
    path = space(tmp_path, BASE + vary + "\n")
    with pytest.raises(SearchError) as caught:
        load_space(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value).strip()


def test_other_strategies_need_a_trial_count(tmp_path) -> None:
    body = BASE + "vary:\n  x: {path: parameters.t.0.value, low: 0, high: 1}\nstrategy: tpe\n"
    with pytest.raises(SearchError, match="trials: strategy tpe needs a number of trials"):
        load_space(space(tmp_path, body))
    assert load_space(space(tmp_path, body + "trials: 5\n")).trials == 5


def test_a_space_without_tasks_is_refused(tmp_path) -> None:
    body = BASE.replace("tasks: [mm_pubmedqa], ", "") + "vary:\n  x: {path: seed, values: [1]}\n"
    with pytest.raises(SearchError, match="give tasks or suites"):
        load_space(space(tmp_path, body))


def test_pareto_front_closed_form_with_ties_and_dominated_duplicates() -> None:
    # (gain up, forgetting down)
    points = [
        (0.10, 0.05),  # 0 front
        (0.10, 0.05),  # 1 tie with 0: both stay
        (0.20, 0.10),  # 2 front
        (0.05, 0.10),  # 3 dominated by 0
        (0.05, 0.10),  # 4 duplicate of a dominated point: dominated too
        (0.00, 0.00),  # 5 front (nothing forgets less)
        (0.20, 0.12),  # 6 dominated by 2
    ]
    assert pareto_front(points, (True, False)) == [0, 1, 2, 5]
    assert pareto_front([], (True, False)) == []
    assert pareto_front([(1.0, 1.0)], (True, True)) == [0]


SHIPPED_SPACES = sorted((Path(__file__).resolve().parents[2] / "search").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_SPACES, ids=lambda p: p.name)
def test_shipped_search_spaces_load_and_name_real_tasks(path: Path) -> None:
    """Each example under search/ loads (every grid candidate, or both ends of each range, is a
    valid recipe), varies the components its comments name, and scores on tasks and suites
    that mergemed ships."""
    from mergemed.evaluation.suites import suites, task_manager

    space = load_space(path)
    assert space.base_recipe()["merge_method"] == "slerp"
    filters = [entry.get("filter") for entry in space.base_recipe()["parameters"]["t"]]
    assert filters[:2] == ["self_attn", "mlp"]
    for name in ("attention_t", "mlp_t"):
        assert space.vary[name].path == f"parameters.t.{0 if name == 'attention_t' else 1}.value"
    if space.strategy == "grid":
        assert grid_size(space) == len(space.vary["attention_t"].values) * len(
            space.vary["mlp_t"].values
        )
    else:
        assert space.trials and space.trials <= space.max_trials
    manager = task_manager(names=None)
    known = set(manager.all_tasks)
    for task in space.score.tasks:
        assert task in known, task
    assert set(space.score.suites) <= set(suites(manager)), space.score.suites


def test_shipped_examples_cover_gatortron_and_definemed() -> None:
    recipes = {load_space(p).recipe for p in SHIPPED_SPACES}
    assert recipes == {
        "../recipes/gatortron_llama.yaml",
        "../recipes/definemed_qwen.yaml",
        "../recipes/tiny_example.yaml",
    }
