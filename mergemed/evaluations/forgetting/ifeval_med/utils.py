"""lm-eval hooks for ``ifeval_med``: load the shipped prompts, score with lm-eval's IFEval checkers.

Data: ``<data_dir>/ifeval_med/ifeval_med.jsonl`` when that file exists (``data_dir`` from the
task metadata, else ``$MERGEMED_DATA_DIR``), else ``ifeval_med.jsonl`` beside this file; never
relative to the working directory.

Scoring is lm-eval's own ``lm_eval.tasks.ifeval.utils.process_results`` and
``agg_inst_level_acc``, re-exported here for the task YAML. Importing those runs
``nltk.download("punkt_tab")`` when nltk has no Punkt model, which fails offline, so mergemed's
offline Punkt (``mergemed.evaluation.punkt.ensure_punkt``) is set up first when mergemed is
installed; ``PUNKT_MODEL`` records which Punkt model the checkers use (None: mergemed absent, the
official model is then expected). Scores made with a mergemed-trained Punkt are not official
IFEval numbers.

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


def data_file(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the prompts are read from (see the module docstring)."""
    root = data_dir or os.environ.get("MERGEMED_DATA_DIR")
    if root:
        local = Path(root).expanduser() / "ifeval_med" / "ifeval_med.jsonl"
        if local.is_file():
            return local
    return Path(__file__).resolve().parent / "ifeval_med.jsonl"


def load(data_dir: str | None = None, **kwargs):
    """``custom_dataset`` hook: lm-eval passes the task metadata and dataset_kwargs; only
    ``data_dir`` is read."""
    import datasets

    path = data_file(data_dir)
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
