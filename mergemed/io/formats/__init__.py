"""Weights file formats behind one interface, :class:`TensorSource`.

A source indexes the tensors of one or more weight files (name, dtype, shape) and reads any
element range of any of them as a flat tensor. :class:`~mergemed.io.checkpoint.Checkpoint`
composes a model folder over its sources without knowing their format; a new format (GGUF,
say) is a module here with one class that satisfies the protocol.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

FILE_DIGEST_CHUNK_BYTES = 16 * 1024 * 1024
"""Bytes read at a time when hashing a whole weight file."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a weight file."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    """Absolute byte offset of the first element in the file (-1: not addressable, e.g.
    a pickled tensor)."""

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor's data takes."""
        return self.numel * self.dtype.itemsize


class TensorSource(Protocol):
    """What one weights file format offers: an index of tensors and element-range reads."""

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        """Every tensor of the source, by name."""
        ...

    @property
    def header_digests(self) -> Mapping[str, str]:
        """A cheap digest per file name of what the file says it holds (safetensors: the
        SHA-256 of its header); empty when the format has no such header."""
        ...

    def files(self) -> list[Path]:
        """The files this source reads."""
        ...

    def read(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Read ``count`` elements of tensor ``name`` from element ``start``, as a flat tensor.

        With the defaults the whole tensor is read and given its shape.

        Raises:
            CheckpointError: the file cannot be read (truncated, say).
        """
        ...

    def file_digest(self, file: Path, chunk_bytes: int = FILE_DIGEST_CHUNK_BYTES) -> str:
        """SHA-256 of a whole file of this source (reads it once)."""
        ...

    def close(self) -> None:
        """Release open files; reads after this reopen them."""
        ...


def sha256_of_file(file: Path, chunk_bytes: int = FILE_DIGEST_CHUNK_BYTES) -> str:
    """SHA-256 of a whole file, read ``chunk_bytes`` at a time.

    Args:
        file: the file to hash.
        chunk_bytes: bytes held in memory at a time.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
