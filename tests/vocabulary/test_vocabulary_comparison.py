"""The check before merging: how the parents' vocabularies differ, and what the user is told.

The parents (``a`` to ``e``) are described in :mod:`vocabulary_parents`.
"""

from __future__ import annotations

import re

import pytest
import yaml
from helpers import run_cli
from vocabulary_parents import merge_recipe

from mergemed.engine import merge
from mergemed.errors import MergeError, MergemedError
from mergemed.io.checkpoint import Checkpoint
from mergemed.recipe import load_recipe
from mergemed.testing import make_random_model
from mergemed.vocabulary import (
    check_hidden_sizes,
    compare_vocabularies,
    mismatch_message,
    read_vocabularies,
)


def test_differing_vocabularies_stop_with_the_lines_that_fix_it(parents, tmp_path):
    recipe = merge_recipe(parents, "linear", None)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    completed = run_cli("merge", recipe_path, "-o", tmp_path / "out")
    assert completed.returncode == 2
    message = completed.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "vocabularies differ" in message and "'myocardial'" in message
    assert "520" in message  # the padded parent's row count
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))

    suggested = re.findall(r"`(tokenizer: \{source: \w+\})`", message)
    assert suggested == ["tokenizer: {source: union}", "tokenizer: {source: base}"]
    for index, line in enumerate(suggested):
        fixed = tmp_path / f"fixed{index}.yaml"
        fixed.write_text(recipe_path.read_text() + line + "\n")
        completed = run_cli("merge", fixed, "-o", tmp_path / f"out{index}")
        assert completed.returncode == 0, completed.stderr
        assert (tmp_path / f"out{index}" / "model.safetensors").is_file()


def test_identical_vocabularies_merge_without_a_tokenizer_section(parents, tmp_path):
    twin = tmp_path / "twin"
    make_random_model(twin, base_dir=parents["a"], seed=5, perturbation=0.1)  # same tokenizer
    recipe = merge_recipe(parents, "slerp", None)
    recipe["base_model"] = str(parents["a"])
    recipe["models"] = [{"model": str(parents["a"])}, {"model": str(twin)}]
    result = merge(load_recipe(recipe), tmp_path / "out")
    assert result.report["vocabulary"]["aligned"] is False
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (
        parents["a"] / "tokenizer.json"
    ).read_bytes()


def test_different_hidden_sizes_are_not_called_a_vocabulary_problem(
    parents, tiny_tokenizer_dir, tmp_path
):
    wide = make_random_model(
        tmp_path / "wide", "llama-eval", seed=3, tokenizer_dir=tiny_tokenizer_dir
    )
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(parents["a"]), "parameters": {"weight": 0.5}},
            {"model": str(wide), "parameters": {"weight": 0.5}},
        ],
        "tokenizer": {"source": "union"},
    }
    with pytest.raises(MergemedError, match="hidden sizes differ") as error:
        merge(load_recipe(recipe), tmp_path / "out")
    assert "not different vocabularies" in str(error.value)


def _checkpoints(parents, *names: str) -> dict[str, Checkpoint]:
    return {name: Checkpoint(parents[name], name) for name in names}


def test_comparison_lists_each_parents_tokens_and_describes_them_in_one_line(parents):
    comparison = compare_vocabularies(read_vocabularies(_checkpoints(parents, "a", "b", "c")), "a")
    assert not comparison.identical
    assert comparison.rows == {"a": 512, "b": 520, "c": 515}
    assert comparison.extra == {
        "b": ["myocardial", "<clin_x>", "<|clin|>"],
        "c": ["<clin_x>", "cardio", "<|sep|>"],
    }
    assert comparison.missing == {"b": [], "c": []}
    assert comparison.moved == {"b": 0, "c": 0}

    description = comparison.describe()
    assert isinstance(description, str) and "\n" not in description
    assert "'b' has 3 tokens 'a' lacks (e.g. 'myocardial', '<clin_x>', '<|clin|>')" in description
    assert description.endswith("embedding rows differ (a: 512, b: 520, c: 515)")
    report = comparison.to_json()
    assert report["summary"] == description
    assert report["extra_tokens"]["c"] == {"count": 3, "tokens": ["<clin_x>", "cardio", "<|sep|>"]}
    message = mismatch_message(comparison)
    assert description in message and "`tokenizer: {source: union}`" in message


def test_parents_with_the_same_tokenizer_compare_as_identical(parents):
    checkpoints = {"x": Checkpoint(parents["a"], "x"), "y": Checkpoint(parents["a"], "y")}
    comparison = compare_vocabularies(read_vocabularies(checkpoints), "x")
    assert comparison.identical
    assert comparison.describe() == "identical"


def test_tokens_past_the_embedding_rows_are_not_compared(parents):
    vocabularies = read_vocabularies(_checkpoints(parents, "a", "d"))
    assert sorted(vocabularies["d"].beyond_rows) == ["unused_1", "unused_2"]
    assert compare_vocabularies(vocabularies, "a").identical


def test_hidden_sizes_are_checked_without_loading_a_tokenizer(
    parents, tiny_tokenizer_dir, tmp_path
):
    wide = make_random_model(
        tmp_path / "wide", "llama-eval", seed=3, tokenizer_dir=tiny_tokenizer_dir
    )
    vocabularies = read_vocabularies(
        {"a": Checkpoint(parents["a"], "a"), "wide": Checkpoint(wide, "wide")},
        load_tokenizers=False,
    )
    assert all(v.tokens is None for v in vocabularies.values())
    assert {v.hidden_size for v in vocabularies.values()} == {64, 128}
    with pytest.raises(MergeError, match=r"hidden sizes differ \(a: 64, wide: 128\)"):
        check_hidden_sizes(vocabularies)
    check_hidden_sizes({"a": vocabularies["a"]})
