"""Refuse a merge whose output transformers would load with weights missing.

A tensor the plan does not produce is one that ``from_pretrained`` initialises at random with
a warning few read: the worst kind of wrong output, because it looks like a model. Before any
weight is read, the output config is instantiated on the meta device (no memory, no
initialisation) and its parameter names compared with the plan's output names; a name the
model expects and the plan lacks is a one-line error.

The check judges only what it can: configs transformers knows as a causal LM, and only when
the reference parent's own checkpoint passes it (some families store weights under names that
transformers converts when loading; for those the names say nothing).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from mergemed.engine.prepare import MergeJob
from mergemed.errors import MergeError


@functools.lru_cache(maxsize=16)
def _expected_names(config_json: str) -> frozenset[str] | None:
    """Parameter and persistent buffer names of the causal LM a config describes, or None when
    transformers cannot build one from it."""
    import warnings

    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:  # pragma: no cover - transformers and accelerate come with mergemed
        return None
    config = json.loads(config_json)
    if "vision_config" in config or "model_type" not in config:
        return None  # multimodal checkpoints are renamed on load: names cannot be compared
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            settings = AutoConfig.for_model(**config)
            with init_empty_weights(include_buffers=True):
                model = AutoModelForCausalLM.from_config(settings)
    except Exception:  # an unknown model_type, remote code, a config transformers rejects
        return None
    return frozenset(model.state_dict())


def _missing(expected: frozenset[str], names: Iterable[str], tied: bool) -> list[str]:
    present = set(names)
    return sorted(n for n in expected - present if not (tied and n.endswith("lm_head.weight")))


def check_output_complete(job: MergeJob, config: dict[str, Any]) -> None:
    """Raise when the output ``config`` expects tensors the plan does not write.

    Raises:
        MergeError: naming how many are missing and the first, with what to look at.
    """
    expected = _expected_names(json.dumps(config, sort_keys=True, default=str))
    if expected is None:
        return
    reference = job.checkpoints[job.reference_model]
    own = _expected_names(json.dumps(reference.config, sort_keys=True, default=str))
    if own is None or _missing(own, reference.tensors, bool(reference.tie_word_embeddings)):
        return  # the parent's own names do not follow transformers': nothing to judge by
    tied = bool(config.get("tie_word_embeddings", job.plan.tie_word_embeddings))
    missing = _missing(expected, (t.name for t in job.plan.tasks), tied)
    if missing:
        raise MergeError(
            f"the output would lack {len(missing)} tensors its config needs "
            f"(first: {missing[0]!r}), so transformers would fill them with random values; "
            "mergemed cannot place them from this recipe and these models (check the "
            "layer ranges and the architecture)"
        )
