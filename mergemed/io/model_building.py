"""One transformers model build at a time in this process.

transformers builds a model inside context managers that patch process-wide state and put back
what they found on exit: the default dtype (``local_torch_dtype``), ``PreTrainedModel.tie_weights``
(``no_tie_weights``) and the ``torch.nn.init`` functions. Two threads building models at once
can each restore the other's patch, leaving ``tie_weights`` a no-op or the default dtype
bfloat16 for the rest of the process: every later load then has an untied, uninitialised
``lm_head``, silently. mergemed's own model builds (evaluation, in-memory merges, training) take
:func:`model_build_lock` so that concurrent evaluations in one process stay correct.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_BUILD_LOCK = threading.RLock()


@contextmanager
def model_build_lock() -> Iterator[None]:
    """Hold while constructing a transformers model (``from_pretrained``, ``from_config``)."""
    with _BUILD_LOCK:
        yield
