"""Refuse a merge whose output transformers would load with weights missing or ignored.

A tensor the plan does not produce is one that ``from_pretrained`` initialises at random with
a warning few read: the worst kind of wrong output, because it looks like a model. A tensor the
plan writes and the config does not describe (a stacked layer the config does not count) is
dropped on load just as quietly. Before any weight is read, the output config is instantiated on
the meta device (no memory, no initialisation) with the class its ``architectures`` names, and
its parameter names compared with the plan's output names, after the renaming transformers
applies to checkpoints on load (LLaVA's ``language_model.model.*`` is
``model.language_model.*`` in the model); any difference is a one-line error.

The check judges only what it can: configs transformers can build, and only when the reference
parent's own checkpoint passes it (a family whose stored names transformers converts in ways
other than renaming says nothing by its names). A parent that lacks tensors its own config
needs, and stores nothing the config does not describe, is incomplete: that is an error too.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any

from mergemed.engine.prepare import MergeJob
from mergemed.errors import MergeError

Renaming = tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]


@functools.lru_cache(maxsize=16)
def expected_names(config_json: str) -> tuple[frozenset[str], Renaming] | None:
    """Parameter and persistent buffer names of the model a config describes, and the renaming
    rules transformers applies to stored names when loading it; None when transformers cannot
    build the model from the config."""
    import warnings

    try:
        import transformers
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:  # pragma: no cover - transformers and accelerate come with mergemed
        return None
    config = json.loads(config_json)
    if "model_type" not in config:
        return None
    architecture = (config.get("architectures") or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            settings = AutoConfig.for_model(**config)
            with init_empty_weights(include_buffers=True):
                if model_class is not None and hasattr(model_class, "_from_config"):
                    model = model_class._from_config(settings)
                else:
                    model = AutoModelForCausalLM.from_config(settings)
    except Exception:  # an unknown model_type, remote code, a config transformers rejects
        return None
    return frozenset(model.state_dict()), load_renaming(model)


def load_renaming(model) -> Renaming:
    """The renaming rules transformers applies to ``model``'s stored names when loading."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping

        rules = get_model_conversion_mapping(model)
    except Exception:  # an older transformers, or a model it has no mapping for
        return ()
    return tuple(
        (tuple(rule.source_patterns), tuple(rule.target_patterns))
        for rule in rules
        if type(rule).__name__ == "WeightRenaming"
    )


def _renamed(name: str, renaming: Renaming) -> str:
    """``name`` as transformers calls it once loaded: each rule renames at most once, in order."""
    for sources, targets in renaming:
        for source, target in zip(sources, targets, strict=False):
            new = re.sub(source, target, name)
            if new != name:
                name = new
                break
    return name


def name_differences(
    expected: frozenset[str], names: Iterable[str], renaming: Renaming, tied: bool
) -> tuple[list[str], list[str]]:
    """``(missing, unexpected)``: the names a model expects and ``names`` (stored names,
    renamed as on load) lack, and those ``names`` hold beyond it; a tied ``lm_head`` is never
    missing."""
    present = {_renamed(n, renaming) for n in names}
    missing = sorted(n for n in expected - present if not (tied and n.endswith("lm_head.weight")))
    return missing, sorted(present - expected)


def check_output_complete(job: MergeJob, config: dict[str, Any]) -> None:
    """Raise when the output ``config`` expects tensors the plan does not write, or the plan
    writes tensors the config does not describe.

    Raises:
        MergeError: naming how many differ and the first, with what to look at.
    """
    built = expected_names(json.dumps(config, sort_keys=True, default=str))
    if built is None:
        return
    reference = job.checkpoints[job.reference_model]
    own = expected_names(json.dumps(reference.config, sort_keys=True, default=str))
    if own is None:
        return
    own_tied = bool(reference.tie_word_embeddings)
    parent_missing, parent_unexpected = name_differences(
        own[0], reference.tensors, own[1], own_tied
    )
    if parent_missing and not parent_unexpected:
        raise MergeError(
            f"{str(reference.folder)!r} lacks {len(parent_missing)} tensors its own config needs "
            f"(first: {parent_missing[0]!r}): transformers would load it with random values "
            "there, and a merge would inherit them; is the checkpoint complete?"
        )
    if parent_missing or parent_unexpected:
        return  # the parent's own names do not follow transformers': nothing to judge by
    expected, renaming = built
    tied = bool(config.get("tie_word_embeddings", job.plan.tie_word_embeddings))
    missing, unexpected = name_differences(
        expected, (t.name for t in job.plan.tasks), renaming, tied
    )
    if missing:
        raise MergeError(
            f"the output would lack {len(missing)} tensors its config needs "
            f"(first: {missing[0]!r}), so transformers would fill them with random values; "
            "mergemed cannot place them from this recipe and these models (check the "
            "layer ranges and the architecture)"
        )
    if unexpected:
        raise MergeError(
            f"the output would hold {len(unexpected)} tensors its config does not describe "
            f"(first: {unexpected[0]!r}), which transformers would drop on loading; check the "
            "layer ranges and which block list they apply to"
        )
