"""YAML validated by pydantic: every problem named by file, line and key path (a key's own
line, list indices, nested keys), all collected; and hostile YAML (alias bombs, recursive
anchors, duplicate keys, non-UTF-8 bytes) refused with one line, quickly and in bounded
memory."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from mergemed.errors import ConfigError, RecipeError
from mergemed.recipe import load_recipe
from mergemed.validated_yaml import MAX_EXPANDED_NODES, Problems, format_path, load_validated


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float
    name: str = "x"


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    items: list[Item] = []
    settings: dict[str, Item] | None = None
    targets: list[str] | Literal["all"] = "all"


def problems_of(tmp_path: Path, text: str, **hooks) -> tuple[Path, ConfigError]:
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_validated(path, Document, what="document", error=ConfigError, **hooks)
    assert "\n" not in str(raised.value)
    return path, raised.value


def test_a_list_item_is_named_by_index_on_its_own_line(tmp_path: Path) -> None:
    path, error = problems_of(
        tmp_path, "title: t\nitems:\n  - weight: 1\n  - name: b\n    weight: heavy\n"
    )
    [problem] = error.problems
    assert problem.startswith(f"{path}:5: items[1].weight: Input should be a valid number")
    assert problem.endswith("got 'heavy'") and str(error) == problem


def test_a_missing_key_is_placed_on_its_parent_key_own_line(tmp_path: Path) -> None:
    """``first:`` is on line 3 and its mapping starts on line 4: the key's own line wins."""
    path, error = problems_of(tmp_path, "title: t\nsettings:\n  first:\n    wieght: 2\n")
    assert error.problems == [
        f"{path}:3: settings.first.weight: required key is missing",
        f"{path}:4: settings.first.wieght: unknown key",
    ]
    assert str(error) == f"{error.problems[0]} (and 1 more problem: `mergemed validate`)"


def test_every_problem_is_collected(tmp_path: Path) -> None:
    path, error = problems_of(tmp_path, "items: [{weight: w}]\ncolour: red\n")
    assert sorted(error.problems) == sorted(
        [
            f"{path}:1: title: required key is missing",
            f"{path}:1: items[0].weight: Input should be a valid number, unable to parse "
            "string as a number, got 'w'",
            f"{path}:2: colour: unknown key",
        ]
    )
    assert str(error).endswith("(and 2 more problems: `mergemed validate`)")


def test_union_member_tags_stay_out_of_the_key_path(tmp_path: Path) -> None:
    path, error = problems_of(tmp_path, "title: t\ntargets: 5\n")
    assert error.problems == [f"{path}:2: targets: Input should be a valid list, got 5"]


def test_checks_before_and_after_pydantic_name_their_keys(tmp_path: Path) -> None:
    def before(data: dict, problems: Problems) -> None:
        if data.get("title") == "draft":
            problems.add(("title",), "not a draft")

    def after(loaded: Document, problems: Problems) -> None:
        for index, item in enumerate(loaded.items):
            if item.weight < 0:
                problems.add(("items", index, "weight"), "must be >= 0")

    path, error = problems_of(tmp_path, "title: draft\nitems: [{weight: -1}]\n", before=before)
    assert error.problems == [f"{path}:1: title: not a draft"]  # before pydantic runs
    path, error = problems_of(tmp_path, "title: t\nitems:\n  - {weight: -1}\n", after=after)
    assert error.problems == [f"{path}:3: items[0].weight: must be >= 0"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "{path}: expected a mapping of document keys, got list"),
        ("", "{path}: expected a mapping of document keys, got NoneType"),
        ("just text\n", "{path}: expected a mapping of document keys, got str"),
    ],
)
def test_a_top_level_that_is_not_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    path, error = problems_of(tmp_path, text)
    assert str(error) == expected.format(path=path)


def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    path, error = problems_of(tmp_path, "title: t\n\tweight: 1\n")
    assert (
        str(error) == f"{path}:2: not valid YAML: found character '\\t' that cannot start any token"
    )
    path, error = problems_of(tmp_path, "title: t\nitems: [\n  {weight: 1},\n  {weight: 2\n")
    assert str(error).startswith(f"{path}:5: not valid YAML: expected ',' or '}}'")


def test_a_yaml_string_or_a_missing_file_is_named_by_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^document:2: colour: unknown key$"):
        load_validated("title: t\ncolour: red\n", Document, what="document", error=ConfigError)
    with pytest.raises(ConfigError, match=r"absent\.yaml: document file not found"):
        load_validated(tmp_path / "absent.yaml", Document, what="document", error=ConfigError)


def test_format_path() -> None:
    assert format_path(("models", 1, "parameters", "weight")) == "models[1].parameters.weight"
    assert format_path((0, "model")) == "[0].model"
    assert format_path(()) == "(top level)"


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
