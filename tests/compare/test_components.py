"""Tensor names -> (layer, report column) (:mod:`mergemed.compare.components`)."""

from __future__ import annotations

from mergemed.compare.components import tensor_component


def test_component_names() -> None:
    assert tensor_component("model.layers.12.self_attn.q_proj.bias") == (12, "q")
    assert tensor_component("model.layers.0.post_attention_layernorm.weight") == (0, "post_norm")
    assert tensor_component("model.layers.3.block_sparse_moe.experts.7.w1.weight") == (
        3,
        "block_sparse_moe.experts.*.w1",
    )
    assert tensor_component("model.embed_tokens.weight") == (None, "embed_tokens")
    assert tensor_component("model.norm.weight") == (None, "norm")
    assert tensor_component("lm_head.weight") == (None, "lm_head")
