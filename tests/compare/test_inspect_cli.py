"""The ``mergemed inspect`` verb (:mod:`mergemed.cli.inspect_models`) and its terminal output
(:mod:`mergemed.cli.inspect_render`). The command-line runs are real subprocesses, started
together before the other tests of this file."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from compare_models import MLP_COLUMNS, PNG_SIGNATURE, Models
from helpers import run_cli

from mergemed.cli.inspect_render import check_table_metric, format_value, render_report
from mergemed.compare import InspectReport, inspect_models
from mergemed.errors import InspectError


class CliRuns:
    """``mergemed inspect`` on the layer-2 model (with --json, --plot and a base), on three
    bad inputs (each also given --json and --plot, which must not be written) and with a
    negative --top."""

    def __init__(self, models: Models, root: Path):
        self.root = root
        self.json = root / "report.json"
        self.png = root / "heatmap.png"
        self.missing = root / "no-such-model"
        pool = ThreadPoolExecutor(max_workers=2)
        layer_2 = ("inspect", models.layer_2_mlp, models.parent, "--base", models.first)
        layer_2 += ("--json", self.json, "--plot", self.png, "--quiet")
        self.futures: dict[str, Future[subprocess.CompletedProcess[str]]] = {
            "layer 2": pool.submit(run_cli, *layer_2)
        }
        for case, (first, second) in {
            "architectures": (models.parent, models.qwen_config),
            "missing": (models.parent, self.missing),
            "hidden sizes": (models.parent, models.wide_config),
        }.items():
            arguments = ("inspect", first, second, "--json", self.refused_json(case))
            arguments += ("--plot", self.refused_png(case))
            self.futures[case] = pool.submit(run_cli, *arguments)
        negative_top = ("inspect", models.parent, models.first, "--top", "-1")
        self.futures["negative top"] = pool.submit(run_cli, *negative_top)
        pool.shutdown(wait=False)

    def refused_json(self, case: str) -> Path:
        return self.root / f"{case.replace(' ', '-')}.json"

    def refused_png(self, case: str) -> Path:
        return self.root / f"{case.replace(' ', '-')}.png"

    def result(self, case: str) -> subprocess.CompletedProcess[str]:
        return self.futures[case].result(timeout=300)


@pytest.fixture(scope="module")
def cli_runs(models: Models, tmp_path_factory: pytest.TempPathFactory) -> CliRuns:
    return CliRuns(models, tmp_path_factory.mktemp("inspect-cli"))


# --------------------------------------------------------------------------------------------
# Rendering (in this process, while the subprocesses run)


@pytest.mark.usefixtures("cli_runs")  # start the subprocesses now, to overlap with these tests
def test_rendering_with_a_base(models: Models) -> None:
    report = inspect_models(models.first, models.second, base=models.parent)
    from rich.console import Console

    console = Console(width=120, record=True, color_system=None)
    for renderable in render_report(report, "task_angle"):
        console.print(renderable)
    text = console.export_text()
    assert "angle between task vectors" in text
    assert "task vectors most opposed: layer" in text
    assert "plain merge possible: yes" in text
    assert isinstance(report, InspectReport) and report.with_base


def test_top_0_lists_no_most_changed_cells(models: Models) -> None:
    from rich.console import Console

    report = inspect_models(models.first, models.second)
    console = Console(width=120, record=True, color_system=None)
    for renderable in render_report(report, "cosine", top=0):
        console.print(renderable)
    text = console.export_text()
    assert "cosine similarity of A and B" in text and "whole model: cosine" in text
    assert "most changed" not in text


@pytest.mark.parametrize(
    ("metric", "value", "cell", "text"),
    [
        ("relative_change", 0.10123, False, "10.1%"),
        ("relative_change", 0.10123, True, "10.1"),
        ("relative_change", None, False, "-"),
        ("cosine", 1.0, False, "1"),
        ("cosine", 0.9999999, False, ">0.99999"),
        ("cosine", 0.995, False, "0.99500"),
        ("task_angle", 91.24, False, "91.2°"),
    ],
)
def test_format_value(metric: str, value: float | None, cell: bool, text: str) -> None:
    assert format_value(metric, value, cell=cell) == text


def test_table_metric_choices() -> None:
    assert check_table_metric("change", with_base=False) == "relative_change"
    assert check_table_metric("angle", with_base=True) == "task_angle"
    with pytest.raises(InspectError, match="needs --base"):
        check_table_metric("angle", with_base=False)
    with pytest.raises(InspectError, match="expected one of change, cosine, angle"):
        check_table_metric("kl", with_base=False)


# --------------------------------------------------------------------------------------------
# The command line


def table_rows(stdout: str) -> dict[int, list[str]]:
    """The per-layer table's rows: ``layer -> [q, k, v, o, gate, up, down, in_norm,
    post_norm, all]``."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) == 11 and cells[0].isdigit():
            rows[int(cells[0])] = cells[1:]
    return rows


def test_cli_shows_the_change_only_in_layer_2_mlp(cli_runs: CliRuns) -> None:
    result = cli_runs.result("layer 2")
    assert result.returncode == 0, result.stderr
    header = "layer q k v o gate up down in_norm post_norm all"
    assert any(" ".join(line.split()) == header for line in result.stdout.splitlines())
    rows = table_rows(result.stdout)
    assert sorted(rows) == [0, 1, 2, 3]
    for layer, cells in rows.items():
        for column, cell in zip(header.split()[1:], cells, strict=True):
            changed = layer == 2 and column in (*MLP_COLUMNS, "all")
            assert (cell != "0") == changed, (layer, column, cell)
    assert "most changed: layer 2 " in result.stdout
    assert "task vectors most opposed: layer 2 " in result.stdout
    assert "plain merge possible: yes" in result.stdout
    assert "inspected 39 tensors" in result.stderr
    assert cli_runs.png.read_bytes().startswith(PNG_SIGNATURE)  # two panels: change and angle
    saved = json.loads(cli_runs.json.read_text())
    assert saved["layers"][2]["components"]["up"]["relative_change"] > 0.1


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The only line of a refused run (exit 2, nothing on stdout, no traceback)."""
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr and not result.stdout.strip(), shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    return lines[0]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("architectures", ["different architectures", "LlamaForCausalLM", "Qwen2ForCausalLM"]),
        ("missing", ["B: model", "no-such-model", "folder not found"]),
        ("hidden sizes", ["hidden sizes differ", "64", "128", "not a vocabulary problem"]),
    ],
)
def test_cli_refuses_bad_input_in_one_line(
    cli_runs: CliRuns, models: Models, case: str, expected: list[str]
) -> None:
    line = one_error_line(cli_runs.result(case))
    for fragment in expected:
        assert fragment in line, line
    if case != "missing":
        assert str(models.parent) in line
    assert not cli_runs.refused_json(case).exists()
    assert not cli_runs.refused_png(case).exists()


def test_cli_refuses_a_negative_top(cli_runs: CliRuns) -> None:
    line = one_error_line(cli_runs.result("negative top"))
    assert line == "error: --top -1: expected 0 or more", line
