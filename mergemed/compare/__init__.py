"""``mergemed inspect``: how far apart two checkpoints are, layer by layer, before merging them.

Both models (and an optional common base) are streamed once, tensor slice by tensor slice, the
way the merge engine reads them: a reader thread fetches the next slices with ``preadv`` while
the calling thread folds the current ones into float64 sums, a cache-sized block at a time.
Per tensor it keeps

* ``<A, B>``, ``|A|^2``, ``|B|^2`` and ``|A - B|^2``: cosine similarity and relative change
  ``|A - B| / |B|``;
* with a base C, ``<A - C, B - C>``, ``|A - C|^2``, ``|B - C|^2`` and ``|C|^2``: the angle
  between the two task vectors and each one's size relative to the base.

Memory stays at a few slices whatever the model size. Sums add up over the tensors of a
component (``q_proj`` weight and bias, say), of a layer and of the whole model, so every
aggregate is exact, not an average of ratios. A model against itself gives cosine 1 and
relative change 0 exactly.

Modules: :mod:`~mergemed.compare.stats` (the sums and metrics),
:mod:`~mergemed.compare.components` (tensor -> layer and column),
:mod:`~mergemed.compare.configs` (config differences), :mod:`~mergemed.compare.reads` (what to
read, and reading it), :mod:`~mergemed.compare.report` (the report and the merge verdict),
:mod:`~mergemed.compare.plot` (the heatmap) and :mod:`~mergemed.compare.run` (the entry point).
Nothing here prints: the terminal tables are in :mod:`mergemed.cli.inspect_render`.

Public API::

    from mergemed.compare import InspectReport, inspect_models, plot_heatmap, summary_line
"""

from __future__ import annotations

from mergemed.compare.plot import plot_heatmap
from mergemed.compare.report import InspectReport, summary_line
from mergemed.compare.run import inspect_models

__all__ = ["InspectReport", "inspect_models", "plot_heatmap", "summary_line"]
