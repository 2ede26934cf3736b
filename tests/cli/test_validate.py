"""``mergemed validate FILE`` for real (a subprocess): recipes and training configs alike,
printed as mergemed reads them or every problem on a line of its own, exit status 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml
from helpers import run_cli

from mergemed.recipe import load_recipe
from mergemed.train.config import load_train_config


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_a_training_config_prints_with_every_default(tmp_path: Path) -> None:
    config = write(
        tmp_path / "cpt.yaml",
        """
        model: {path: HuggingFaceTB/SmolLM2-135M}
        data:
          sources:
            - {name: medical, path: pubmed.jsonl, text_field: abstract}
        output: {dir: clinical}
        """,
    )
    result = run_cli("validate", config)
    assert result.returncode == 0, result.stderr
    assert error_lines(result.stderr) == [f"valid training config: {config}"]
    printed = yaml.safe_load(result.stdout)
    assert printed["kind"] == "cpt"  # told by its raw-text sources
    assert printed["training"]["warmup_ratio"] == 0.01 and printed["lora"] is None
    assert printed["data"]["sources"][0]["weight"] == 1.0
    assert printed["output"] == {"dir": "clinical", "overwrite": False}
    # What it prints is what training writes next to the model: it loads back the same.
    assert load_train_config(result.stdout) == load_train_config(config, "cpt")


def test_every_problem_of_a_training_config_is_a_line(tmp_path: Path) -> None:
    config = write(
        tmp_path / "sft.yaml",
        """
        kind: sft
        model: {path: base}
        data: {path: records.jsonl, format: chat}
        training:
          learning_rate: -1
        output: {dir: instruct}
        """,
    )
    trained = run_cli("train", "sft", config)
    assert trained.returncode == 2
    [line] = error_lines(trained.stderr)
    assert "1 more problem: `mergemed validate`" in line  # the hint this command answers

    result = run_cli("validate", config)
    assert result.returncode == 2 and result.stdout == ""
    first, second = error_lines(result.stderr)
    assert first.startswith(f"error: {config}:3: data.format: "), result.stderr
    assert "'chat'" in first
    assert second.startswith(f"error: {config}:5: training.learning_rate: "), result.stderr


def test_a_recipe_still_validates(tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "merge.yaml",
        """
        merge_method: slerp
        base_model: org/a
        models: [{model: org/a}, {model: org/b}]
        parameters: {t: 0.5}
        """,
    )
    result = run_cli("validate", recipe)
    assert result.returncode == 0, result.stderr
    assert error_lines(result.stderr) == [f"valid recipe: {recipe}"]
    assert load_recipe(result.stdout) == load_recipe(recipe)


def test_a_file_that_is_neither_says_what_was_expected(tmp_path: Path) -> None:
    other = write(tmp_path / "compose.yaml", "services: {web: {image: nginx}}\nversion: 3\n")
    result = run_cli("validate", other)
    assert result.returncode == 2 and result.stdout == ""
    assert error_lines(result.stderr) == [
        f"error: {other}: expected a recipe (merge_method, models or slices...) or a training "
        "config (model, data, output...); found keys: services, version"
    ]


def test_another_methods_parameter_is_accepted_and_strict_refuses_it(tmp_path: Path) -> None:
    """mergekit ignores a parameter the method does not use (its own tests give slerp models a
    ``weight``): mergemed accepts it and names it; ``--strict`` refuses it; a name no method
    takes is still an error."""
    recipe = write(
        tmp_path / "merge.yaml",
        """
        merge_method: slerp
        base_model: org/a
        models:
          - model: org/a
            parameters: {weight: 0.5}
          - model: org/b
            parameters: {weight: 0.5}
        parameters: {t: 0.5}
        """,
    )
    assert load_recipe(recipe).ignored_parameters == [
        "models[0].parameters.weight",
        "models[1].parameters.weight",
    ]
    assert run_cli("validate", recipe).returncode == 0
    strict = run_cli("validate", recipe, "--strict")
    assert strict.returncode == 2
    assert error_lines(strict.stderr) == [
        f"error: {recipe}: models[{i}].parameters.weight: slerp does not use it (--strict)"
        for i in (0, 1)
    ]
    typo = write(tmp_path / "typo.yaml", recipe.read_text().replace("weight", "wieght"))
    refused = run_cli("validate", typo)
    assert refused.returncode == 2 and "unknown parameter for slerp" in refused.stderr
