"""Schedules: gradients, filters and precedence resolve as in mergekit (closed forms)."""

from __future__ import annotations

import pytest

from mergemed.errors import MergeError
from mergemed.methods import available_methods, get_method
from mergemed.recipe import load_recipe
from mergemed.schedule import (
    build_plan,
    evaluate_setting,
    generic_layout,
    interpolate_gradient,
)

T = get_method("slerp").parameter("t")
WEIGHT = get_method("linear").parameter("weight")


@pytest.mark.parametrize(
    ("anchors", "position", "expected"),
    [
        ([0.0, 1.0], 0.25, 0.25),
        ([0.0, 0.5, 0.3, 0.7, 1.0], 0.5, 0.3),
        ([0.0, 0.5, 0.3, 0.7, 1.0], 0.375, 0.4),  # s = 1.5 -> halfway between 0.5 and 0.3
        ([2.0], 0.8, 2.0),
        ([1.0, 3.0, 5.0], 1.0, 5.0),
    ],
)
def test_gradient_interpolation_closed_form(anchors, position, expected):
    assert interpolate_gradient(anchors, position) == pytest.approx(expected)


def test_first_matching_filter_wins():
    recipe = load_recipe(
        "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\n"
        "parameters:\n  t:\n    - {filter: q_proj, value: 0.1}\n    - {filter: self_attn, value: 0.2}\n"
        "    - {filter: '*', value: 0.9}\n"
    )
    setting = recipe.parameters["t"]
    assert evaluate_setting(setting, "model.layers.0.self_attn.q_proj.weight", 0, T) == 0.1
    assert evaluate_setting(setting, "model.layers.0.self_attn.k_proj.weight", 0, T) == 0.2
    assert evaluate_setting(setting, "model.layers.0.mlp.up_proj.weight", 0, T) == 0.9


def test_layer_positions_and_non_layer_tensors():
    recipe = load_recipe(
        "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\n"
        "parameters:\n  t: [0, 1]\n"
    )
    layouts = {m: generic_layout(m, 5) for m in ("a", "b")}
    plan = build_plan(recipe, layouts)
    by_name = {task.name: task for task in plan.tasks}
    for layer in range(5):
        task = by_name[f"model.layers.{layer}.mlp.up_proj.weight"]
        assert task.parameters["t"] == pytest.approx(layer / 4)
    assert by_name["model.embed_tokens.weight"].parameters["t"] == 0
    assert by_name["lm_head.weight"].parameters["t"] == 0
    assert plan.tasks[0].name == "model.embed_tokens.weight"
    assert [t.name for t in plan.tasks][-1] == "lm_head.weight"


def test_model_parameters_override_slice_and_global():
    recipe = load_recipe(
        "merge_method: linear\nslices:\n  - sources:\n"
        "      - {model: a, layer_range: [0, 2], parameters: {weight: 3.0}}\n"
        "      - {model: b, layer_range: [0, 2]}\n"
        "    parameters: {weight: 2.0}\n"
        "parameters: {weight: 1.0, normalize: false}\n"
    )
    plan = build_plan(recipe, {m: generic_layout(m, 2) for m in ("a", "b")})
    task = next(t for t in plan.tasks if t.layer == 1)
    assert [p["weight"] for p in task.model_parameters] == [3.0, 2.0]
    assert task.parameters["normalize"] is False


def test_single_layer_slice_sits_at_t_one():
    recipe = load_recipe(
        "merge_method: slerp\nbase_model: a\nslices:\n  - sources:\n"
        "      - {model: a, layer_range: [2, 3]}\n      - {model: b, layer_range: [2, 3]}\n"
        "parameters: {t: [0.2, 0.6]}\n"
    )
    plan = build_plan(recipe, {m: generic_layout(m, 4) for m in ("a", "b")})
    layer_tasks = [t for t in plan.tasks if t.layer is not None]
    assert {t.name.split(".")[2] for t in layer_tasks} == {"0"}
    assert all(t.parameters["t"] == pytest.approx(0.6) for t in layer_tasks)
    assert plan.num_layers == 1 and plan.layer_origins == [2]


def test_missing_required_parameter_names_model_and_tensor():
    recipe = load_recipe(
        "merge_method: linear\nmodels:\n  - {model: a, parameters: {weight: 1}}\n  - model: b\n"
    )
    with pytest.raises(MergeError, match=r"'weight' is required by linear for model 'b'"):
        build_plan(recipe, {m: generic_layout(m, 2) for m in ("a", "b")})


def test_different_layer_counts_are_refused():
    recipe = load_recipe(
        "merge_method: linear\nmodels:\n  - model: a\n  - model: b\nparameters: {weight: 1}\n"
    )
    with pytest.raises(MergeError, match="different numbers of layers"):
        build_plan(recipe, {"a": generic_layout("a", 2), "b": generic_layout("b", 3)})


def _minimal_recipe(name: str) -> dict:
    """A recipe any method accepts: three models, a base unless the method ignores it, every
    required parameter as a gradient so the plan shows it move."""
    method = get_method(name)
    count = max(method.min_others, 1)
    if method.max_others is not None:
        count = min(count, method.max_others)
    base = method.base_model != "ignored" or name == "passthrough"
    names = [f"org/m{i}" for i in range(count)]
    if method.max_models is not None and base:
        names = names[: method.max_models - 1] if name != "passthrough" else names[:1]
    per_model = {p.name: [0.2, 0.8] for p in method.parameters if p.scope == "model" and p.required}
    recipe = {
        "merge_method": name,
        "models": [{"model": m, "parameters": dict(per_model)} for m in names],
        "parameters": {
            p.name: [0.1, 0.3] for p in method.parameters if p.scope == "global" and p.required
        },
    }
    if base and name != "passthrough":
        recipe["base_model"] = "org/base"
    return recipe


@pytest.mark.parametrize("name", available_methods())
def test_every_method_plans_its_schedule(name: str) -> None:
    """``mergemed plan`` resolves every registered method's parameters per layer."""
    from mergemed.plan import plan_recipe

    table = plan_recipe(load_recipe(_minimal_recipe(name)), num_layers=3)
    assert table.plan.num_layers == 3
    method = get_method(name)
    for parameter in method.parameters:
        if parameter.required:
            column = next(c for c in table.columns if c.split("[")[0] == parameter.name)
            values = [row[column] for row in table.rows if row["layer"] is not None]
            assert values[0] != values[-1], (name, column, values)
