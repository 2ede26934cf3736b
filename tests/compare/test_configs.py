"""Config differences that matter for merging (:mod:`mergemed.compare.configs`)."""

from __future__ import annotations

import pytest
from compare_models import Models

from mergemed.compare import inspect_models
from mergemed.compare.configs import CONFIG_EFFECTS, compare_configs, config_value
from mergemed.errors import InspectError

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "vocab_size": 512,
    "rope_theta": 10000.0,
    "torch_dtype": "float32",
}


def test_config_values_are_found_under_their_aliases_and_in_text_config() -> None:
    gpt2 = {"n_layer": 12, "n_embd": 768, "n_positions": 1024, "dtype": "bfloat16"}
    assert config_value(gpt2, "num_hidden_layers") == 12
    assert config_value(gpt2, "hidden_size") == 768
    assert config_value(gpt2, "max_position_embeddings") == 1024
    assert config_value({"num_layers": 6}, "num_hidden_layers") == 6
    assert config_value({"torch_dtype": "float16"}, "dtype") == "float16"
    assert config_value({"dtype": "a", "torch_dtype": "b"}, "dtype") == "a"  # first alias wins
    multimodal = {"model_type": "llava", "text_config": {"num_hidden_layers": 32}}
    assert config_value(multimodal, "num_hidden_layers") == 32
    assert config_value(multimodal, "model_type") == "llava"
    assert config_value(LLAMA, "no_such_key") is None


def test_only_differing_keys_are_reported_with_their_effect() -> None:
    assert compare_configs(LLAMA, dict(LLAMA)) == []
    other = {**LLAMA, "num_hidden_layers": 3, "rope_theta": 500000.0}
    differences = compare_configs(LLAMA, other)
    assert [(d.key, d.a, d.b, d.base) for d in differences] == [
        ("num_hidden_layers", 4, 3, None),
        ("rope_theta", 10000.0, 500000.0, None),
    ]
    assert [d.blocks_merge for d in differences] == [True, False]
    assert differences[0].effect == CONFIG_EFFECTS["num_hidden_layers"][0]
    assert differences[1].effect.startswith("context handling differs")


def test_a_base_that_differs_is_a_difference_too() -> None:
    base = {**LLAMA, "vocab_size": 520}
    differences = compare_configs(LLAMA, dict(LLAMA), base)
    assert [(d.key, d.a, d.b, d.base, d.blocks_merge) for d in differences] == [
        ("vocab_size", 512, 512, 520, True)
    ]
    # The same values under other names are the same value.
    renamed = {**LLAMA, "dtype": LLAMA["torch_dtype"]}
    del renamed["torch_dtype"]
    assert compare_configs(LLAMA, renamed) == []


def test_other_architectures_or_widths_are_refused(models: Models) -> None:
    with pytest.raises(InspectError, match=r"different architectures: A .* LlamaForCausalLM, B"):
        inspect_models(models.parent, models.qwen_config)
    with pytest.raises(InspectError, match=r"the base .* not a vocabulary problem"):
        inspect_models(models.parent, models.first, base=models.wide_config)
