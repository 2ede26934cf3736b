"""lm-eval hooks shared by the IFEval-style tasks (``ifeval_med``, ``ifeval_general``): load a
task's shipped prompts, score them with lm-eval's own IFEval checkers.

Each task's ``utils.py`` is one line over this module (``data_file, load = hooks(__file__)``),
so its YAML can name ``utils.load``, ``utils.process_results`` and ``utils.agg_inst_level_acc``.

Data: ``<data_dir>/<task>/<task>.jsonl`` when the folder ``<data_dir>/<task>/`` exists
(``data_dir`` from the task metadata, else ``$MERGEMED_DATA_DIR``), else ``<task>.jsonl`` beside
the task's ``utils.py``; never relative to the working directory. As for mergemed's other local
data, a ``data_dir`` that is not a folder, or a ``<task>/`` folder without the file, is an error
rather than a silent fallback.

Scoring is lm-eval's ``lm_eval.tasks.ifeval.utils.process_results`` and ``agg_inst_level_acc``,
re-exported. Importing them runs ``nltk.download("punkt_tab")`` when nltk has no Punkt model,
which fails offline, so mergemed's offline Punkt (``mergemed.evaluation.punkt.ensure_punkt``) is
set up first; ``PUNKT_MODEL`` records which Punkt model the checkers use (None: the official
model is expected). Scores made with a mergemed-trained Punkt are not comparable with scores made
with nltk's official one.

langdetect (used by the language and letter-case checkers) draws random numbers; it is seeded
here so a response is always judged the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

PUNKT_MODEL: str | None = None
try:
    from mergemed.evaluation.punkt import ensure_punkt
except ImportError:  # the hooks stay usable without mergemed's evaluation extra
    pass
else:
    PUNKT_MODEL = ensure_punkt()

from langdetect import DetectorFactory  # noqa: E402
from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results  # noqa: E402

DetectorFactory.seed = 0

__all__ = ["PUNKT_MODEL", "agg_inst_level_acc", "hooks", "process_results", "prompt_file"]


def prompt_file(task: str, folder: Path, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``task``'s prompts are read from (see the module docstring); ``folder`` holds the
    shipped file.

    Raises:
        FileNotFoundError: the data folder is not a folder, or its ``<task>/`` folder lacks
            ``<task>.jsonl``.
    """
    origin = "data_dir" if data_dir else "$MERGEMED_DATA_DIR"
    root = data_dir or os.environ.get("MERGEMED_DATA_DIR")
    if root:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{origin} is not a folder: {root}")
        if (root / task).is_dir():
            local = root / task / f"{task}.jsonl"
            if not local.is_file():
                raise FileNotFoundError(f"{task}: {local} not found (from {origin})")
            return local
    return folder / f"{task}.jsonl"


def hooks(utils_file: str) -> tuple[Callable[..., Path], Callable[..., object]]:
    """``(data_file, load)`` for the task whose ``utils.py`` is ``utils_file`` (the task is named
    after its folder)."""
    folder = Path(utils_file).resolve().parent
    task = folder.name

    def data_file(data_dir: str | os.PathLike[str] | None = None) -> Path:
        """Where the prompts are read from (see ``ifeval_hooks``)."""
        return prompt_file(task, folder, data_dir)

    def load(data_dir: str | None = None, **kwargs):
        """``custom_dataset`` hook: lm-eval passes the task metadata and dataset_kwargs; only
        ``data_dir`` is read."""
        import datasets

        with data_file(data_dir).open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

    return data_file, load
