"""``mergemed plan`` as a user runs it: model names of any shape in the table, one line when
the plot cannot be written (issue 16)."""

from __future__ import annotations

from pathlib import Path

from helpers import run_cli


def write_linear(path: Path, first: str, second: str) -> Path:
    path.write_text(
        "merge_method: linear\nmodels:\n"
        f"  - model: '{first}'\n    parameters: {{weight: 0.3}}\n"
        f"  - model: '{second}'\n    parameters: {{weight: 0.7}}\n"
    )
    return path


def test_model_names_that_look_like_markup_are_shown_as_written(tmp_path: Path) -> None:
    names = ("/abs/[bold]clinical", "rel/instruct[/]")
    recipe = write_linear(tmp_path / "recipe.yaml", *names)
    result = run_cli(
        "plan", recipe, "--num-layers", "2", "--png", tmp_path / "plan.png", env={"COLUMNS": "200"}
    )
    assert result.returncode == 0, result.stderr
    for name in names:
        assert f"weight[{name}]" in result.stdout, result.stdout
    assert (tmp_path / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unwritable_plot_is_one_line(tmp_path: Path) -> None:
    recipe = write_linear(tmp_path / "recipe.yaml", "a", "b")
    target = tmp_path / "no-such-folder" / "plan.png"
    result = run_cli("plan", recipe, "--num-layers", "2", "--png", target)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"error: {target}: cannot write the plot: no folder {target.parent}"
    assert "Traceback" not in result.stderr
