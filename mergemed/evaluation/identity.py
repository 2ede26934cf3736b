"""What a score is a score *of*: a hash of a model's weights, and of its tokenizer.

The results store keys on these, never on a path: two merges written to the same folder are two
models, and the same weights evaluated from disk or from memory are one model. The weights hash
is SHA-256 over every tensor in name order (name, dtype, shape, then its bytes), so a folder
and the state dict it was written from hash alike, and changing any single value changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from mergemed.io.checkpoint import TOKENIZER_FILES, Checkpoint

HASH_CHUNK_ELEMENTS = 1 << 24
"""Tensors are read and hashed in slices of this many elements (bounded memory)."""


def _tensor_preamble(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    described = json.dumps([name, str(dtype).removeprefix("torch."), list(shape)])
    return described.encode() + b"\0"


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def folder_weights_hash(folder: str | Path, *, allow_pickle: bool = False) -> str:
    """SHA-256 of a model folder's weights (safetensors, read in slices).

    Raises:
        CheckpointError: the folder has no readable weights.
    """
    digest = hashlib.sha256()
    checkpoint = Checkpoint(Path(folder), allow_pickle=allow_pickle)
    try:
        for name in sorted(checkpoint.tensors):
            info = checkpoint.tensors[name]
            digest.update(_tensor_preamble(name, info.dtype, tuple(info.shape)))
            for start in range(0, info.numel, HASH_CHUNK_ELEMENTS):
                count = min(HASH_CHUNK_ELEMENTS, info.numel - start)
                digest.update(_raw_bytes(checkpoint.read(name, start, count)))
    finally:
        checkpoint.close()
    return digest.hexdigest()


def state_dict_weights_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of in-memory weights; equal to :func:`folder_weights_hash` of the folder they
    are saved to with safetensors (same names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        digest.update(_tensor_preamble(name, tensor.dtype, tuple(tensor.shape)))
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), HASH_CHUNK_ELEMENTS):
            digest.update(_raw_bytes(flat[start : start + HASH_CHUNK_ELEMENTS]))
    return digest.hexdigest()


def tokenizer_hash(folder: str | Path) -> str:
    """SHA-256 over the tokenizer and chat-template files a model folder has (by name)."""
    digest = hashlib.sha256()
    for filename in TOKENIZER_FILES:
        path = Path(folder) / filename
        if path.is_file():
            digest.update(filename.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def folder_fingerprint(folder: str | Path) -> str:
    """SHA-256 over the names, sizes and modification times of a data folder's files (cheap:
    nothing is read), so local task data that changes is a new result-store key."""
    root = Path(folder)
    digest = hashlib.sha256(str(root).encode() + b"\0")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        entry = f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
        digest.update(entry.encode())
    return digest.hexdigest()
