"""Tests of the random-weight model maker that the other tests and the benchmarks rely on."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mergemed.testing import ARCHITECTURES, build_config, build_tokenizer, make_random_model


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder, read with the reference safetensors reader."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as reader:
            for name in reader.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[name] = reader.get_tensor(name)
    return tensors


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# --------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_is_deterministic_and_has_special_tokens(tmp_path: Path) -> None:
    first = build_tokenizer(tmp_path / "a")
    second = build_tokenizer(tmp_path / "b")
    assert file_bytes(first) == file_bytes(second)

    tokenizer = AutoTokenizer.from_pretrained(first)
    assert len(tokenizer) == 512
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = "ABSURDITY, n.  A statement or belief manifestly inconsistent with one's own opinion."
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) < 0.7 * len(text), "BPE merges should compress English text"
    assert tokenizer.decode(ids, skip_special_tokens=True) == text

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Define politeness."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == "<s><|im_start|>user\nDefine politeness.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in (None, tokenizer.unk_token_id)


def test_tokenizer_rejects_a_vocabulary_without_room_for_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(tmp_path, vocab_size=100)


# --------------------------------------------------------------------------------------------
# Tiny models


@pytest.mark.parametrize("preset", ["llama", "llama-tied", "qwen2", "mistral"])
def test_tiny_models_load_and_generate(
    preset: str, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> None:
    architecture = ARCHITECTURES[preset]
    for folder in tiny_model_pair(preset):
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        config = model.config
        assert config.model_type == architecture.model_type
        assert config.vocab_size == len(tokenizer) == 512
        assert config.num_key_value_heads < config.num_attention_heads
        assert config.tie_word_embeddings == architecture.tie_word_embeddings
        assert model.dtype == torch.float32

        inputs = tokenizer("CYNIC, n.  A blackguard whose faulty vision", return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert generated.shape == (1, inputs.input_ids.shape[1] + 4)
        assert isinstance(tokenizer.decode(generated[0]), str)

        saved = load_tensors(folder)
        assert ("lm_head.weight" in saved) != architecture.tie_word_embeddings
        has_biases = any(name.endswith("q_proj.bias") for name in saved)
        assert has_biases == (preset == "qwen2")
        for name, tensor in saved.items():
            assert torch.isfinite(tensor).all(), name
            if name.endswith(".bias"):
                assert tensor.abs().max() > 0, f"{name} should be random, not zeros"


@pytest.mark.parametrize("preset", ["llama", "qwen2", "mistral"])
def test_perturbed_model_differs_by_the_requested_relative_amount(
    preset: str, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> None:
    base_dir, other_dir = tiny_model_pair(preset)
    base, other = load_tensors(base_dir), load_tensors(other_dir)
    assert base.keys() == other.keys()
    squared_difference = squared_base = 0.0
    for name, tensor in base.items():
        assert other[name].shape == tensor.shape and other[name].dtype == tensor.dtype
        difference = (other[name] - tensor).norm().item()
        relative = difference / tensor.norm().item()
        tolerance = 0.06 if tensor.numel() >= 1024 else 0.25
        assert relative == pytest.approx(0.5, abs=tolerance), name
        squared_difference += difference**2
        squared_base += tensor.norm().item() ** 2
        if tensor.numel() >= 1024:
            cosine = torch.nn.functional.cosine_similarity(
                tensor.flatten(), other[name].flatten(), dim=0
            )
            assert cosine == pytest.approx(1 / math.sqrt(1.25), abs=0.05), name
    assert math.sqrt(squared_difference / squared_base) == pytest.approx(0.5, abs=0.02)
    # Everything but the weights is the base's.
    for path in base_dir.iterdir():
        if path.suffix != ".safetensors":
            assert (other_dir / path.name).read_bytes() == path.read_bytes(), path.name


def test_trio_members_are_distinct(
    tiny_model_trio: Callable[[str], tuple[Path, Path, Path]],
    tiny_model_pair: Callable[[str], tuple[Path, Path]],
) -> None:
    base_dir, first_dir, second_dir = tiny_model_trio("llama")
    assert (base_dir, first_dir) == tiny_model_pair("llama")
    first, second = load_tensors(first_dir), load_tensors(second_dir)
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(first[name], second[name])


def test_same_seed_gives_identical_files_and_another_seed_does_not(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    first = make_random_model(tmp_path / "a", "qwen2", seed=3, tokenizer_dir=tiny_tokenizer_dir)
    again = make_random_model(tmp_path / "b", "qwen2", seed=3, tokenizer_dir=tiny_tokenizer_dir)
    other = make_random_model(tmp_path / "c", "qwen2", seed=4, tokenizer_dir=tiny_tokenizer_dir)
    assert file_bytes(first) == file_bytes(again)
    assert file_bytes(first)["model.safetensors"] != file_bytes(other)["model.safetensors"]

    noisy = make_random_model(tmp_path / "d", base_dir=first, seed=5, perturbation=0.1)
    noisy_again = make_random_model(tmp_path / "e", base_dir=first, seed=5, perturbation=0.1)
    assert file_bytes(noisy) == file_bytes(noisy_again)


def test_sharded_tiny_model_keeps_its_layout_when_perturbed(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    base = make_random_model(
        tmp_path / "base",
        "llama",
        max_shard_size="60KB",
        tokenizer_dir=tiny_tokenizer_dir,
        dtype="bfloat16",
    )
    index = json.loads((base / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) > 2
    assert AutoModelForCausalLM.from_pretrained(base).dtype == torch.bfloat16

    perturbed = make_random_model(tmp_path / "noisy", base_dir=base, perturbation=0.2, seed=1)
    assert sorted(p.name for p in perturbed.glob("*.safetensors")) == shard_files
    for file in shard_files:
        with safe_open(str(base / file), "pt") as a, safe_open(str(perturbed / file), "pt") as b:
            assert list(a.keys()) == list(b.keys())
            assert a.metadata() == b.metadata()
            for name in a.keys():  # noqa: SIM118 - safe_open is not a mapping
                assert b.get_tensor(name).dtype == torch.bfloat16
    AutoModelForCausalLM.from_pretrained(perturbed)


def test_conflicting_options_are_refused(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        make_random_model(tmp_path / "a", "gpt-5")
    with pytest.raises(ValueError, match="base_dir"):
        make_random_model(tmp_path / "b", "llama", perturbation=0.1)
    base = make_random_model(tmp_path / "c", "mistral", tokenizer_dir=tiny_tokenizer_dir)
    with pytest.raises(ValueError, match="base_dir"):
        make_random_model(tmp_path / "d", base_dir=base, perturbation=0.1, dtype="bfloat16")
    with pytest.raises(FileExistsError):
        make_random_model(base, "mistral")


# --------------------------------------------------------------------------------------------
# Full-size shapes, streamed


def expected_llama_tensors(config: object) -> dict[str, tuple[int, ...]]:
    """HF Llama tensor names and shapes, written out independently of the code under test."""
    hidden = config.hidden_size
    kv_width = config.num_key_value_heads * (hidden // config.num_attention_heads)
    mlp = config.intermediate_size
    shapes = {"model.embed_tokens.weight": (config.vocab_size, hidden)}
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        shapes |= {
            f"{prefix}.self_attn.q_proj.weight": (hidden, hidden),
            f"{prefix}.self_attn.k_proj.weight": (kv_width, hidden),
            f"{prefix}.self_attn.v_proj.weight": (kv_width, hidden),
            f"{prefix}.self_attn.o_proj.weight": (hidden, hidden),
            f"{prefix}.mlp.gate_proj.weight": (mlp, hidden),
            f"{prefix}.mlp.up_proj.weight": (mlp, hidden),
            f"{prefix}.mlp.down_proj.weight": (hidden, mlp),
            f"{prefix}.input_layernorm.weight": (hidden,),
            f"{prefix}.post_attention_layernorm.weight": (hidden,),
        }
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (config.vocab_size, hidden)}
    return shapes


@pytest.fixture(scope="module")
def one_layer_tinyllama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tinyllama-1layer")
    return make_random_model(folder, "tinyllama-1.1b", num_layers=1, max_shard_size="100MB")


def test_streamed_preset_writes_a_valid_sharded_checkpoint(one_layer_tinyllama: Path) -> None:
    folder = one_layer_tinyllama
    config = AutoConfig.from_pretrained(folder)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (2048, 1, 32000)
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.tie_word_embeddings is False

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    expected = expected_llama_tensors(config)
    assert set(weight_map) == set(expected)
    shard_files = sorted(set(weight_map.values()))
    assert shard_files == sorted(p.name for p in folder.glob("*.safetensors"))
    assert shard_files[0] == f"model-00001-of-{len(shard_files):05d}.safetensors"

    total_bytes = 0
    for file in shard_files:
        shard_bytes = 0
        with safe_open(str(folder / file), framework="pt") as reader:
            names = list(reader.keys())
            assert set(names) == {n for n, f in weight_map.items() if f == file}
            for name in names:
                tensor = reader.get_tensor(name)
                assert tensor.dtype == torch.bfloat16
                assert tuple(tensor.shape) == expected[name], name
                shard_bytes += tensor.numel() * 2
                if name.endswith("norm.weight"):
                    assert torch.all(tensor == 1), name
                elif name.endswith("q_proj.weight"):
                    assert tensor.float().mean().abs() < 1e-3
                    assert tensor.float().std().item() == pytest.approx(0.02, rel=0.01)
        # A shard only exceeds the limit when it holds one tensor bigger than the limit.
        assert shard_bytes <= 100_000_000 or len(names) == 1
        total_bytes += shard_bytes
    assert index["metadata"]["total_size"] == total_bytes


def test_streamed_preset_is_deterministic_and_perturbs_in_place(
    one_layer_tinyllama: Path, tmp_path: Path
) -> None:
    name = "model.layers.0.self_attn.k_proj.weight"
    tokenizer_dir = one_layer_tinyllama  # reuse: building one is not what is tested here
    again = make_random_model(
        tmp_path / "again",
        "tinyllama-1.1b",
        num_layers=1,
        max_shard_size="100MB",
        tokenizer_dir=tokenizer_dir,
    )
    index = json.loads((again / "model.safetensors.index.json").read_text())["weight_map"]
    with (
        safe_open(str(again / index[name]), "pt") as a,
        safe_open(str(one_layer_tinyllama / index[name]), "pt") as b,
    ):
        assert torch.equal(a.get_tensor(name), b.get_tensor(name))

    noisy = make_random_model(tmp_path / "noisy", base_dir=one_layer_tinyllama, perturbation=0.1)
    assert (noisy / "model.safetensors.index.json").read_bytes() == (
        one_layer_tinyllama / "model.safetensors.index.json"
    ).read_bytes()
    with safe_open(str(noisy / index[name]), "pt") as reader:
        perturbed = reader.get_tensor(name).float()
    with safe_open(str(one_layer_tinyllama / index[name]), "pt") as reader:
        original = reader.get_tensor(name).float()
    relative = ((perturbed - original).norm() / original.norm()).item()
    assert relative == pytest.approx(0.1, abs=0.01)


def test_llama_3_1_8b_preset_has_the_real_parameter_count() -> None:
    config = build_config("llama-3.1-8b")
    shapes = expected_llama_tensors(config)
    assert sum(math.prod(shape) for shape in shapes.values()) == 8_030_261_248
    assert config.rope_parameters["rope_type"] == "llama3"
    tinyllama = expected_llama_tensors(build_config("tinyllama-1.1b"))
    assert sum(math.prod(shape) for shape in tinyllama.values()) == 1_100_048_384
