"""Writing merged tensors: the output layout, and the sinks slices are written to.

Every shard is laid out up front (names, dtypes, shapes and offsets are known from the plan),
so each finished slice of a tensor is written straight to its place: with ``os.pwrite`` into a
pre-sized file (:class:`ShardWriter`), or into whole tensors in memory (:class:`MemorySink`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from mergemed.errors import OutputError
from mergemed.io.formats.safetensors import DTYPE_CODES


@dataclass
class OutputTensor:
    """A tensor's place in the output."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    shard: int = 0
    offset: int = 0
    """Offset of the first byte within the shard's data section."""

    @property
    def nbytes(self) -> int:
        """Bytes the tensor's data takes."""
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class Shard:
    """One output safetensors file, its tensors and header."""

    index: int
    tensors: list[OutputTensor] = field(default_factory=list)
    filename: str = ""
    header: bytes = b""

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_bytes(self) -> int:
        """Bytes of the whole file: length prefix, header and data."""
        return 8 + len(self.header) + self.data_bytes


def layout_shards(tensors: Iterable[OutputTensor], max_shard_bytes: int) -> list[Shard]:
    """Assign tensors, in order, to shards and build each shard's header.

    Args:
        tensors: the output tensors, in the order they are written; each gets its shard and
            offset set.
        max_shard_bytes: the largest shard's data; a larger single tensor gets a shard of its
            own.

    Returns:
        The shards, named ``model.safetensors`` when there is one, else
        ``model-00001-of-0000N.safetensors``...
    """
    shards: list[Shard] = [Shard(0)]
    for tensor in tensors:
        current = shards[-1]
        if current.tensors and current.data_bytes + tensor.nbytes > max_shard_bytes:
            current = Shard(len(shards))
            shards.append(current)
        tensor.shard = current.index
        tensor.offset = current.data_bytes
        current.tensors.append(tensor)
    total = len(shards)
    for shard in shards:
        shard.filename = (
            "model.safetensors"
            if total == 1
            else f"model-{shard.index + 1:05d}-of-{total:05d}.safetensors"
        )
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        for tensor in shard.tensors:
            header[tensor.name] = {
                "dtype": DTYPE_CODES[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": [tensor.offset, tensor.offset + tensor.nbytes],
            }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        shard.header = raw
    return shards


def write_index(folder: Path, shards: Sequence[Shard]) -> None:
    """Write ``model.safetensors.index.json`` for a multi-shard output (nothing for one)."""
    if len(shards) == 1:
        return
    index = {
        "metadata": {"total_size": sum(s.data_bytes for s in shards)},
        "weight_map": {t.name: s.filename for s in shards for t in s.tensors},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


class Sink(Protocol):
    """Where finished slices of output tensors go, shard by shard."""

    def open(self, shard: Shard) -> None:
        """Get ready for the slices of ``shard``'s tensors."""
        ...

    def write(self, name: str, element_offset: int, values: torch.Tensor) -> None:
        """Place a flat slice ``values`` (already in the output dtype) of tensor ``name`` at
        ``element_offset``."""
        ...

    def close_shard(self, shard: Shard) -> str | None:
        """Every slice of ``shard`` has been written; returns the written file's digest
        (``sha256:<hex>``), or None for a sink that writes no file."""
        ...

    def close(self) -> None:
        """Release whatever is still open (also after a failure)."""
        ...


class ShardWriter:
    """Writes slices of output tensors into pre-laid-out shard files with ``os.pwrite``.

    Args:
        folder: where the shard files go.
        shards: the layout from :func:`layout_shards`.

    Raises:
        OutputError: the disk is full (or a file-size limit is hit) while writing.
    """

    def __init__(self, folder: Path, shards: Sequence[Shard]):
        self.folder = folder
        self.shards = list(shards)
        self.placement = {t.name: t for s in self.shards for t in s.tensors}
        self._descriptors: dict[int, int] = {}
        # The pipeline writes each shard front to back, so its digest is taken on the way
        # (hashlib releases the GIL); a shard written out of order is read back instead.
        self._digests: dict[int, Any] = {}
        self._next_offset: dict[int, int | None] = {}

    def open(self, shard: Shard) -> None:
        """Create the shard file with its header, sized to its final length."""
        path = self.folder / shard.filename
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._descriptors[shard.index] = descriptor
        prefix = struct.pack("<Q", len(shard.header)) + shard.header
        self._pwrite(descriptor, memoryview(prefix), 0, path)
        self._digests[shard.index] = hashlib.sha256(prefix)
        self._next_offset[shard.index] = len(prefix)
        try:
            # Reserve the blocks now so a full disk is found before any math, not after.
            os.posix_fallocate(descriptor, 0, shard.file_bytes)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise output_error(path, error) from None
            try:
                os.ftruncate(descriptor, shard.file_bytes)
            except OSError as truncate_error:
                raise output_error(path, truncate_error) from None

    def write(self, name: str, element_offset: int, values: torch.Tensor) -> None:
        """Write a flat slice ``values`` (already in the output dtype) at ``element_offset``."""
        placement = self.placement[name]
        shard = self.shards[placement.shard]
        descriptor = self._descriptors[shard.index]
        data_start = 8 + len(shard.header)
        offset = data_start + placement.offset + element_offset * placement.dtype.itemsize
        raw = values.reshape(-1).contiguous().view(torch.uint8).numpy()
        self._pwrite(descriptor, memoryview(raw), offset, self.folder / shard.filename)
        if self._next_offset.get(shard.index) == offset:
            self._digests[shard.index].update(memoryview(raw))
            self._next_offset[shard.index] = offset + raw.nbytes
        else:
            self._next_offset[shard.index] = None

    def close_shard(self, shard: Shard) -> str:
        """Flush a finished shard to disk and close it; returns its ``sha256:<hex>`` digest."""
        descriptor = self._descriptors.pop(shard.index)
        path = self.folder / shard.filename
        try:
            os.fsync(descriptor)
        except OSError as error:
            raise output_error(path, error) from None
        finally:
            os.close(descriptor)
        digest = self._digests.pop(shard.index)
        if self._next_offset.pop(shard.index) != shard.file_bytes:
            return file_digest(path)
        return f"sha256:{digest.hexdigest()}"

    def close(self) -> None:
        """Close every shard file still open."""
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors.clear()

    @staticmethod
    def _pwrite(descriptor: int, data: memoryview, offset: int, path: Path) -> None:
        done = 0
        while done < len(data):
            try:
                written = os.pwrite(descriptor, data[done:], offset + done)
            except OSError as error:
                raise output_error(path, error) from None
            done += written


class MemorySink:
    """A :class:`Sink` that keeps the output in memory: slices land in whole tensors.

    Attributes:
        tensors: the output tensors by name, allocated as their shard is opened.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def open(self, shard: Shard) -> None:
        """Allocate the shard's tensors (uninitialised)."""
        for tensor in shard.tensors:
            self.tensors[tensor.name] = torch.empty(tensor.shape, dtype=tensor.dtype)

    def adopt(self, name: str, tensor: torch.Tensor) -> None:
        """Take a whole, already merged tensor as it is (no copy)."""
        if tuple(tensor.shape) != tuple(self.tensors[name].shape):
            raise ValueError(f"{name}: adopted shape {tuple(tensor.shape)} is not the layout's")
        self.tensors[name] = tensor

    def write(self, name: str, element_offset: int, values: torch.Tensor) -> None:
        """Copy a flat slice into its tensor at ``element_offset``."""
        flat = self.tensors[name].view(-1)
        flat[element_offset : element_offset + values.numel()].copy_(values.reshape(-1))

    def close_shard(self, shard: Shard) -> None:
        """Nothing to flush, no file to digest."""

    def close(self) -> None:
        """Nothing to release."""


def file_digest(path: Path, chunk_bytes: int = 16 * 1024 * 1024) -> str:
    """``sha256:<hex>`` of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def output_error(path: Path, error: OSError) -> OutputError:
    """The :class:`OutputError` for an ``OSError`` met while writing ``path``: "disk full"
    for ENOSPC, EDQUOT and EFBIG, else "cannot write" with the system's reason."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(f"{path}: disk full while writing ({error.strerror}); nothing was kept")
    return OutputError(f"{path}: cannot write: {error.strerror}")
