"""Hostile YAML: alias bombs, recursive anchors, duplicate keys and non-UTF-8 bytes are refused
with one line naming the file (and line or byte), quickly and in bounded memory."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from mergemed.errors import RecipeError
from mergemed.recipe import load_recipe
from mergemed.validated_yaml import MAX_EXPANDED_NODES


def billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        aliases = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast_and_small(tmp_path: Path) -> None:
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(billion_laughs())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.process_time()
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    cpu_seconds = time.process_time() - started
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    message = str(raised.value)
    assert message.startswith(f"{recipe}:")
    assert "anchor &l" in message and "expands to more than" in message
    assert "\n" not in message
    # CPU time, not wall time: the bound holds on a loaded machine too.
    assert cpu_seconds < 1.0
    assert grown_kb < 100 * 1024


def test_aliases_within_the_budget_still_work(tmp_path: Path) -> None:
    """mergekit configurations use anchors for shared parameter blocks: those keep working."""
    recipe = tmp_path / "anchors.yaml"
    recipe.write_text(
        "merge_method: linear\n"
        "models:\n"
        "  - model: a\n"
        "    parameters: &shared {weight: 0.5}\n"
        "  - model: b\n"
        "    parameters: *shared\n"
    )
    loaded = load_recipe(recipe)
    assert [m.parameters["weight"] for m in loaded.models] == [0.5, 0.5]


def test_budget_counts_expanded_nodes() -> None:
    """Just under the budget loads; the same shape one level deeper is refused."""
    from mergemed.validated_yaml import parse_yaml

    width = 10
    levels = 1
    while width ** (levels + 1) < MAX_EXPANDED_NODES // 2:
        levels += 1
    text = "l0: &l0 [" + ", ".join(["1"] * width) + "]\n"
    for level in range(1, levels):
        text += f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]\n"
    data, _ = parse_yaml(text, "ok.yaml", RecipeError)
    assert len(data[f"l{levels - 1}"]) == width
    deeper = text + f"l{levels}: &l{levels} [" + ", ".join([f"*l{levels - 1}"] * width * 4) + "]\n"
    with pytest.raises(RecipeError, match="expands to more than"):
        parse_yaml(deeper, "deep.yaml", RecipeError)


def test_recursive_anchor_is_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "recursive.yaml"
    recipe.write_text("merge_method: linear\nmodels: &loop\n  - model: a\n    parameters: *loop\n")
    with pytest.raises(RecipeError, match=r"recursive\.yaml:2: anchor &loop refers to itself"):
        load_recipe(recipe)


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    recipe = tmp_path / "duplicate.yaml"
    recipe.write_text(
        "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n"
        "parameters:\n  t: 0.2\n  t: 0.8\n"
    )
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    assert str(raised.value) == (
        f"{recipe}:8: duplicate key 't' (first on line 7); each key may appear once"
    )


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    recipe = tmp_path / "merge_key.yaml"
    recipe.write_text(
        "defaults: &defaults {weight: 0.5}\n"
        "merge_method: linear\n"
        "models:\n"
        "  - model: a\n"
        "    parameters:\n"
        "      <<: *defaults\n"
        "  - model: b\n"
        "    parameters:\n"
        "      <<: *defaults\n"
        "      weight: 0.25\n"
    )
    # The extra top-level key is what the recipe schema refuses, not the merge keys.
    with pytest.raises(RecipeError, match="defaults: unknown key"):
        load_recipe(recipe)


@pytest.mark.parametrize(
    ("content", "offset"),
    [(b"merge_method: lin\xffear\n", 17), (b"\xfe\xfemerge_method: linear\n", 0)],
)
def test_non_utf8_bytes_name_the_offset(tmp_path: Path, content: bytes, offset: int) -> None:
    recipe = tmp_path / "latin.yaml"
    recipe.write_bytes(content)
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    assert str(raised.value) == (
        f"{recipe}: not UTF-8 text: byte 0x{content[offset]:02x} at offset {offset}"
    )
