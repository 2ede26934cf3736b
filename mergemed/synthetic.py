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

The safetensors reader and writer here are deliberately independent of
:mod:`mergemed.io`, so that checkpoints made for tests do not share bugs with the code
under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from mergemed.units import parse_byte_size

__all__ = [
    "ARCHITECTURES",
    "CHAT_TEMPLATE",
    "DEFAULT_TEXT_PATH",
    "Architecture",
    "build_config",
    "build_tokenizer",
    "make_random_model",
]

DEFAULT_TEXT_PATH = Path(__file__).resolve().parent / "data" / "devils_dictionary.txt"
"""Public-domain general English text (Ambrose Bierce, *The Devil's Dictionary*)."""

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
CHAT_START_TOKEN = "<|im_start|>"
CHAT_END_TOKEN = "<|im_end|>"
END_OF_TEXT_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    CHAT_START_TOKEN,
    CHAT_END_TOKEN,
    END_OF_TEXT_TOKEN,
)
"""Special tokens, in id order: ``<pad>`` is 0, ``<s>`` is 1, ``</s>`` is 2.

``<|endoftext|>`` is there because ``transformers`` loads the tokenizer of a ``qwen2`` model
folder as ``Qwen2Tokenizer``, which adds that token when it is missing (growing the vocabulary
past the embedding)."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A ChatML-style chat template: ``<|im_start|>role\\ncontent<|im_end|>`` per message."""

INIT_STD = 0.02
"""Standard deviation of streamed random weights (the usual ``initializer_range``)."""

NOISE_CHUNK_ELEMENTS = 1 << 24
"""Elements converted to float32 at a time when perturbing a tensor (64 MiB of float32)."""

_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
)
_SAFETENSORS_CODES: Mapping[torch.dtype, str] = MappingProxyType(
    {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
)
_SAFETENSORS_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {code: dtype for dtype, code in _SAFETENSORS_CODES.items()}
)
_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"


# --------------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class Architecture:
    """The shape of one model family member, enough to build its ``transformers`` config.

    Attributes:
        model_type: ``"llama"``, ``"qwen2"`` or ``"mistral"``.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of decoder blocks.
        intermediate_size: width of the MLP.
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (grouped-query attention when fewer than queries).
        vocab_size: rows of the embedding; None means the tokenizer's vocabulary size.
        tie_word_embeddings: whether ``lm_head`` shares the embedding (and is not saved).
        max_position_embeddings: context length in the config.
        rope_parameters: the config's ``rope_parameters`` (theta and scaling).
        rms_norm_eps: epsilon of the RMS norms.
        streamed: True for full-size shapes, written tensor by tensor and never materialised.
        default_dtype: dtype used when ``make_random_model`` is given none.
        extra_config: further keyword arguments for the config class.
    """

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 256
    rope_parameters: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"rope_type": "default", "rope_theta": 10000.0})
    )
    rms_norm_eps: float = 1e-6
    streamed: bool = False
    default_dtype: str = "float32"
    extra_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads


_TINY_LLAMA = Architecture(
    model_type="llama",
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=160,
    num_attention_heads=4,
    num_key_value_heads=2,
)

ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType(
    {
        # Tiny, materialised models (vocabulary = the tokenizer's).
        "llama": _TINY_LLAMA,
        "llama-tied": dataclasses.replace(_TINY_LLAMA, tie_word_embeddings=True),
        # For evaluation: head size 64 (vLLM's smallest) and room for long-context prompts.
        "llama-eval": dataclasses.replace(
            _TINY_LLAMA,
            hidden_size=128,
            intermediate_size=256,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
        ),
        "qwen2": Architecture(
            model_type="qwen2",  # Qwen2 attention always has q/k/v biases.
            hidden_size=48,
            num_hidden_layers=3,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            extra_config=MappingProxyType({"use_sliding_window": False}),
        ),
        "mistral": Architecture(
            model_type="mistral",
            hidden_size=32,
            num_hidden_layers=4,
            intermediate_size=96,
            num_attention_heads=4,
            num_key_value_heads=2,
            extra_config=MappingProxyType({"sliding_window": 128}),
        ),
        # Full-size shapes, streamed to disk.
        "tinyllama-1.1b": Architecture(
            model_type="llama",
            hidden_size=2048,
            num_hidden_layers=22,
            intermediate_size=5632,
            num_attention_heads=32,
            num_key_value_heads=4,
            vocab_size=32000,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            streamed=True,
            default_dtype="bfloat16",
        ),
        "llama-3.1-8b": Architecture(
            model_type="llama",
            hidden_size=4096,
            num_hidden_layers=32,
            intermediate_size=14336,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=131072,
            rope_parameters=MappingProxyType(
                {
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                }
            ),
            rms_norm_eps=1e-5,
            streamed=True,
            default_dtype="bfloat16",
        ),
    }
)
"""Named shapes accepted as ``preset`` by :func:`make_random_model` and :func:`build_config`."""


