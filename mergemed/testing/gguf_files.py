"""Small GGUF files written locally with ``gguf.GGUFWriter``, for tests and the study's CI run.

:func:`write_llama_gguf` writes a Llama model folder (a tiny random one, say) the way
llama.cpp's converter lays it out: its tensor names, q/k rows permuted for its rotary
layout, a tied ``lm_head`` left out, the byte-level BPE tokenizer and chat template in the
metadata; tensors optionally quantized (``Q8_0``). :func:`write_raw_gguf` writes a file with
whatever architecture name and tensor types a test needs (an unknown architecture, a storage
type the gguf package cannot dequantize).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

TOKEN_NORMAL = 1
TOKEN_CONTROL = 3


def _llama_cpp_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """The row order llama.cpp stores q/k projections in: per head, the two rotary halves
    interleaved (row ``i`` of the first half, then row ``i`` of the second)."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tokenizer_fields(folder: Path) -> dict[str, Any]:
    """Tokens in id order, their types and the merges of a byte-level BPE ``tokenizer.json``."""
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(tokenizer["model"]["vocab"])
    special = {entry["content"] for entry in tokenizer.get("added_tokens", [])}
    for entry in tokenizer.get("added_tokens", []):
        vocab[entry["content"]] = entry["id"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(f"{folder}: token ids are not 0..{len(tokens) - 1}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    types = [TOKEN_CONTROL if token in special else TOKEN_NORMAL for token in tokens]
    # A BOS prepended by the post-processor is llama.cpp's ``add_bos_token``.
    processor = tokenizer.get("post_processor") or {}
    first = (
        (processor.get("single") or [{}])[0]
        if processor.get("type") == "TemplateProcessing"
        else {}
    )
    adds_bos = "SpecialToken" in first
    return {"tokens": tokens, "types": types, "merges": merges, "add_bos": adds_bos}


def write_llama_gguf(
    model_dir: str | Path, path: str | Path, *, storage: str = "F32", drop: Collection[str] = ()
) -> Path:
    """Write a Llama safetensors folder as a GGUF file, as llama.cpp's converter would.

    Args:
        model_dir: the folder (``config.json``, ``model.safetensors``, ``tokenizer.json``,
            ``tokenizer_config.json``).
        path: the ``.gguf`` file to write.
        storage: ``F32`` (exact) or a quantization type the gguf package can quantize
            (``Q8_0``) for the 2-D weights; norms stay ``F32``, as llama.cpp keeps them.
        drop: tensors (transformers names) to leave out, making an incomplete file.

    Returns:
        ``path``.
    """
    import gguf
    from safetensors.numpy import load_file

    folder, path = Path(model_dir), Path(path)
    config = json.loads((folder / "config.json").read_text())
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    layers = config["num_hidden_layers"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads")
    kv_heads = kv_heads or heads
    hidden = config["hidden_size"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(folder.name)
    writer.add_block_count(layers)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(config.get("rope_theta", rope.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_dimension_count(config.get("head_dim") or hidden // heads)
    writer.add_vocab_size(config["vocab_size"])
    fields = _tokenizer_fields(folder)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    writer.add_token_merges(fields["merges"])
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        if isinstance(config.get(key), int):
            add(config[key])
    writer.add_add_bos_token(bool(tokenizer_config.get("add_bos_token", fields["add_bos"])))
    template = _chat_template(folder, tokenizer_config)
    if template:
        writer.add_chat_template(template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    quantization = gguf.GGMLQuantizationType[storage]
    tensors = load_file(folder / "model.safetensors")
    for name, value in tensors.items():
        if name in drop or (name == "lm_head.weight" and config.get("tie_word_embeddings")):
            continue
        stem, suffix = name.rsplit(".", 1)
        target = names.get_name(stem)
        if target is None:
            raise ValueError(f"{folder}: no GGUF name for tensor {name!r}")
        array = value.astype(np.float32)
        if name.endswith("self_attn.q_proj.weight"):
            array = _llama_cpp_rope_rows(array, heads)
        elif name.endswith("self_attn.k_proj.weight"):
            array = _llama_cpp_rope_rows(array, kv_heads)
        if array.ndim == 2 and quantization != gguf.GGMLQuantizationType.F32:
            packed = gguf.quants.quantize(array, quantization)
            writer.add_tensor(f"{target}.{suffix}", packed, raw_dtype=quantization)
        else:
            writer.add_tensor(f"{target}.{suffix}", array)
    _finish(writer)
    return path


def _chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None


def write_raw_gguf(
    path: str | Path,
    architecture: str,
    tensors: dict[str, tuple[np.ndarray, str]],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a GGUF file with the given architecture name and raw tensors.

    Args:
        path: the file to write.
        architecture: ``general.architecture``.
        tensors: name -> (array, storage type name); a quantized type takes its packed bytes
            (``uint8``, rows of whole blocks).
        metadata: extra string or integer keys.

    Returns:
        ``path``.
    """
    import gguf

    writer = gguf.GGUFWriter(path, architecture)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint32(key, int(value))
    for name, (array, storage) in tensors.items():
        kind = gguf.GGMLQuantizationType[storage]
        writer.add_tensor(name, array, raw_dtype=None if storage == "F32" else kind)
    _finish(writer)
    return Path(path)


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
