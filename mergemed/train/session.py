"""A training run's hold on its output: the lock, the hidden working folder and resuming.

While ``mergemed train`` runs, its output is locked (:class:`mergemed.outputs.OutputLock`) and
its checkpoints go to ``.<output>.mergemed-training/`` beside the output, with
``resume_key.json``: the settings a checkpoint must share to be resumed
(:meth:`TrainConfig.resume_key`). A run started again with the same config continues from the
last checkpoint; a different config is refused while a checkpoint exists. A working folder
that holds no checkpoint (a run that failed before its first) holds nothing worth keeping: it
never blocks a run, and a run that fails before its first checkpoint removes it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError
from mergemed.outputs import OutputLock, check_replaceable
from mergemed.train.config import TrainConfig
from mergemed.train.sources import HUB_PREFIX

RESUME_KEY_FILE = "resume_key.json"
"""In the working folder: the resume key of the config its checkpoints belong to."""

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
        work: the hidden working folder (checkpoints, resume key, LoRA adapter).
        resume_from: the checkpoint to continue from, or None to start afresh.
    """

    config: TrainConfig
    output: Path
    work: Path
    resume_from: str | None


def output_folder(config: TrainConfig) -> Path:
    """The config's ``output.dir``, ``~`` expanded, absolute."""
    return Path(config.output.dir).expanduser().absolute()


def working_folder(output: Path) -> Path:
    """The hidden working folder of ``output``: ``.<name>.mergemed-training`` beside it."""
    return output.parent / f".{output.name}.mergemed-training"


def last_checkpoint(work: Path) -> str | None:
    """The newest ``checkpoint-N`` folder under ``work/checkpoints``, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = work / "checkpoints"
    return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else f"{path}: {old!r} in the checkpoint, {new!r} now"


def prepare_working_folder(config: TrainConfig, output: Path) -> tuple[Path, str | None]:
    """The hidden folder holding checkpoints, and the checkpoint to resume from (if any).

    The folder is created, with the config's resume key, when it holds no checkpoint (a key
    left by a run that failed before its first checkpoint is replaced).

    Raises:
        TrainError: the output exists (without ``output.overwrite``), or the folder holds
            checkpoints of a different config (naming the first key that differs).
    """
    if output.exists() and not config.output.overwrite:
        raise TrainError(f"{output}: output folder exists; set {OVERWRITE_OPTION}: true")
    work = working_folder(output)
    key_file = work / RESUME_KEY_FILE
    key = config.resume_key()
    last = last_checkpoint(work)
    if last is not None and key_file.is_file():
        stored = json.loads(key_file.read_text())
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
def training_session(config: TrainConfig) -> Iterator[TrainingSession]:
    """Hold the config's output for the length of a ``with`` block: lock it, check that it may
    be replaced, and prepare the working folder.

    If the block fails before the first checkpoint was written, the working folder is
    removed; after that it is kept, so that the same command resumes.

    Raises:
        OutputError: another run holds the output, or replacing it would destroy an input of
            this run (its model folder or a data file).
        TrainError: as :func:`prepare_working_folder`.
    """
    output = output_folder(config)
    with OutputLock(output):
        if output.exists() and config.output.overwrite:
            check_replaceable(output, training_inputs(config), option=OVERWRITE_OPTION)
        work, resume_from = prepare_working_folder(config, output)
        try:
            yield TrainingSession(config, output, work, resume_from)
        except BaseException:
            discard_if_no_checkpoint(work)
            raise
