"""What the planner knows of a model: its tensor names and shapes, its decoder block list and
layer count, and whether it ties its embeddings (read from a checkpoint's headers, or
made up for a recipe whose models are absent)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mergemed.errors import CheckpointError
from mergemed.io.architecture import STACK_PATTERN, decoder_prefix, layer_stacks


@dataclass(frozen=True)
class ModelLayout:
    """What planning needs to know of a model: tensor names and shapes, layers, tying."""

    reference: str
    shapes: dict[str, tuple[int, ...]]
    num_layers: int
    tie_word_embeddings: bool = False
    layer_prefix: str | None = None
    """The decoder's block list (``model.layers.``, ``transformer.h.``...); None: found from
    the names (:func:`mergemed.io.architecture.decoder_prefix`)."""

    def __post_init__(self) -> None:
        if self.layer_prefix is None:
            found = decoder_prefix({"num_hidden_layers": self.num_layers}, self.shapes)
            object.__setattr__(self, "layer_prefix", found)

    def decoder_match(self, name: str) -> re.Match | None:
        """The name's ``prefix``/``index``/``suffix`` when it is a decoder block's tensor."""
        match = STACK_PATTERN.match(name)
        return match if match is not None and match["prefix"] == self.layer_prefix else None

    def stack_position(self, name: str) -> float:
        """Where a tensor of another block list (a vision tower's) sits in its own stack, 0 to 1,
        as mergekit positions each module's layers; 0 for tensors outside any block list."""
        match = STACK_PATTERN.match(name)
        if match is None:
            return 0.0
        count = self.__dict__.setdefault("_stacks", layer_stacks(self.shapes)).get(
            match["prefix"], 1
        )
        return int(match["index"]) / (count - 1) if count > 1 else 0.0


def layout_from_checkpoint(checkpoint) -> ModelLayout:
    """A :class:`ModelLayout` from a :class:`mergemed.io.checkpoint.Checkpoint`."""
    num_layers = checkpoint.num_layers
    if num_layers is None:
        raise CheckpointError(f"{checkpoint.folder}: cannot tell its number of layers")
    return ModelLayout(
        reference=checkpoint.reference,
        shapes={name: info.shape for name, info in checkpoint.tensors.items()},
        num_layers=num_layers,
        tie_word_embeddings=checkpoint.tie_word_embeddings,
        layer_prefix=decoder_prefix(checkpoint.config, checkpoint.tensors),
    )


GENERIC_LAYER_TENSORS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def generic_layout(reference: str, num_layers: int) -> ModelLayout:
    """A Llama-style layout with placeholder shapes, to plan recipes whose models are absent."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (1, 1)}
    for layer in range(num_layers):
        for suffix in GENERIC_LAYER_TENSORS:
            shapes[f"model.layers.{layer}.{suffix}"] = (1,)
    shapes["model.norm.weight"] = (1,)
    shapes["lm_head.weight"] = (1, 1)
    return ModelLayout(reference=reference, shapes=shapes, num_layers=num_layers)
