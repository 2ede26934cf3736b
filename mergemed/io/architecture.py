"""What config keys and tensor names mean, read from ``_data/architectures.json``.

The table holds, once for every module that needs them:

* ``layer_count_keys``: the config keys that give the number of decoder layers;
* ``config_aliases``: config keys that mean the same thing in different families (GPT-2's
  ``n_embd`` is Llama's ``hidden_size``); the layer count's aliases are ``layer_count_keys``;
* ``families``: per model family (its ``model_types``), the prefixes its decoder's block list
  is stored under (``decoder``, tried in order: a family may be saved under several naming
  schemes) and its other block lists (``other_stacks``: a vision tower's). The ``default``
  family (``*``) holds the regular expression of the common ``<prefix>.layers.<i>.<rest>``.

Block lists are also found without a table (:func:`layer_stacks`): every ``<prefix>.<i>.<rest>``
name belongs to the stack ``<prefix>.`` (GPT-2's ``transformer.h.``, GPT-NeoX's
``gpt_neox.layers.``, OPT's ``model.decoder.layers.``, a vision tower's ``...encoder.layers.``).
A model's decoder stack (:func:`decoder_prefix`) is the one whose length the config states; the
others are indexed on their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

_TABLE: dict[str, Any] = json.loads(
    resources.files("mergemed.io").joinpath("_data/architectures.json").read_text()
)

LAYER_COUNT_KEYS: tuple[str, ...] = tuple(_TABLE["layer_count_keys"])
"""Config keys giving the number of decoder layers, in the order they are looked up."""

CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    key: tuple(aliases) for key, aliases in _TABLE["config_aliases"].items()
}
"""Canonical config key -> the keys that mean the same (the canonical one first)."""
CONFIG_ALIASES["num_hidden_layers"] = LAYER_COUNT_KEYS

_DEFAULT_FAMILY = next(f for f in _TABLE["families"] if f["name"] == "default")

FAMILIES: dict[str, dict[str, Any]] = {
    model_type: family
    for family in _TABLE["families"]
    for model_type in family["model_types"]
    if model_type != "*"
}
"""``model_type`` -> its family's entry of the table."""

LAYER_PATTERN = re.compile(_DEFAULT_FAMILY["layer_stacks"][0])
"""Tensor names of the form ``model.layers.<i>.<rest>``: decoder blocks."""

STACK_PATTERN = re.compile(
    r"^(?P<prefix>(?:[^.]+\.)*?[A-Za-z_][^.]*\.)(?P<index>\d+)(?P<suffix>\..+)$"
)
"""Any ``<prefix>.<i>.<rest>`` name: block ``i`` of the stack ``<prefix>.`` (the first number
in the name, so experts inside a block stay in the block)."""


def layer_stacks(tensor_names: Iterable[str]) -> dict[str, int]:
    """Every block list in the names: prefix -> number of blocks (highest index + 1)."""
    stacks: dict[str, int] = {}
    for name in tensor_names:
        if match := STACK_PATTERN.match(name):
            prefix, index = match["prefix"], int(match["index"])
            stacks[prefix] = max(stacks.get(prefix, 0), index + 1)
    return stacks


def decoder_prefix(config: dict[str, Any], tensor_names: Iterable[str]) -> str | None:
    """The prefix of the decoder's block list (``model.layers.``, ``transformer.h.``...).

    The family table's prefixes for the config's ``model_type`` come first (the first one the
    names use). A family without a table, or stored under names its table does not list, falls
    back to the names: the stack whose length the config states, preferring a language model's
    over others of that length, else the stack with the most tensors. None when the names hold
    no block list.
    """
    names = list(tensor_names)
    stacks = layer_stacks(names)
    if not stacks:
        return None
    family = FAMILIES.get(str(config.get("model_type")))
    for prefix in (family or {}).get("decoder", []):
        if prefix in stacks:
            return prefix
    stated = config_num_layers(config)
    candidates = [p for p, count in stacks.items() if count == stated] or list(stacks)
    sizes = {p: sum(1 for n in names if n.startswith(p)) for p in candidates}
    return max(candidates, key=lambda p: ("language_model" in p, "layers" in p, sizes[p]))


def config_num_layers(config: dict[str, Any]) -> int | None:
    """The number of decoder layers a config states (it or its ``text_config``), if any.

    Args:
        config: a model's ``config.json``.

    Returns:
        The first integer found under :data:`LAYER_COUNT_KEYS`, else None.
    """
    for key in LAYER_COUNT_KEYS:
        text_config = config.get("text_config")
        nested = text_config if isinstance(text_config, dict) else {}
        value = config.get(key) or nested.get(key)
        if isinstance(value, int):
            return value
    return None


def count_layers(config: dict[str, Any], tensor_names: Iterable[str]) -> int | None:
    """The number of decoder layers: from the config, else from the tensor names.

    Args:
        config: a model's ``config.json``.
        tensor_names: its tensors' names.

    Returns:
        The count, or None when neither the config nor the names tell.
    """
    stated = config_num_layers(config)
    if stated is not None:
        return stated
    names = list(tensor_names)
    prefix = decoder_prefix(config, names)
    return layer_stacks(names)[prefix] if prefix is not None else None


def layer_count_holder(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that states the decoder's layer count: the config itself, or its
    ``text_config`` (LLaVA-style models, whose ``vision_config`` counts other layers)."""
    if any(isinstance(config.get(key), int) for key in LAYER_COUNT_KEYS):
        return config
    text_config = config.get("text_config")
    return text_config if isinstance(text_config, dict) else config


def set_layer_count(config: dict[str, Any], num_layers: int) -> None:
    """Write ``num_layers`` under every layer-count key the decoder's part of the config
    has (top level, else ``text_config``); ``config`` must own that part (copy it first)."""
    holder = layer_count_holder(config)
    for key in LAYER_COUNT_KEYS:
        if key in holder:
            holder[key] = num_layers
