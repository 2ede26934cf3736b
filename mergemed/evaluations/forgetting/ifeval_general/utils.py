"""lm-eval hooks for ``ifeval_general``: instruction following on everyday, non-medical requests.

Shared with ``ifeval_med`` through ``../ifeval_hooks.py``, which says where the prompts are read
from (``data_dir``, ``$MERGEMED_DATA_DIR`` or the ``ifeval_general.jsonl`` shipped beside this
file), which Punkt model the checkers use and why langdetect is seeded.
"""

from mergemed.evaluations.forgetting import ifeval_hooks
from mergemed.evaluations.forgetting.ifeval_hooks import agg_inst_level_acc, process_results

PUNKT_MODEL = ifeval_hooks.PUNKT_MODEL
data_file, load = ifeval_hooks.hooks(__file__)
__all__ = ["PUNKT_MODEL", "agg_inst_level_acc", "data_file", "load", "process_results"]
