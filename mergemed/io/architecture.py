"""What config keys and tensor names mean, read from ``_data/architectures.json``.

The table holds, once for every module that needs them:

* ``layer_count_keys``: the config keys that give the number of decoder layers;
* ``config_aliases``: config keys that mean the same thing in different families (GPT-2's
  ``n_embd`` is Llama's ``hidden_size``); the layer count's aliases are ``layer_count_keys``;
* ``families``: per model family (``model_types``, ``*`` for any), the regular expressions
  that find the decoder-layer stacks in tensor names, with groups ``prefix``, ``index`` and
  ``suffix``. Only the ``default`` family exists for now: ``<prefix>.layers.<i>.<rest>``.
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

LAYER_PATTERN = re.compile(_DEFAULT_FAMILY["layer_stacks"][0])
"""Tensor names of the form ``model.layers.<i>.<rest>``: decoder blocks."""


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
    layers = {int(m["index"]) for n in tensor_names if (m := LAYER_PATTERN.match(n))}
    return max(layers) + 1 if layers else None


def set_layer_count(config: dict[str, Any], num_layers: int) -> None:
    """Write ``num_layers`` under every layer-count key the config already has (top level)."""
    for key in LAYER_COUNT_KEYS:
        if key in config:
            config[key] = num_layers
