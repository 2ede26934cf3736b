"""Tests of the shipped architecture table and the layer-count helpers built on it."""

from __future__ import annotations

import json
from importlib import resources

from mergemed.io.architecture import (
    CONFIG_ALIASES,
    LAYER_COUNT_KEYS,
    LAYER_PATTERN,
    config_num_layers,
    count_layers,
    set_layer_count,
)


def test_the_table_ships_with_the_package() -> None:
    table = json.loads(
        resources.files("mergemed.io").joinpath("_data/architectures.json").read_text()
    )
    names = [f["name"] for f in table["families"]]
    assert names[-1] == "default" and {"llama-style", "gpt2-style", "llava-style"} <= set(names)
    for family in table["families"][:-1]:
        assert family["model_types"] and family["decoder"], family["name"]
        assert all(prefix.endswith(".") for prefix in family["decoder"]), family["name"]
    assert CONFIG_ALIASES["num_hidden_layers"] == LAYER_COUNT_KEYS
    assert CONFIG_ALIASES["hidden_size"] == ("hidden_size", "n_embd", "d_model")


def test_only_dot_layers_names_are_layers() -> None:
    match = LAYER_PATTERN.match("model.layers.12.self_attn.q_proj.weight")
    assert match is not None
    assert (match["prefix"], match["index"], match["suffix"]) == (
        "model.layers.",
        "12",
        ".self_attn.q_proj.weight",
    )
    assert LAYER_PATTERN.match("transformer.h.3.attn.c_attn.weight") is None
    assert LAYER_PATTERN.match("model.layers.3") is None


def test_layer_count_lookup_order_and_fallback() -> None:
    assert config_num_layers({"num_hidden_layers": 4, "n_layer": 9}) == 4
    assert config_num_layers({"text_config": {"n_layer": 6}}) == 6
    assert config_num_layers({"num_layers": 0, "text_config": {"num_layers": 2}}) == 2
    assert config_num_layers({"num_hidden_layers": "32"}) is None
    names = ["model.layers.0.mlp.weight", "model.layers.4.mlp.weight", "lm_head.weight"]
    assert count_layers({}, names) == 5
    assert count_layers({"n_layer": 2}, names) == 2
    assert count_layers({}, ["lm_head.weight"]) is None


def test_set_layer_count_rewrites_only_present_keys() -> None:
    config = {"num_hidden_layers": 32, "n_layer": 32, "text_config": {"num_hidden_layers": 32}}
    set_layer_count(config, 8)
    assert config == {
        "num_hidden_layers": 8,
        "n_layer": 8,
        "text_config": {"num_hidden_layers": 32},
    }


def test_block_lists_are_found_whatever_they_are_called() -> None:
    from mergemed.io.architecture import decoder_prefix, layer_stacks

    gpt2 = [f"transformer.h.{i}.attn.c_attn.weight" for i in range(12)] + [
        "transformer.wte.weight",
        "transformer.ln_f.weight",
    ]
    assert layer_stacks(gpt2) == {"transformer.h.": 12}
    assert decoder_prefix({"n_layer": 12}, gpt2) == "transformer.h."
    assert count_layers({}, gpt2) == 12
    neox = [f"gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight" for i in range(3)]
    opt = [f"model.decoder.layers.{i}.fc1.weight" for i in range(5)]
    assert decoder_prefix({}, neox) == "gpt_neox.layers."
    assert decoder_prefix({}, opt) == "model.decoder.layers."
    # Experts inside a block stay in the block: the first number is the block's.
    moe = [f"model.layers.{i}.mlp.experts.{e}.w1.weight" for i in range(2) for e in range(8)]
    assert layer_stacks(moe) == {"model.layers.": 2}


def test_the_decoder_is_the_stack_the_config_counts() -> None:
    """A LLaVA-style checkpoint has a vision tower's blocks beside the language model's; the
    config's (text) layer count picks the decoder, and a tie goes to the language model."""
    from mergemed.io.architecture import decoder_prefix

    vision = [f"vision_tower.vision_model.encoder.layers.{i}.mlp.fc1.weight" for i in range(4)]
    text = [f"language_model.model.layers.{i}.mlp.up_proj.weight" for i in range(2)]
    config = {"text_config": {"num_hidden_layers": 2}, "vision_config": {"num_hidden_layers": 4}}
    assert decoder_prefix(config, vision + text) == "language_model.model.layers."
    same_length = [
        n.replace("layers.2", "layers.1").replace("layers.3", "layers.0") for n in vision
    ]
    assert decoder_prefix(config, same_length + text) == "language_model.model.layers."


def test_the_family_table_names_the_decoder_before_any_guess() -> None:
    """The table knows each family's decoder prefix under every naming scheme it is stored
    in, so a vision tower as long as the language model (or longer, with a config that does
    not state the count) is never taken for the decoder; unknown families fall back."""
    from mergemed.io.architecture import decoder_prefix

    for language in ("language_model.model.layers.", "model.language_model.layers."):
        text = [f"{language}{i}.mlp.up_proj.weight" for i in range(2)]
        tower = (
            "vision_tower.vision_model.encoder.layers."
            if language[0] == "l"
            else ("model.vision_tower.vision_model.encoder.layers.")
        )
        vision = [f"{tower}{i}.mlp.fc1.weight" for i in range(6)]
        assert decoder_prefix({"model_type": "llava"}, vision + text) == language
    gpt2 = [f"transformer.h.{i}.mlp.c_fc.weight" for i in range(3)]
    extra = [f"transformer.adapters.{i}.weight" for i in range(3)]
    assert decoder_prefix({"model_type": "gpt2", "n_layer": 3}, extra + gpt2) == "transformer.h."
    mystery = [f"backbone.blocks.{i}.mixer.weight" for i in range(4)]
    assert decoder_prefix({"model_type": "mystery", "num_layers": 4}, mystery) == (
        "backbone.blocks."
    )
