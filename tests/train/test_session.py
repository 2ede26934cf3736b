"""A training run's hold on its output: the lock, the working folder, resuming, and what a run
that fails leaves behind (no model needed: nothing here trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergemed.errors import OutputError
from mergemed.outputs import OutputLock
from mergemed.train.config import TrainConfig, load_train_config
from mergemed.train.session import (
    TrainError,
    prepare_working_folder,
    resume_key,
    training_inputs,
    training_session,
    working_folder,
)


def config(tmp_path: Path, learning_rate: float = 1e-3, **output: object) -> TrainConfig:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "text.txt").write_text("a document\n")
    return load_train_config(
        {
            "model": {"path": str(tmp_path / "model")},
            "data": {
                "sources": [
                    {"name": "general", "path": str(tmp_path / "text.txt")},
                    {"name": "web", "path": "hub:owner/corpus"},
                ]
            },
            "training": {"learning_rate": learning_rate},
            "output": {"dir": str(tmp_path / "out"), **output},
        },
        "cpt",
    )


def checkpoint(work: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint folder; ``complete``: with the file the Trainer writes last."""
    path = work / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_a_fresh_run_gets_a_working_folder_with_its_resume_key(tmp_path: Path) -> None:
    settings = config(tmp_path)
    work, resume_from = prepare_working_folder(settings, tmp_path / "out")
    assert work == tmp_path / ".out.mergemed-training" == working_folder(tmp_path / "out")
    assert resume_from is None
    assert json.loads((work / "resume_key.json").read_text()) == resume_key(settings, 1)
    assert resume_key(settings, 1) == {**settings.resume_key(), "world_size": 1}


def test_the_last_checkpoint_of_the_same_config_is_resumed(tmp_path: Path) -> None:
    settings = config(tmp_path)
    work, _ = prepare_working_folder(settings, tmp_path / "out")
    checkpoint(work, 5)
    newest = checkpoint(work, 10)
    assert prepare_working_folder(settings, tmp_path / "out") == (work, str(newest))
    checkpoint(work, 15, complete=False)  # killed while it was written: not resumed from
    assert prepare_working_folder(settings, tmp_path / "out") == (work, str(newest))


def test_checkpoints_of_another_number_of_workers_are_refused(tmp_path: Path) -> None:
    settings = config(tmp_path)
    work, _ = prepare_working_folder(settings, tmp_path / "out", world_size=2)
    checkpoint(work, 10)
    with pytest.raises(TrainError, match="world_size: 2 in the checkpoint, 1 now"):
        prepare_working_folder(settings, tmp_path / "out")
    # A key written before the number of workers was recorded is a one-worker run's.
    (work / "resume_key.json").write_text(json.dumps(settings.resume_key()))
    assert prepare_working_folder(settings, tmp_path / "out")[1] is not None
    with pytest.raises(TrainError, match="world_size: 1 in the checkpoint, 2 now"):
        prepare_working_folder(settings, tmp_path / "out", world_size=2)


def test_checkpoints_of_another_config_are_refused(tmp_path: Path) -> None:
    work, _ = prepare_working_folder(config(tmp_path), tmp_path / "out")
    checkpoint(work, 10)
    with pytest.raises(TrainError, match=r"training\.learning_rate: 0\.001 in the checkpoint"):
        prepare_working_folder(config(tmp_path, learning_rate=5e-4), tmp_path / "out")


def test_a_working_folder_without_checkpoints_never_blocks_a_run(tmp_path: Path) -> None:
    work, _ = prepare_working_folder(config(tmp_path), tmp_path / "out")  # then it failed
    changed = config(tmp_path, learning_rate=5e-4)
    assert prepare_working_folder(changed, tmp_path / "out") == (work, None)
    assert json.loads((work / "resume_key.json").read_text()) == resume_key(changed, 1)


def test_an_existing_output_needs_overwrite(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(TrainError, match=r"out: output folder exists; set output\.overwrite"):
        prepare_working_folder(config(tmp_path), tmp_path / "out")
    prepare_working_folder(config(tmp_path, overwrite=True), tmp_path / "out")


def test_a_session_failing_before_its_first_checkpoint_leaves_nothing(tmp_path: Path) -> None:
    settings = config(tmp_path)
    work = working_folder(tmp_path / "out")
    with pytest.raises(ValueError, match="bad data"), training_session(settings) as session:
        assert session.work == work and work.is_dir() and session.resume_from is None
        with (
            pytest.raises(OutputError, match="is writing this output now"),
            OutputLock(tmp_path / "out"),
        ):
            pass  # the output is locked while the session lasts
        raise ValueError("bad data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "text.txt"]  # lock gone too


def test_a_session_failing_after_a_checkpoint_keeps_it_to_resume(tmp_path: Path) -> None:
    settings = config(tmp_path)
    with pytest.raises(KeyboardInterrupt), training_session(settings) as session:
        saved = checkpoint(session.work, 10)
        raise KeyboardInterrupt
    with training_session(settings) as session:
        assert session.resume_from == str(saved)


def test_inputs_are_the_local_model_and_data_files(tmp_path: Path) -> None:
    settings = config(tmp_path)
    assert training_inputs(settings) == [tmp_path / "model", tmp_path / "text.txt"]
    settings.model.path = "owner/model-on-the-hub"
    assert training_inputs(settings) == [tmp_path / "text.txt"]


def test_a_session_never_replaces_an_input(tmp_path: Path) -> None:
    settings = config(tmp_path, overwrite=True)
    settings.output.dir = str(tmp_path / "model")

    def start() -> None:
        with training_session(settings):
            pass  # pragma: no cover - refused before

    with pytest.raises(OutputError, match=r"refusing output\.overwrite: the output is the input"):
        start()
    settings.output.dir = str(tmp_path)
    with pytest.raises(OutputError, match="the output contains the input"):
        start()
    assert (tmp_path / "model").is_dir() and (tmp_path / "text.txt").is_file()
