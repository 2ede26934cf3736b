"""``mergemed demo`` end to end, as the README's first command runs it: every stage through the
real commands' library functions, outputs that exist and parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import run_cli
from huggingface_hub import ModelCard
from PIL import Image

from mergemed.cli.app import main
from mergemed.demo import STAGES, DemoResult, run_demo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """The demo run once, as ``mergemed demo`` runs it."""
    return run_demo(tmp_path_factory.mktemp("demo") / "demo_out")


@pytest.mark.slow
def test_the_demo_runs_the_whole_workflow(demo: DemoResult) -> None:
    result = demo
    assert list(result.seconds) == list(STAGES)
    folder = result.folder
    for name in ("clinical", "instruct"):
        report = json.loads((folder / name / "training.json").read_text())
        assert report["kind"] == ("cpt" if name == "clinical" else "sft")
    board = json.loads((folder / "leaderboard.json").read_text())
    assert len(board["trials"]) == 4  # the 2 x 2 grid, every trial run
    for picture in ("pareto.png", "schedule.png"):
        with Image.open(folder / picture) as image:
            image.verify()
    evaluation = json.loads((folder / "eval.json").read_text())
    card = ModelCard.load(result.outputs["model card"])
    assert card.data.base_model_relation == "merge"
    merged = evaluation["summary"]["merged"]
    shown = {r.dataset_name: r.metric_value for r in card.data.eval_results}
    expected = {
        row["task"]: row["scores"][merged]["value"] for row in evaluation["summary"]["per_task"]
    }
    assert shown == expected
    assert "near chance" in result.summary() and "total" in result.summary()


def _command(*args: str) -> None:
    try:
        main(list(args))
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"mergemed {' '.join(args)} exited {exit_.code}"


@pytest.mark.slow
def test_the_shipped_tiny_configs_run_as_the_readme_walks_through_them(
    demo: DemoResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/tiny_*.yaml, recipes/tiny_example.yaml and search/tiny_slerp.yaml, run from a
    checkout in which ``mergemed demo`` has run, give two trained parents, a merge, an
    evaluation against both, a search over their schedules and a card."""
    for name in ("configs", "recipes", "search", "mergemed"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "demo_out").symlink_to(demo.folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MERGEMED_CACHE", str(tmp_path / "cache"))
    walk = demo.folder / "walk"

    # train -q silences the libraries process-wide, as a command may: run it as its own process
    for kind in ("cpt", "sft"):
        trained = run_cli("train", kind, f"configs/tiny_{kind}.yaml", "-q", cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr
        assert len(trained.stderr.strip().splitlines()) == 1, trained.stderr  # the summary only
    for name, kind in (("clinical", "cpt"), ("instruct", "sft")):
        report = json.loads((walk / name / "training.json").read_text())
        assert report["kind"] == kind and report["steps"] > 0
        assert Path(report["base_model_folder"]).resolve() == (demo.folder / "base").resolve()

    _command("merge", "recipes/tiny_example.yaml", "-o", "demo_out/walk/merged")
    merged = walk / "merged"
    assert yaml.safe_load((merged / "recipe.yaml").read_text())["merge_method"] == "slerp"

    _command(
        "evaluate", "demo_out/walk/merged", "--tasks", "mm_pubmedqa,ifeval_general",
        "--limit", "8", "--against", "demo_out/walk/clinical",
        "--against", "demo_out/walk/instruct", "--json", "demo_out/walk/eval.json",
    )  # fmt: skip
    evaluation = json.loads((walk / "eval.json").read_text())
    assert {row["task"] for row in evaluation["summary"]["per_task"]} == {
        "mm_pubmedqa",
        "ifeval_general",
    }

    _command("grid", "search/tiny_slerp.yaml")
    _command("grid", "show", "runs/tiny_slerp")
    front = json.loads((tmp_path / "runs" / "tiny_slerp" / "pareto.json").read_text())
    assert sorted(row["trial"] for row in front) == [0, 1, 2, 3]  # the 2 x 2 grid declared
    with Image.open(tmp_path / "runs" / "tiny_slerp" / "pareto.png") as image:
        image.verify()

    _command("card", "demo_out/walk/merged", "--eval", "demo_out/walk/eval.json")
    card = ModelCard.load(merged / "README.md")
    assert {r.dataset_name for r in card.data.eval_results} == {"mm_pubmedqa", "ifeval_general"}
