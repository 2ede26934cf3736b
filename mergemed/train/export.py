"""The last step of a training run: write the trained model folder and put it in place.

The folder is built in a hidden partial folder beside the output (weights, tokenizer,
``config.yaml`` with every default spelled out, ``training.json`` and ``loss.png``), then
renamed into place by :func:`mergemed.atomic.replace_folder`, so the output is either the old
folder or the whole new one; the working folder goes last. With several workers, worker 0
alone does all this, after every worker has finished; the others wait for its outcome.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.atomic import partial_path, replace_folder
from mergemed.train.session import OVERWRITE_OPTION, TrainingSession
from mergemed.train.training_report import write_report


@dataclass
class TrainResult:
    """What a finished training run produced."""

    output: Path
    seconds: float
    steps: int
    report: dict[str, Any]


def partial_folder(output: Path) -> Path:
    """Where the trained model is written before it is renamed to ``output``."""
    return partial_path(output)


def _readable_by_all(folder: Path) -> None:
    """Give every file the mode a merge's files get (0666, 0777 for folders, less the umask):
    safetensors writes weights through a private temporary file (0600), which other users
    of a shared model folder, or a container's other uid, could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_trained_model(
    session: TrainingSession,
    save_weights: Callable[[Path], Any],
    tokenizer: Any,
    report: dict[str, Any],
) -> None:
    """Write the trained model, its config and report, rename it into place, and remove the
    working folder. Every worker calls this once training has ended on all of them; worker 0
    writes, the others wait for it.

    Args:
        session: the run (its config, output, working folder and workers).
        save_weights: writes the model into the folder it is given (called on worker 0 only):
            ``save_pretrained`` of the trained model, or of LoRA merged into full weights
            after writing the adapter to ``adapter/``.
        tokenizer: saved beside the weights.
        report: written as ``training.json`` (with ``loss.png`` from its loss curves).

    Raises:
        OutputError: the folder cannot be moved into place (the old output is kept).
        FollowerStopped: on the other workers, when worker 0 failed to write.
    """
    session.workers.decide(lambda: _write(session, save_weights, tokenizer, report))


def _write(
    session: TrainingSession,
    save_weights: Callable[[Path], Any],
    tokenizer: Any,
    report: dict[str, Any],
) -> None:
    output = session.output
    partial = partial_folder(output)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        save_weights(partial)
        (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; config.yaml says it all
        tokenizer.save_pretrained(str(partial))
        (partial / "config.yaml").write_text(session.config.to_yaml())
        write_report(partial, report)
        _readable_by_all(partial)
        replace_folder(
            partial, output, overwrite=session.config.output.overwrite, option=OVERWRITE_OPTION
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(session.work, ignore_errors=True)
