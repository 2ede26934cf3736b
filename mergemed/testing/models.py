"""Random-weight model checkpoints made locally, for tests, ``mergemed demo`` and benchmarks.

Nothing here downloads anything. Three kinds of checkpoint can be made:

* Tiny models (``"llama"``, ``"llama-tied"``, ``"llama-eval"``, ``"qwen2"``, ``"mistral"``): real
  ``transformers`` models with a few thousand parameters, random-initialised with ``from_config``
  and saved with ``save_pretrained``. They load with ``AutoModelForCausalLM.from_pretrained`` and
  generate (gibberish) text with the bundled tokenizer. ``"llama-eval"`` has head size 64 and
  4096 positions, for evaluation backends and long prompts.
* Full-size shapes (``"tinyllama-1.1b"``, ``"llama-3.1-8b"``): never materialised. Each tensor is
  drawn from N(0, 0.02) (norms are ones) and streamed straight into its safetensors shard, so
  memory stays at about one tensor whatever the model size.
* Perturbed copies: ``base_dir`` plus ``perturbation`` gives ``base + perturbation * noise``,
  tensor by tensor, keeping the base's shard layout, config and tokenizer; two such models are
  correlated the way a fine-tune and its parent are.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mergemed.io.model_building import model_build_lock
from mergemed.testing.architectures import build_config, dtype_from_name, find_architecture
from mergemed.testing.safetensors_files import (
    TensorSpec,
    plan_shards,
    read_safetensors_header,
    write_index,
    write_safetensors,
)
from mergemed.testing.tokenizers import install_tokenizer, write_generation_config
from mergemed.units import parse_byte_size

INIT_STD = 0.02
"""Standard deviation of streamed random weights (the usual ``initializer_range``)."""

NOISE_CHUNK_ELEMENTS = 1 << 24
"""Elements converted to float32 at a time when perturbing a tensor (64 MiB of float32)."""


def make_random_model(
    out_dir: str | os.PathLike[str],
    preset: str = "llama",
    *,
    seed: int = 0,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    tokenizer_dir: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    perturbation: float = 0.0,
    num_layers: int | None = None,
) -> Path:
    """Write a random-weight causal LM checkpoint (safetensors, config, tokenizer).

    Without ``base_dir``, makes a fresh model of shape ``preset``: tiny presets are initialised
    by ``transformers`` under ``torch.manual_seed(seed)`` (biases, which it zeroes, get N(0,
    0.02)), full-size presets are streamed tensor by tensor with N(0, 0.02) weights and ones
    for norms. With ``base_dir``, writes ``base + perturbation * N(0, std(tensor))`` for every
    floating tensor of the base instead (the base's RMS is used for constant tensors such as
    norms, so every tensor moves by about ``perturbation`` of its size); shard layout, config,
    tokenizer and every other file of the base are kept, and ``preset``, ``dtype``,
    ``max_shard_size``, ``tokenizer_dir`` and ``num_layers`` are ignored or must be unset.

    Args:
        out_dir: folder to write; must not exist or be empty.
        preset: a key of :data:`ARCHITECTURES`.
        seed: seeds the weights (or the noise, with ``base_dir``). Same inputs, same bytes.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; None uses the preset's default
            (float32 for tiny presets, bfloat16 for full-size ones).
        max_shard_size: largest shard, as bytes or a string such as ``"500MB"`` or ``"1GiB"``.
        tokenizer_dir: a saved tokenizer to copy; None builds one with :func:`build_tokenizer`.
        base_dir: a model folder (safetensors) to perturb instead of making fresh weights.
        perturbation: relative size of the noise added to ``base_dir``'s tensors.
        num_layers: override the preset's number of decoder blocks.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: bad preset, dtype, size or perturbation, or options that conflict.
        FileExistsError: ``out_dir`` exists and is not empty.
        FileNotFoundError: ``base_dir`` holds no safetensors weights.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder is not empty: {out}")
    if base_dir is not None:
        if dtype is not None or num_layers is not None or tokenizer_dir is not None:
            raise ValueError("dtype, num_layers and tokenizer_dir come from base_dir")
        if not math.isfinite(perturbation) or perturbation < 0:
            raise ValueError(f"perturbation must be a finite number >= 0, got {perturbation}")
        out.mkdir(parents=True, exist_ok=True)
        _perturb_model(Path(base_dir), out, seed=seed, perturbation=perturbation)
        return out
    if perturbation:
        raise ValueError("perturbation needs base_dir")

    architecture = find_architecture(preset)
    dtype_name = dtype or architecture.default_dtype
    torch_dtype = dtype_from_name(dtype_name)
    shard_bytes = parse_byte_size(max_shard_size)
    if shard_bytes <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size!r}")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = install_tokenizer(out, tokenizer_dir)
    config = build_config(
        preset,
        vocab_size=architecture.vocab_size or len(tokenizer),
        num_layers=num_layers,
        dtype=dtype_name,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if architecture.streamed:
        _stream_random_model(out, config, torch_dtype, seed=seed, max_shard_bytes=shard_bytes)
    else:
        _save_tiny_model(out, config, torch_dtype, seed=seed, max_shard_bytes=shard_bytes)
    write_generation_config(out, tokenizer)
    return out


def _save_tiny_model(
    out: Path, config: Any, dtype: torch.dtype, *, seed: int, max_shard_bytes: int
) -> None:
    from transformers import AutoModelForCausalLM

    with model_build_lock(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                generator = torch.Generator().manual_seed(_derived_seed("bias", seed, name))
                parameter.normal_(0.0, INIT_STD, generator=generator)
    model.save_pretrained(out, max_shard_size=max_shard_bytes)


def _derived_seed(purpose: str, seed: int, name: str) -> int:
    """A 63-bit seed for one tensor, independent of the order tensors are made in."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _model_tensor_specs(config: Any, dtype: torch.dtype) -> list[TensorSpec]:
    """Names and shapes of a model's saved tensors, from a model built on the meta device."""
    from transformers import AutoModelForCausalLM

    with model_build_lock(), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return [TensorSpec(name, dtype, tuple(tensor.shape)) for name, tensor in state.items()]


def _stream_random_model(
    out: Path, config: Any, dtype: torch.dtype, *, seed: int, max_shard_bytes: int
) -> None:
    specs = _model_tensor_specs(config, dtype)

    def random_tensor(spec: TensorSpec) -> Iterator[torch.Tensor]:
        if "norm" in spec.name and len(spec.shape) == 1:
            yield torch.ones(spec.shape, dtype=spec.dtype)
            return
        generator = torch.Generator().manual_seed(_derived_seed("init", seed, spec.name))
        values = torch.randn(spec.shape, generator=generator, dtype=spec.dtype)
        yield values.mul_(INIT_STD)

    shards = plan_shards(specs, max_shard_bytes)
    for file_name, shard_specs in shards.items():
        write_safetensors(out / file_name, shard_specs, random_tensor, {"format": "pt"})
    if len(shards) > 1:
        write_index(out, shards)
    config.to_json_file(out / "config.json")


# --------------------------------------------------------------------------------------------
# Perturbed copies


def _perturb_model(base: Path, out: Path, *, seed: int, perturbation: float) -> None:
    from safetensors import safe_open

    weight_files = sorted(base.glob("*.safetensors"))
    if not weight_files:
        raise FileNotFoundError(f"no *.safetensors weights in {base}")
    for path in sorted(base.iterdir()):
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy2(path, out / path.name)

    for path in weight_files:
        specs, metadata = read_safetensors_header(path)
        with safe_open(str(path), framework="pt") as reader:

            def perturbed(spec: TensorSpec, reader: Any = reader) -> Iterator[torch.Tensor]:
                tensor = reader.get_tensor(spec.name)
                if perturbation == 0 or not tensor.is_floating_point() or tensor.numel() == 0:
                    yield tensor
                    return
                yield from _add_noise(tensor, spec.name, seed=seed, perturbation=perturbation)

            write_safetensors(out / path.name, specs, perturbed, metadata)


def _add_noise(
    tensor: torch.Tensor, name: str, *, seed: int, perturbation: float
) -> Iterator[torch.Tensor]:
    """Yield ``tensor + perturbation * N(0, scale)`` in flat chunks, in ``tensor``'s dtype."""
    flat = tensor.reshape(-1)
    total = 0.0
    total_squares = 0.0
    for start in range(0, flat.numel(), NOISE_CHUNK_ELEMENTS):
        chunk = flat[start : start + NOISE_CHUNK_ELEMENTS].to(torch.float32)
        total += chunk.sum().item()
        total_squares += torch.dot(chunk, chunk).item()
    count = flat.numel()
    mean = total / count
    rms = math.sqrt(total_squares / count)
    std = math.sqrt(max(total_squares / count - mean * mean, 0.0) * count / max(count - 1, 1))
    # Constant tensors (norms of ones) have no spread: scale their noise by their RMS instead.
    scale = std if std > 1e-6 * rms else rms
    generator = torch.Generator().manual_seed(_derived_seed("perturb", seed, name))
    for start in range(0, count, NOISE_CHUNK_ELEMENTS):
        chunk = flat[start : start + NOISE_CHUNK_ELEMENTS].to(torch.float32)
        noise = torch.randn(chunk.shape, generator=generator, dtype=torch.float32)
        yield chunk.add_(noise, alpha=perturbation * scale).to(tensor.dtype)
