"""lm-eval hooks for ``ifeval_general``: load the shipped prompts, score with lm-eval's IFEval
checkers.

Data: ``<data_dir>/ifeval_general/ifeval_general.jsonl`` when the folder
``<data_dir>/ifeval_general/`` exists (``data_dir`` from the task metadata, else
``$MERGEMED_DATA_DIR``), else ``ifeval_general.jsonl`` beside this file; never relative to the
working directory. As for mergemed's other local data, a ``data_dir`` that is not a folder, or
an ``ifeval_general/`` folder without the file, is an error rather than a silent fallback.

Scoring is lm-eval's own ``lm_eval.tasks.ifeval.utils.process_results`` and
``agg_inst_level_acc``, re-exported for the task YAML. Importing them runs
``nltk.download("punkt_tab")`` when nltk has no Punkt model, which fails offline, so mergemed's
offline Punkt (``mergemed.evaluation.punkt.ensure_punkt``) is set up first when mergemed is
installed; ``PUNKT_MODEL`` records which Punkt model the checkers use (None: mergemed absent,
the official model is then expected). Scores made with a mergemed-trained Punkt are not
comparable with scores made with nltk's official one.

langdetect (used by the language and letter-case checkers) draws random numbers; it is seeded
here so a response is always judged the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PUNKT_MODEL: str | None = None
try:
    from mergemed.evaluation.punkt import ensure_punkt
except ImportError:  # utils.py stays usable without mergemed
    pass
else:
    PUNKT_MODEL = ensure_punkt()

from langdetect import DetectorFactory  # noqa: E402
from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results  # noqa: E402

DetectorFactory.seed = 0

__all__ = ["PUNKT_MODEL", "agg_inst_level_acc", "data_file", "load", "process_results"]

NAME = "ifeval_general"


def data_file(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the prompts are read from (see the module docstring).

    Raises:
        FileNotFoundError: the data folder is not a folder, or its ``ifeval_general/`` folder
            lacks ``ifeval_general.jsonl``.
    """
    origin = "data_dir" if data_dir else "$MERGEMED_DATA_DIR"
    root = data_dir or os.environ.get("MERGEMED_DATA_DIR")
    if root:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{origin} is not a folder: {root}")
        if (root / NAME).is_dir():
            local = root / NAME / f"{NAME}.jsonl"
            if not local.is_file():
                raise FileNotFoundError(f"{NAME}: {local} not found (from {origin})")
            return local
    return Path(__file__).resolve().parent / f"{NAME}.jsonl"


def load(data_dir: str | None = None, **kwargs):
    """``custom_dataset`` hook: lm-eval passes the task metadata and dataset_kwargs; only
    ``data_dir`` is read."""
    import datasets

    path = data_file(data_dir)
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
