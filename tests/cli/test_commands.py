"""``mergemed plan``, ``validate`` and ``methods`` as a user runs them (real subprocesses):
``plan`` resolves per-layer values and draws them, ``validate`` checks a recipe, ``methods``
lists the registry."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_cli, slerp_recipe, succeeded, write

from mergemed.methods import available_methods
from mergemed.recipe import load_recipe

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# mergemed plan


@pytest.mark.slow
def test_plan_json_gives_closed_form_gradients(tmp_path: Path) -> None:
    """Models that are not available locally: ``--num-layers 4`` stands in for them."""
    hf_home = tmp_path / "empty-hf-home"
    hf_home.mkdir()
    recipe = write(
        tmp_path / "recipe.yaml",
        """
        merge_method: slerp
        base_model: nobody/base-model
        models:
          - model: nobody/base-model
          - model: nobody/other-model
        parameters:
          t:
            - filter: self_attn
              value: [0, 1]
            - filter: mlp
              value: [1, 0.5, 0]
            - value: 0.25
        """,
    )
    result = succeeded(
        run_cli("plan", recipe, "--json", "--num-layers", "4", env={"HF_HOME": str(hf_home)})
    )
    plan = json.loads(result.stdout)
    assert plan["merge_method"] == "slerp"
    assert plan["num_layers"] == 4
    assert plan["used_real_models"] is False
    assert plan["columns"] == ["t"]

    def expected(component: str, layer: int | None) -> float:
        if layer is None:
            return 0.25
        position = layer / 3  # four layers: positions 0, 1/3, 2/3, 1
        if component == "self_attn":
            return position  # [0, 1]
        if component == "mlp":
            s = 2 * position  # [1, 0.5, 0]: anchors at s = 0, 1, 2
            return 1 - 0.5 * s
        return 0.25

    rows = {(row["layer"], row["component"]): row["t"] for row in plan["rows"]}
    assert [rows[(layer, "self_attn")] for layer in range(4)] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert [rows[(layer, "mlp")] for layer in range(4)] == pytest.approx([1, 2 / 3, 1 / 3, 0])
    for (layer, component), value in rows.items():
        assert value == pytest.approx(expected(component, layer)), (layer, component)
    assert {layer for layer, _ in rows} == {None, 0, 1, 2, 3}

    by_name = {tensor["name"]: tensor for tensor in plan["tensors"]}
    assert by_name["model.layers.1.mlp.down_proj.weight"]["position"] == pytest.approx(1 / 3)
    assert len(by_name) == 4 * 9 + 3
    for name, tensor in by_name.items():
        component = next((c for c in ("self_attn", "mlp") if c in name), "other")
        value = tensor["parameters"]["t"]
        assert value == pytest.approx(expected(component, tensor["layer"])), name


@pytest.mark.slow
def test_plan_draws_a_png_in_the_current_folder(
    tmp_path: Path, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> None:
    """The plot goes where the user is (or --png), never into the recipe's folder."""
    base, other = tiny_model_pair("llama")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "work").mkdir()
    recipe = slerp_recipe(tmp_path / "recipes" / "recipe.yaml", base, other, "[0, 0.5, 1]")
    result = succeeded(run_cli("plan", recipe, cwd=tmp_path / "work"))
    assert sorted(p.name for p in (tmp_path / "recipes").iterdir()) == ["recipe.yaml"]
    picture = tmp_path / "work" / "recipe.plan.png"
    assert picture.read_bytes()[:8] == PNG_SIGNATURE
    assert picture.stat().st_size > 5_000
    assert "self_attn" in result.stdout and "mlp" in result.stdout
    assert str(picture) in result.stderr.replace("\n", "")
    assert "not found locally" not in result.stderr  # the real models were used


# --------------------------------------------------------------------------------------------
# mergemed validate and mergemed methods


