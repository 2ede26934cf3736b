"""Recipes: shipped files validate and plan; mergekit YAML loads; errors name file, line, key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergemed.demo import tiny_example_recipe_text
from mergemed.errors import RecipeError
from mergemed.plan import plan_recipe
from mergemed.recipe import load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("**/*.yaml"))


def test_all_shipped_recipes_are_found():
    names = {p.name for p in RECIPES}
    assert {
        "gatortron_llama.yaml",
        "gatortron_llama_linear.yaml",
        "definemed_qwen.yaml",
        "task_arithmetic_medical.yaml",
        "tiny_example.yaml",
        "union_vocab_example.yaml",
    } <= names
    assert len(RECIPES) == 6


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates_and_plans(path):
    recipe = load_recipe(path)
    summary = plan_recipe(path, num_layers=32)
    # None of the shipped recipes' models is here: the plan stands in a Llama-style layout
    # with the layers the recipe's slices cover, else the 32 asked for.
    slices = recipe.slices or []
    layers = sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in slices)
    layers = layers or 32
    assert not summary.used_real_models
    assert summary.plan.num_layers == layers
    assert {row["layer"] for row in summary.rows} == {None, *range(layers)}
    names = [task.name for task in summary.plan.tasks]
    assert len(names) == len(set(names))  # each output tensor is written once
    references = set(recipe.model_references())
    assert {source.model for task in summary.plan.tasks for source in task.sources} <= references
    if recipe.merge_method == "slerp":
        assert all(0 <= row["t"] <= 1 for row in summary.rows)
    assert json.loads(json.dumps(summary.to_json()))["num_layers"] == layers
    # Round trip: the YAML mergemed writes reads back to the same recipe.
    assert load_recipe(recipe.to_yaml()) == recipe


def test_bundled_tiny_recipe_is_the_shipped_one():
    assert (Path(__file__).parents[1] / "recipes" / "tiny_example.yaml").read_text() == (
        tiny_example_recipe_text()
    )


def test_definemed_schedule_is_component_specific():
    summary = plan_recipe(Path(__file__).parents[1] / "recipes" / "definemed_qwen.yaml")
    rows = {(r["layer"], r["component"]): r["t"] for r in summary.rows}
    assert rows[(0, "self_attn")] == 0 and rows[(0, "mlp")] == 1
    assert rows[(27, "self_attn")] == 1 and rows[(27, "mlp")] == 0
    assert rows[(None, "embed_tokens")] == 0.5


def test_mergekit_yaml_loads_unchanged():
    text = """
slices:
  - sources:
      - model: org/a@main
        layer_range: [0, 4]
      - model: org/b
        layer_range: [0, 4]
merge_method: slerp
base_model: org/a@main
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - value: 0.5
dtype: bfloat16
tokenizer_source: base
"""
    recipe = load_recipe(text)
    assert recipe.slices[0].sources[0].layer_range == (0, 4)
    assert recipe.model_references() == ["org/a@main", "org/b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n"
            "parameters:\n  t: 1.5\n",
            "recipe:7: parameters.t: expected a number in [0, 1], got 1.5",
        ),
        (
            "merge_method: slerpp\nmodels:\n  - model: a\n",
            "recipe:1: merge_method: 'slerpp' (did you mean 'slerp'?)",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      wieght: 1\n",
            "recipe:5: models[0].parameters.wieght: unknown parameter for linear (did you mean 'weight'?)",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: []\n",
            "recipe:5: models[0].parameters.weight: empty gradient list",
        ),
        ("merge_method: linear\nmodels:\n  - model: a\nbogus: 1\n", "recipe:4: bogus: unknown key"),
        (
            "merge_method: slerp\nmodels:\n  - model: a\n  - model: b\n",
            "base_model: slerp needs a base_model",
        ),
        ("merge_method: linear\nmodels:\n  - mdl: a\n", "recipe:3: models[0].mdl: unknown key"),
        ("merge_method: linear\nmodels: [\n", "recipe:3: not valid YAML"),
        (
            "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n    parameters:\n      t: 0.5\n"
            "  - model: b\n",
            "t applies to the whole merge",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: a\ntokenizer_source: b\n",
            "recipe:4: tokenizer_source: expected 'base', 'union' or one of the recipe's models",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: a\ntokenizer:\n  pad_to_multiple_of: -8\n",
            "recipe:5: tokenizer.pad_to_multiple_of: expected a positive integer, got -8",
        ),
    ],
)
def test_errors_name_line_and_key(text, expected):
    with pytest.raises(RecipeError) as error:
        load_recipe(text)
    # The message states the first problem on one line; every problem is in .problems.
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(error.value.problems[0])
    assert any(expected in problem for problem in error.value.problems), error.value.problems


def test_recipe_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"merge_method": "linear", "models": [{"model": "a"}], "dtype": "int4"})
    )
    with pytest.raises(RecipeError, match=r"bad\.yaml:\d+: dtype: "):
        load_recipe(path)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
