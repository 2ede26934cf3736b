"""lm-eval hooks for ``ifeval_med``, the clinical IFEval set (see README.md).

The code is ``ifeval_hooks.py`` in the folder above, shared with ``ifeval_general``. The prompts
come from ``<data_dir>/ifeval_med/ifeval_med.jsonl`` when that folder exists, else from the
shipped ``ifeval_med.jsonl`` here; PubMedQA-derived, scored by lm-eval's own IFEval checkers.
"""

from mergemed.evaluations.forgetting import ifeval_hooks
from mergemed.evaluations.forgetting.ifeval_hooks import agg_inst_level_acc, process_results

PUNKT_MODEL = ifeval_hooks.PUNKT_MODEL
data_file, load = ifeval_hooks.hooks(__file__)
__all__ = ["PUNKT_MODEL", "agg_inst_level_acc", "data_file", "load", "process_results"]
