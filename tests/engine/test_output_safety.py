"""``--overwrite`` never destroys an input: an output that is, contains or lies inside an input
is refused in one line before anything is written, and the inputs are unchanged (issue 16)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_cli


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def models(tmp_path: Path, tiny_model_pair: Callable[[str], tuple[Path, Path]]) -> Path:
    """``models/base`` and ``models/other``: copies of a tiny pair, which these tests may
    attack."""
    base, other = tiny_model_pair("llama")
    shutil.copytree(base, tmp_path / "models" / "base")
    shutil.copytree(other, tmp_path / "models" / "other")
    recipe = tmp_path / "recipe.yaml"
    paths = [json.dumps(str(tmp_path / "models" / n)) for n in ("base", "other")]
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {paths[0]}\nmodels:\n  - model: {paths[0]}\n"
        f"  - model: {paths[1]}\nparameters:\n  t: 0.5\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("target", "relation"),
    [("models/other", "is"), ("models", "contains"), ("models/other/sub", "is inside")],
)
@pytest.mark.parametrize("overwrite", [True, False])
def test_output_touching_an_input_is_refused(
    models: Path, target: str, relation: str, overwrite: bool
) -> None:
    before = tree_digest(models / "models")
    output = models / target
    flags = ["--overwrite"] if overwrite else []
    result = run_cli("merge", models / "recipe.yaml", "-o", output, *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    if overwrite or relation == "is inside":
        assert f"the output {relation} the input" in lines[0], lines[0]
    else:
        assert "output folder exists; pass --overwrite" in lines[0], lines[0]
    assert tree_digest(models / "models") == before
    assert [p.name for p in models.rglob("*mergemed*")] == []


def test_overwrite_through_a_symbolic_link_is_refused(models: Path) -> None:
    before = tree_digest(models / "models")
    link = models / "link-to-other"
    link.symlink_to(models / "models" / "other")
    result = run_cli("merge", models / "recipe.yaml", "-o", link, "--overwrite")
    assert result.returncode == 2
    assert "the output is the input" in result.stderr
    assert tree_digest(models / "models") == before


def test_overwrite_of_an_unrelated_output_replaces_it(models: Path) -> None:
    output = models / "merged"
    output.mkdir()
    (output / "old.txt").write_text("old")
    result = run_cli("merge", models / "recipe.yaml", "-o", output, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (output / "old.txt").exists()
    assert (output / "merge.json").is_file()
