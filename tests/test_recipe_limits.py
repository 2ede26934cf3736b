"""Numbers in recipes are finite and in range before any model is opened: huge, infinite and
NaN values and absurd layer indices are one line naming the key (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergemed.errors import RecipeError
from mergemed.methods.registry import MAX_MAGNITUDE
from mergemed.recipe import MAX_LAYER_INDEX, load_recipe

LINEAR = """merge_method: linear
models:
  - model: missing-a
    parameters:
      weight: {value}
  - model: missing-b
    parameters:
      weight: 0.5
"""


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("9" * 400, "...(400 characters)"),
        ("1.0e+308", "got 1e+308"),
        (".inf", "got inf"),
        ("-.inf", "got -inf"),
        (str(int(MAX_MAGNITUDE) + 1), f"got {int(MAX_MAGNITUDE) + 1}"),
    ],
)
def test_out_of_range_weights_are_refused(tmp_path: Path, value: str, shown: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(LINEAR.format(value=value))
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    message = str(raised.value)
    assert message.startswith(f"{recipe}:5: models[0].parameters.weight: expected a number")
    assert shown in message and len(message) < 200


@pytest.mark.parametrize("value", [str(int(MAX_MAGNITUDE)), "-2.5", "1.0e+3"])
def test_large_but_sane_weights_load(tmp_path: Path, value: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(LINEAR.format(value=value))
    assert load_recipe(recipe).models[0].parameters["weight"] == float(value)


def test_nan_anchor_of_a_gradient_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(LINEAR.format(value="[0.5, .nan]"))
    with pytest.raises(RecipeError, match=r"weight\[1\]: expected a number, got NaN"):
        load_recipe(recipe)


@pytest.mark.parametrize("end", [MAX_LAYER_INDEX + 1, 10**400])
def test_absurd_layer_ranges_are_refused(tmp_path: Path, end: int) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n"
        f"        layer_range: [0, {end}]\n"
    )
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    message = str(raised.value)
    assert f"{recipe}:5: slices[0].sources[0].layer_range: expected layer indices below" in message
    assert len(message) < 200


def test_a_model_listed_twice_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
        "  - model: b\n    parameters: {weight: 1}\n  - model: a\n    parameters: {weight: 2}\n"
    )
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    assert str(raised.value) == (
        f"{recipe}:7: models[2].model: 'a' is listed twice (also models[0]); "
        "give each model once, with its weight"
    )


def test_same_source_twice_in_a_slice_is_refused_other_ranges_are_not(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    body = (
        "merge_method: linear\nslices:\n  - sources:\n"
        "      - {{model: a, layer_range: [0, 2], parameters: {{weight: 1}}}}\n"
        "      - {{model: a, layer_range: [{start}, {end}], parameters: {{weight: 1}}}}\n"
    )
    recipe.write_text(body.format(start=2, end=4))
    assert len(load_recipe(recipe).slices[0].sources) == 2
    recipe.write_text(body.format(start=0, end=2))
    with pytest.raises(RecipeError, match=r"'a' layers \[0, 2\] are listed twice"):
        load_recipe(recipe)
