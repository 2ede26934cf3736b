"""A training run's hold on its output: the lock, the hidden working folder and resuming.

While ``mergemed train`` runs, its output is locked (:class:`mergemed.outputs.OutputLock`) and
its checkpoints go to ``.<output>.mergemed-training/`` beside the output, with
``resume_key.json``: the settings a checkpoint must share to be resumed
(:meth:`TrainConfig.resume_key`). A run started again with the same config continues from the
last checkpoint; a different config is refused while a checkpoint exists. A working folder
that holds no checkpoint (a run that failed before its first) holds nothing worth keeping: it
never blocks a run, and a run that fails before its first checkpoint removes it.

With several workers (:mod:`mergemed.train.workers`) only worker 0 locks, prepares and removes
anything; the others learn from it where the working folder is and what to resume.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError
from mergemed.outputs import OutputLock, check_replaceable
from mergemed.train.config import TrainConfig
from mergemed.train.sources import HUB_PREFIX
from mergemed.train.workers import Workers

RESUME_KEY_FILE = "resume_key.json"
"""In the working folder: the resume key of the config its checkpoints belong to."""

CHECKPOINT_DONE_FILE = "trainer_state.json"
"""The file the Trainer writes last into a checkpoint (after the weights, the optimizer and
every worker's share): a checkpoint without it was cut short and is not resumed from."""

OVERWRITE_OPTION = "output.overwrite"
"""The config key that allows replacing an existing output, as messages name it."""


class TrainError(MergemedError):
    """Training cannot start or continue (output exists, checkpoint of another config...)."""


@dataclass(frozen=True)
class TrainingSession:
    """A run's output, its working folder and the checkpoint it resumes from.

    Attributes:
        config: the run's config.
        output: the model folder to write (absolute).
        work: the hidden working folder (checkpoints, resume key).
        resume_from: the checkpoint to continue from, or None to start afresh.
        workers: the processes training together (worker 0 writes the output).
    """

    config: TrainConfig
    output: Path
    work: Path
    resume_from: str | None
    workers: Workers = field(default_factory=Workers)


def output_folder(config: TrainConfig) -> Path:
    """The config's ``output.dir``, ``~`` expanded, absolute."""
    return Path(config.output.dir).expanduser().absolute()


def working_folder(output: Path) -> Path:
    """The hidden working folder of ``output``: ``.<name>.mergemed-training`` beside it."""
    return output.parent / f".{output.name}.mergemed-training"


def last_checkpoint(work: Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder under ``work/checkpoints``, or None (one
    that a kill cut short, without :data:`CHECKPOINT_DONE_FILE`, does not count)."""
    checkpoints = work / "checkpoints"
    if not checkpoints.is_dir():
        return None
    complete = [
        (int(folder.name.removeprefix("checkpoint-")), folder)
        for folder in checkpoints.glob("checkpoint-*")
        if folder.name.removeprefix("checkpoint-").isdigit()
        and (folder / CHECKPOINT_DONE_FILE).is_file()
    ]
    return str(max(complete)[1]) if complete else None


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else f"{path}: {old!r} in the checkpoint, {new!r} now"


def checkpoint_step(checkpoint: str | None) -> int:
    """The step a ``checkpoint-N`` folder was saved at (0 for None: a fresh start)."""
    return int(Path(checkpoint).name.removeprefix("checkpoint-")) if checkpoint else 0


def resume_key(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """What a checkpoint must share with a run to be resumed by it: the config's resume key
    and the number of workers (which sets the global batch and the data drawn)."""
    return {**config.resume_key(), "world_size": world_size}


def prepare_working_folder(
    config: TrainConfig, output: Path, world_size: int = 1
) -> tuple[Path, str | None]:
    """The hidden folder holding checkpoints, and the checkpoint to resume from (if any).

    The folder is created, with the resume key (:func:`resume_key`), when it holds no
    checkpoint (a key left by a run that failed before its first checkpoint is replaced).

    Raises:
        TrainError: the output exists (without ``output.overwrite``), or the folder holds
            checkpoints of a different config (naming the first key that differs).
    """
    if output.exists() and not config.output.overwrite:
        raise TrainError(f"{output}: output folder exists; set {OVERWRITE_OPTION}: true")
    work = working_folder(output)
    key_file = work / RESUME_KEY_FILE
    key = resume_key(config, world_size)
    last = last_checkpoint(work)
    if last is not None and key_file.is_file():
        stored = {"world_size": 1, **json.loads(key_file.read_text())}  # older keys: 1 worker
        difference = _first_difference(stored, key)
        if difference:
            raise TrainError(
                f"{work}: holds checkpoints of another config ({difference}); "
                "delete that folder to start over"
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        key_file.write_text(json.dumps(key, indent=2))
    return work, last


def training_inputs(config: TrainConfig) -> list[Path]:
    """The local files and folders a run reads: the model folder (when the model is a local
    path rather than a Hub id) and the data files (Hub datasets left out)."""
    paths = [config.model.path]
    if config.data.path:
        paths.append(config.data.path)
    paths += [s.path for s in config.data.sources or [] if not s.path.startswith(HUB_PREFIX)]
    return [Path(p).expanduser() for p in paths if os.path.exists(Path(p).expanduser())]


def discard_if_no_checkpoint(work: Path) -> None:
    """Remove ``work`` when it holds no checkpoint: nothing in it could be resumed."""
    if work.is_dir() and last_checkpoint(work) is None:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def training_session(
    config: TrainConfig, workers: Workers = Workers()
) -> Iterator[TrainingSession]:
    """Hold the config's output for the length of a ``with`` block: lock it, check that it may
    be replaced, and prepare the working folder (worker 0 does; the others learn the outcome).

    If the block fails before the first checkpoint was written, the working folder is
    removed; after that it is kept, so that the same command resumes.

    Raises:
        OutputError: another run holds the output, or replacing it would destroy an input of
            this run (its model folder or a data file).
        TrainError: as :func:`prepare_working_folder`.
        FollowerStopped: on workers other than 0, when worker 0 could not prepare.
    """
    output = output_folder(config)
    with ExitStack() as held:

        def prepare() -> tuple[Path, str | None]:
            held.enter_context(OutputLock(output))
            if output.exists() and config.output.overwrite:
                check_replaceable(output, training_inputs(config), option=OVERWRITE_OPTION)
            return prepare_working_folder(config, output, workers.world_size)

        work, resume_from = workers.decide(prepare)
        try:
            yield TrainingSession(config, output, work, resume_from, workers)
        except BaseException:
            if workers.is_main:
                discard_if_no_checkpoint(work)
            raise