@pytest.mark.slow
def test_validate_rejects_a_bad_recipe(tmp_path: Path) -> None:
    bad = slerp_recipe(tmp_path / "bad.yaml", "/models/a", "/models/b", "[0, 1.5]")
    result = run_cli("validate", bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {bad}:7: parameters.t[1]: expected a number in [0, 1], got 1.5"]
    assert result.stdout == ""


def test_a_recipe_with_two_problems(tmp_path: Path) -> None:
    """``merge`` states the first problem on one line and counts the rest; ``validate`` lists
    every one, each naming its line and key."""
    bad = slerp_recipe(tmp_path / "bad.yaml", "/models/a", "/models/b", "[0, 1]")
    bad.write_text(bad.read_text() + "dtype: float13\nrandom_seed: soon\n")
    first = f"{bad}:8: dtype: "
    merged = run_cli("merge", bad, "-o", tmp_path / "out")
    assert merged.returncode == 2
    lines = [line for line in merged.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {first}"), merged.stderr
    assert "1 more problem" in lines[0]
    assert not (tmp_path / "out").exists()
    validated = run_cli("validate", bad)
    assert validated.returncode == 2
    lines = [line for line in validated.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith(f"error: {first}"), validated.stderr
    assert lines[1].startswith(f"error: {bad}:9: random_seed:"), validated.stderr


@pytest.mark.slow
def test_validate_prints_the_recipe_as_loadable_yaml(tmp_path: Path) -> None:
    """What ``validate`` prints is the recipe as mergemed reads it: YAML that loads back to
    the same recipe, whatever the length of its paths or the brackets of its chat template."""
    models = tmp_path / ("a-folder-with-a-rather-long-name-" * 3)
    good = slerp_recipe(tmp_path / "good.yaml", models / "base", models / "other", "[0, 1]")
    template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    good.write_text(good.read_text() + f"chat_template: {json.dumps(template)}\n")
    result = succeeded(run_cli("validate", good))
    assert "valid" in result.stderr
    printed = load_recipe(result.stdout)
    assert printed == load_recipe(good)
    assert printed.chat_template == template


@pytest.mark.slow
def test_methods_lists_every_method() -> None:
    script = Path(sys.executable).with_name("mergemed")
    assert script.is_file(), "the set-up command installs the mergemed console script"
    result = succeeded(run_cli("methods", command=(str(script),)))
    methods = available_methods()
    expected = {"linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear"}
    assert expected | {"passthrough"} <= set(methods)
    for name in methods:
        assert re.search(rf"\b{name}\b", result.stdout), f"{name} not listed"


def test_merge_names_the_parameters_it_ignores(tiny_model_pair, tmp_path: Path) -> None:
    base, other = tiny_model_pair("llama")
    recipe = tmp_path / "slerp.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {base}\nmodels:\n"
        f"  - model: {base}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {other}\nparameters: {{t: 0.5}}\n"
    )
    result = run_cli("merge", recipe, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: slerp does not use models[0].parameters.weight: ignored, as mergekit does "
        "(recorded in merge.json)"
    ]
    report = json.loads((tmp_path / "out" / "merge.json").read_text())
    assert report["ignored_parameters"] == ["models[0].parameters.weight"]


def test_the_gatortron_recipe_names_both_missing_models_and_how_to_get_them(
    tmp_path: Path,
) -> None:
    """The shipped GatorTronLlama recipe on a machine without its models: one line naming the
    gated Hub model and the local folder, how to log in, that GatorTronLlama is a local folder;
    exit 2 and no output folder."""
    hf_home = tmp_path / "empty-hf-home"
    hf_home.mkdir()
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "gatortron_llama.yaml"
    result = run_cli(
        "merge", recipe, "-o", tmp_path / "out", env={"HF_HOME": str(hf_home)}, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "'meta-llama/Llama-3.1-8B-Instruct'" in line and "GatorTronLlama-8B" in line
    assert "HF_TOKEN" in line and "hf auth login" in line and "local folder" in line
    assert not (tmp_path / "out").exists()
