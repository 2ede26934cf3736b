"""validate_file: a recipe or a training config told apart by its keys, loaded by its own
loader, every problem collected, nothing raised."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergemed.validation import validate_file


def checked(tmp_path: Path, text: str):
    path = tmp_path / "file.yaml"
    path.write_text(text)
    return path, validate_file(path)


def test_an_sft_config_without_kind_is_read_as_sft(tmp_path: Path) -> None:
    _, result = checked(
        tmp_path, "model: {path: m}\ndata: {path: records.jsonl}\noutput: {dir: out}\n"
    )
    assert result.valid and result.kind == "training config"
    printed = yaml.safe_load(result.yaml)
    assert printed["kind"] == "sft" and printed["data"]["format"] == "auto"


def test_a_config_whose_kind_cannot_be_told_says_so(tmp_path: Path) -> None:
    path, result = checked(tmp_path, "model: {path: m}\ndata: {}\noutput: {dir: out}\n")
    assert result.kind == "training config" and result.yaml is None
    assert result.problems == [
        f"{path}: kind: not stated, and data gives both or neither of sources (cpt) and path "
        "(sft); add kind: cpt or kind: sft"
    ]
    path, result = checked(tmp_path, "kind: cpt\nmodel: {path: m}\ndata: {}\noutput: {dir: o}\n")
    assert result.problems == [f"{path}:3: data.sources: cpt needs at least one raw-text source"]


def test_a_recipe_reports_every_problem(tmp_path: Path) -> None:
    path, result = checked(
        tmp_path,
        "merge_method: linear\nmodels: [{model: a}]\ndtype: float13\nrandom_seed: soon\n",
    )
    assert result.kind == "recipe" and not result.valid
    assert [line.split(": ", 2)[:2] for line in result.problems] == [
        [f"{path}:3", "dtype"],
        [f"{path}:4", "random_seed"],
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: [unclosed\n", ":2: not valid YAML"),
        ("- merge_method: linear\n", ": expected a recipe or a training config, got a list"),
        ("", ": expected a recipe or a training config, got an empty file"),
        ("merge_method: linear\nmodel: m\n", ": expected a recipe (merge_method, models"),
    ],
)
def test_what_is_neither_is_one_problem(tmp_path: Path, text: str, expected: str) -> None:
    path, result = checked(tmp_path, text)
    assert result.kind is None and len(result.problems) == 1
    assert result.problems[0].startswith(f"{path}{expected}"), result.problems


def test_a_missing_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    result = validate_file(tmp_path / "absent.yaml")
    assert result.problems == [f"{tmp_path / 'absent.yaml'}: file not found"]
