"""The streaming merge engine: prepare -> read -> method -> write, one tensor slice at a time.

* :mod:`~mergemed.engine.prepare`: :func:`prepare_merge` sets a merge up once
  (:class:`MergeJob`); :meth:`MergeJob.replan` reuses it for other recipes over the same models.
* :mod:`~mergemed.engine.pipeline`: the reader/compute/writer threads over a
  :class:`~mergemed.io.writer.Sink`, on the generic :func:`run_stages`.
* :mod:`~mergemed.engine.output`: config, tokenizer and chat template of the merged model.
* :mod:`~mergemed.engine.provenance`: ``merge.json`` and the resolved ``recipe.yaml``.
* :mod:`~mergemed.engine.resume`: the partial folder, its journal and fingerprint.
* :mod:`~mergemed.engine.run`: :func:`merge` and :func:`merge_to_memory`.
"""

from mergemed.engine.output import BUILTIN_TEMPLATES, read_chat_template
from mergemed.engine.pipeline import (
    DEFAULT_CHUNK_ELEMENTS,
    MergeStats,
    PipelineSettings,
    ProgressCallback,
    StartCallback,
    tensor_seed,
)
from mergemed.engine.prepare import MergeJob, MergeOptions, prepare_merge
from mergemed.engine.resume import JOURNAL
from mergemed.engine.run import (
    InMemoryMerge,
    MergeResult,
    merge,
    merge_job_to_memory,
    merge_to_memory,
)
from mergemed.engine.stages import Stage, compute_threads, run_stages
from mergemed.engine.trained_base import find_trained_base

__all__ = [
    "BUILTIN_TEMPLATES",
    "DEFAULT_CHUNK_ELEMENTS",
    "JOURNAL",
    "InMemoryMerge",
    "MergeJob",
    "MergeOptions",
    "MergeResult",
    "MergeStats",
    "PipelineSettings",
    "ProgressCallback",
    "Stage",
    "StartCallback",
    "compute_threads",
    "find_trained_base",
    "merge",
    "merge_job_to_memory",
    "merge_to_memory",
    "prepare_merge",
    "read_chat_template",
    "run_stages",
    "tensor_seed",
]
