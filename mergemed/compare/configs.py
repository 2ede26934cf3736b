"""The config keys that matter for merging: which differ between the models, and what that means."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mergemed.errors import InspectError
from mergemed.io.architecture import CONFIG_ALIASES
from mergemed.io.checkpoint import Checkpoint

_SHAPE_EFFECT = "tensor shapes differ: no plain merge"
_CONTEXT_EFFECT = (
    "context handling differs: the merged config copies the recipe's base model (or its first "
    "model); check long prompts after merging"
)
CONFIG_EFFECTS: dict[str, tuple[str, bool]] = {
    "architectures": ("different model classes", True),
    "model_type": ("different model families", True),
    "hidden_size": (_SHAPE_EFFECT, True),
    "num_hidden_layers": ("different depth: merge matching layer ranges with slices", True),
    "intermediate_size": (_SHAPE_EFFECT, True),
    "num_attention_heads": ("attention heads differ: no plain merge", True),
    "num_key_value_heads": (_SHAPE_EFFECT, True),
    "head_dim": (_SHAPE_EFFECT, True),
    "vocab_size": (
        "vocabularies differ: embed_tokens and lm_head rows do not line up; "
        "align the tokenizers first",
        True,
    ),
    "max_position_embeddings": (_CONTEXT_EFFECT, False),
    "rope_theta": (_CONTEXT_EFFECT, False),
    "rope_scaling": (_CONTEXT_EFFECT, False),
    "rope_parameters": (_CONTEXT_EFFECT, False),
    "sliding_window": (_CONTEXT_EFFECT, False),
    "tie_word_embeddings": (
        "one model ties lm_head to embed_tokens: the merge reads its embeddings as its "
        "lm_head and writes a separate lm_head",
        False,
    ),
    "dtype": (
        "storage dtypes differ: the merge writes the recipe's base model's dtype (or its first "
        "model's) unless the recipe sets out_dtype",
        False,
    ),
}
"""Config key -> (what a difference means for a merge, whether it rules out a plain merge),
in the order the differences are reported."""


@dataclass
class ConfigDifference:
    """A config key that matters for merging and is not the same in every model."""

    key: str
    a: Any
    b: Any
    base: Any
    effect: str
    blocks_merge: bool


def config_value(config: dict[str, Any], key: str) -> Any:
    """A config's value for ``key`` (or one of its aliases; ``text_config`` is searched too)."""
    for alias in CONFIG_ALIASES.get(key, (key,)):
        for scope in (config, config.get("text_config") or {}):
            if alias in scope:
                return scope[alias]
    return None


def compare_configs(
    config_a: dict[str, Any], config_b: dict[str, Any], config_base: dict[str, Any] | None = None
) -> list[ConfigDifference]:
    """The merge-relevant config keys whose values are not the same in every model."""
    differences = []
    for key, (effect, blocks) in CONFIG_EFFECTS.items():
        a, b = config_value(config_a, key), config_value(config_b, key)
        base = None if config_base is None else config_value(config_base, key)
        values = [a, b] if config_base is None else [a, b, base]
        if any(json.dumps(v, sort_keys=True) != json.dumps(a, sort_keys=True) for v in values):
            differences.append(ConfigDifference(key, a, b, base, effect, blocks))
    return differences


def _architectures(first: dict[str, Any], second: dict[str, Any]) -> tuple[Any, Any]:
    """The two configs' model classes (``architectures[0]``) or, when either lacks one, their
    ``model_type``s; None where a config has neither."""
    classes = [config.get("architectures") for config in (first, second)]
    if all(isinstance(value, list) and value for value in classes):
        return classes[0][0], classes[1][0]
    return first.get("model_type"), second.get("model_type")


def check_comparable(first: Checkpoint, second: Checkpoint, first_role: str, role: str) -> None:
    """Refuse models of different architectures or widths, naming both.

    Args:
        first: the model compared against (A).
        second: the other model (B or the base).
        first_role: how messages name ``first`` (``A``).
        role: how messages name ``second`` (``B``, ``the base``).

    Raises:
        InspectError: the architectures (or model types) or the hidden sizes differ.
    """
    first_architecture, other_architecture = _architectures(first.config, second.config)
    if first_architecture and other_architecture and first_architecture != other_architecture:
        raise InspectError(
            f"different architectures: {first_role} {first.reference!r} is {first_architecture}, "
            f"{role} {second.reference!r} is {other_architecture}; inspect compares models of "
            "one architecture tensor by tensor"
        )
    first_width = config_value(first.config, "hidden_size")
    other_width = config_value(second.config, "hidden_size")
    if first_width is not None and other_width is not None and first_width != other_width:
        raise InspectError(
            f"hidden sizes differ: {first_role} {first.reference!r} has hidden_size "
            f"{first_width}, {role} {second.reference!r} has {other_width}; this is not a "
            "vocabulary problem: every tensor has a different width, so no merge (and no "
            "vocabulary alignment) can combine them"
        )
