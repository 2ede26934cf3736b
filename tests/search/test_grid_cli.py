"""``mergemed grid`` on bad input: one line on stderr, exit 2, and no run folder or storage
left behind (everything checkable is checked before either is created)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli
from test_study import write_space

pytest.importorskip("optuna")
pytest.importorskip("lm_eval")


def refused(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_more_trials_than_max_trials_needs_yes(tiny_eval_models, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)  # a 2 x 2 grid
    run = tmp_path / "run"
    result = run_cli("grid", str(space), "--run-dir", str(run), "--max-trials", "3")
    refused(result, "4 trials is more than max_trials 3", "--yes")
    assert not run.exists()


def test_parents_whose_shapes_differ(tiny_eval_models, _tiny_models, tmp_path) -> None:
    instruct, _, _ = tiny_eval_models
    other_shape = _tiny_models("llama", 0)  # hidden size 64 against 128
    space = write_space(tmp_path, instruct, other_shape)
    run = tmp_path / "run"
    result = run_cli("grid", str(space), "--run-dir", str(run))
    refused(result, "hidden sizes differ", "cannot be merged")
    assert not run.exists()


def test_a_named_task_that_cannot_be_scored_offline(tiny_eval_models, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    space.write_text(space.read_text().replace("['mm_pubmedqa', 'ifeval_med']", "[mmlu_general]"))
    run = tmp_path / "run"
    result = run_cli("grid", str(space), "--run-dir", str(run))
    refused(result, "score.tasks: mmlu_general", "Hugging Face Hub", "--data-dir")
    assert not run.exists()


def test_export_and_show_of_a_folder_without_a_search(tmp_path: Path) -> None:
    refused(run_cli("grid", "show", str(tmp_path)), "not a search run folder")
    out = tmp_path / "best"
    refused(run_cli("grid", "export", str(tmp_path), "-o", str(out)), "not a search run folder")
    assert not out.exists()


def test_bad_sort_is_refused(tiny_eval_models, tmp_path) -> None:
    from mergemed.search.export import ranked_trials
    from mergemed.search.space import SearchError

    with pytest.raises(SearchError, match="--sort best: expected one of rank"):
        ranked_trials({"trials": []}, "best")
