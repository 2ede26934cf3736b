"""Which layer and which column of the report a tensor belongs to (``q``, ``gate``, ``norm``...)."""

from __future__ import annotations

import re

from mergemed.io.architecture import STACK_PATTERN

LAYER_COMPONENTS = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "input_layernorm": "in_norm",
    "post_attention_layernorm": "post_norm",
}
"""Short column names for the usual decoder-layer modules (weights and biases together).

``in_norm`` is ``input_layernorm`` (before attention), ``post_norm`` is
``post_attention_layernorm`` (before the MLP). Other modules keep their own path."""

COLUMN_ORDER = tuple(LAYER_COMPONENTS.values())
"""Display order of the layer columns; other modules follow in the order met."""

OUTSIDE_ORDER = ("embed_tokens", "norm", "lm_head")
"""Display order of the tensors outside the decoder layers; others follow."""

VOCABULARY_COMPONENTS = ("embed_tokens", "lm_head")
"""The components with one row per token (their row counts may differ between models)."""


def tensor_component(name: str) -> tuple[int | None, str]:
    """``(layer, component)`` of a tensor name: ``model.layers.2.mlp.up_proj.weight`` ->
    ``(2, "up")``; ``model.embed_tokens.weight`` -> ``(None, "embed_tokens")``."""
    from mergemed.schedule import component_of

    match = STACK_PATTERN.match(name)  # any block list: model.layers.N, transformer.h.N...
    if match:
        module = _module_path(match["suffix"][1:])
        short = LAYER_COMPONENTS.get(module.rsplit(".", 1)[-1])
        return int(match["index"]), short or re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", module)
    group = component_of(name)
    if group in OUTSIDE_ORDER:
        return None, group
    return None, _module_path(name)


def _module_path(name: str) -> str:
    for ending in (".weight", ".bias"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name
