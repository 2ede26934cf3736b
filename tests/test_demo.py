"""``mergemed demo`` end to end, as the README's first command runs it: every stage through the
real commands' library functions, outputs that exist and parse."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from mergemed.demo import STAGES, run_demo


@pytest.mark.slow
def test_the_demo_runs_the_whole_workflow(tmp_path):
    result = run_demo(tmp_path / "demo_out")
    assert list(result.seconds) == list(STAGES)
    folder = tmp_path / "demo_out"
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