def _architecture(preset: str) -> Architecture:
    try:
        return ARCHITECTURES[preset]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"unknown preset {preset!r}; expected one of: {known}") from None


def _torch_dtype(dtype: str) -> torch.dtype:
    try:
        return _DTYPES[dtype]
    except KeyError:
        known = ", ".join(_DTYPES)
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of: {known}") from None


def build_config(
    preset: str,
    *,
    vocab_size: int | None = None,
    num_layers: int | None = None,
    dtype: str | None = None,
    **overrides: Any,
) -> Any:
    """Build the ``transformers`` config (``LlamaConfig``, ``Qwen2Config``...) of a preset.

    Args:
        preset: a key of :data:`ARCHITECTURES`.
        vocab_size: embedding rows; defaults to the preset's (required for tiny presets,
            whose vocabulary is the tokenizer's).
        num_layers: override the number of decoder blocks (e.g. 1 for a quick test).
        dtype: dtype recorded in the config; defaults to the preset's default dtype.
        **overrides: further config attributes (``bos_token_id``, ``eos_token_id``...).

    Returns:
        The config, with ``architectures`` set to the causal-LM class name.

    Raises:
        ValueError: unknown preset or dtype, missing vocabulary size, or a bad layer count.
    """
    from transformers import AutoConfig

    architecture = _architecture(preset)
    vocab = vocab_size if vocab_size is not None else architecture.vocab_size
    if vocab is None:
        raise ValueError(f"preset {preset!r} takes its vocabulary size from the tokenizer")
    layers = architecture.num_hidden_layers if num_layers is None else num_layers
    if layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {layers}")
    dtype_name = dtype or architecture.default_dtype
    _torch_dtype(dtype_name)
    class_names = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
    settings: dict[str, Any] = {
        "architectures": [f"{class_names[architecture.model_type]}ForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": architecture.hidden_size,
        "intermediate_size": architecture.intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": architecture.num_attention_heads,
        "num_key_value_heads": architecture.num_key_value_heads,
        "head_dim": architecture.head_dim,
        "max_position_embeddings": architecture.max_position_embeddings,
        "rms_norm_eps": architecture.rms_norm_eps,
        "rope_parameters": dict(architecture.rope_parameters),
        "tie_word_embeddings": architecture.tie_word_embeddings,
        "dtype": dtype_name,
        **architecture.extra_config,
        **overrides,
    }
    return AutoConfig.for_model(architecture.model_type, **settings)


# --------------------------------------------------------------------------------------------
# Tokenizer


def build_tokenizer(
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 512,
    text_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Train a small byte-level BPE tokenizer and save it as a ``transformers`` tokenizer.

    The tokenizer has ``<pad>`` (id 0), ``<s>`` (bos, id 1, prepended on encode), ``</s>``
    (eos, id 2), ``<|im_start|>``, ``<|im_end|>`` and ``<|endoftext|>``, and a ChatML-style
    ``chat_template``.
    Training is deterministic: the same text and vocabulary size give the same files.

    Args:
        out_dir: folder to save into (created if missing).
        vocab_size: vocabulary size including the special tokens; at least 256 + 5 so that
            every byte has a token.
        text_path: training text; defaults to the bundled :data:`DEFAULT_TEXT_PATH`.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: ``vocab_size`` too small to hold every byte and the special tokens.
        FileNotFoundError: ``text_path`` does not exist.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum}, got {vocab_size}")
    text = Path(text_path) if text_path is not None else DEFAULT_TEXT_PATH
    if not text.is_file():
        raise FileNotFoundError(f"tokenizer training text not found: {text}")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=sorted(alphabet),
        show_progress=False,
    )
    tokenizer.train([str(text)], trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[CHAT_START_TOKEN, CHAT_END_TOKEN, END_OF_TEXT_TOKEN],
        model_max_length=2048,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out)
    return out


def _install_tokenizer(out_dir: Path, tokenizer_dir: str | os.PathLike[str] | None) -> Any:
    """Build or copy the tokenizer into ``out_dir`` and return it loaded."""
    from transformers import AutoTokenizer

    if tokenizer_dir is None:
        build_tokenizer(out_dir)
        return AutoTokenizer.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _write_generation_config(out_dir: Path, tokenizer: Any) -> None:
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out_dir)


# --------------------------------------------------------------------------------------------
# Models


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

    architecture = _architecture(preset)
    dtype_name = dtype or architecture.default_dtype
    torch_dtype = _torch_dtype(dtype_name)
    shard_bytes = parse_byte_size(max_shard_size)
    if shard_bytes <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size!r}")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _install_tokenizer(out, tokenizer_dir)
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
    _write_generation_config(out, tokenizer)
    return out


