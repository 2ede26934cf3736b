"""Named model shapes (tiny and full-size) and the ``transformers`` configs built from them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
)


@dataclass(frozen=True)
class Architecture:
    """The shape of one model family member, enough to build its ``transformers`` config.

    Attributes:
        model_type: ``"llama"``, ``"qwen2"``, ``"mistral"`` or ``"gemma"``.
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
        "gemma": Architecture(
            model_type="gemma",  # tied embeddings, (1 + w) RMS norms, GeLU MLP
            hidden_size=32,
            num_hidden_layers=3,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
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


def find_architecture(preset: str) -> Architecture:
    try:
        return ARCHITECTURES[preset]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"unknown preset {preset!r}; expected one of: {known}") from None


def dtype_from_name(dtype: str) -> torch.dtype:
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

    architecture = find_architecture(preset)
    vocab = vocab_size if vocab_size is not None else architecture.vocab_size
    if vocab is None:
        raise ValueError(f"preset {preset!r} takes its vocabulary size from the tokenizer")
    layers = architecture.num_hidden_layers if num_layers is None else num_layers
    if layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {layers}")
    dtype_name = dtype or architecture.default_dtype
    dtype_from_name(dtype_name)
    class_names = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "gemma": "Gemma"}
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