def _save_tiny_model(
    out: Path, config: Any, dtype: torch.dtype, *, seed: int, max_shard_bytes: int
) -> None:
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
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


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _model_tensor_specs(config: Any, dtype: torch.dtype) -> list[_TensorSpec]:
    """Names and shapes of a model's saved tensors, from a model built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return [_TensorSpec(name, dtype, tuple(tensor.shape)) for name, tensor in state.items()]


def _stream_random_model(
    out: Path, config: Any, dtype: torch.dtype, *, seed: int, max_shard_bytes: int
) -> None:
    specs = _model_tensor_specs(config, dtype)

    def random_tensor(spec: _TensorSpec) -> Iterator[torch.Tensor]:
        if "norm" in spec.name and len(spec.shape) == 1:
            yield torch.ones(spec.shape, dtype=spec.dtype)
            return
        generator = torch.Generator().manual_seed(_derived_seed("init", seed, spec.name))
        values = torch.randn(spec.shape, generator=generator, dtype=spec.dtype)
        yield values.mul_(INIT_STD)

    shards = _plan_shards(specs, max_shard_bytes)
    for file_name, shard_specs in shards.items():
        _write_safetensors(out / file_name, shard_specs, random_tensor, {"format": "pt"})
    if len(shards) > 1:
        _write_index(out, shards)
    config.to_json_file(out / "config.json")


def _plan_shards(specs: Sequence[_TensorSpec], max_bytes: int) -> dict[str, list[_TensorSpec]]:
    """Group tensors in order into shards of at most ``max_bytes`` (a bigger tensor sits alone),
    named like ``save_pretrained`` names them."""
    groups: list[list[_TensorSpec]] = []
    size = 0
    for spec in specs:
        if not groups or (groups[-1] and size + spec.nbytes > max_bytes):
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    if len(groups) == 1:
        return {_SINGLE_FILE: groups[0]}
    total = len(groups)
    return {f"model-{i:05d}-of-{total:05d}.safetensors": g for i, g in enumerate(groups, 1)}


def _write_index(out: Path, shards: Mapping[str, Sequence[_TensorSpec]]) -> None:
    specs = [spec for group in shards.values() for spec in group]
    index = {
        "metadata": {
            "total_size": sum(spec.nbytes for spec in specs),
            "total_parameters": sum(math.prod(spec.shape) for spec in specs),
        },
        "weight_map": {spec.name: file for file, group in shards.items() for spec in group},
    }
    (out / _INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


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
        specs, metadata = _read_safetensors_header(path)
        with safe_open(str(path), framework="pt") as reader:

            def perturbed(spec: _TensorSpec, reader: Any = reader) -> Iterator[torch.Tensor]:
                tensor = reader.get_tensor(spec.name)
                if perturbation == 0 or not tensor.is_floating_point() or tensor.numel() == 0:
                    yield tensor
                    return
                yield from _add_noise(tensor, spec.name, seed=seed, perturbation=perturbation)

            _write_safetensors(out / path.name, specs, perturbed, metadata)


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


# --------------------------------------------------------------------------------------------
# Safetensors, streamed


def _read_safetensors_header(path: Path) -> tuple[list[_TensorSpec], dict[str, str]]:
    """The tensors of a safetensors file in storage order, and its ``__metadata__``."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", None) or {}
    entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    specs = [
        _TensorSpec(name, _SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]))
        for name, entry in entries
    ]
    return specs, metadata


def _write_safetensors(
    path: Path,
    specs: Sequence[_TensorSpec],
    produce: Callable[[_TensorSpec], Iterable[torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensors are produced one at a time, in ``specs`` order.

    The header is computed from ``specs`` first; ``produce(spec)`` then yields the tensor's
    values as one or more chunks (flattened in row-major order), which are written and
    dropped. The file appears under ``path`` only once complete.
    """
    if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
        raise RuntimeError("writing safetensors needs a little-endian machine")
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": _SAFETENSORS_CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)

    descriptor, partial_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(struct.pack("<Q", len(header_bytes)))
            handle.write(header_bytes)
            for spec in specs:
                written = 0
                for chunk in produce(spec):
                    if chunk.dtype != spec.dtype:
                        raise RuntimeError(f"{spec.name}: produced {chunk.dtype}, not {spec.dtype}")
                    data = chunk.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
                    handle.write(data)
                    written += data.nbytes
                if written != spec.nbytes:
                    raise RuntimeError(f"{spec.name}: produced {written} bytes, not {spec.nbytes}")
        os.chmod(partial_name, 0o644)
        os.replace(partial_name, path)
    except BaseException:
        Path(partial_name).unlink(missing_ok=True)
        raise
