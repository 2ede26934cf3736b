"""safetensors files: the header parser and a byte-range reader.

The header is parsed here, not by the ``safetensors`` library, and checked against the file's
size, so a truncated download is caught before any math. Reads fetch byte ranges with
``os.preadv`` into fresh buffers: memory held is what the caller asks for, not what the
operating system maps.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import stat
import struct
from pathlib import Path

import torch

from mergemed.errors import CheckpointError
from mergemed.io.formats import FILE_DIGEST_CHUNK_BYTES, TensorInfo, sha256_of_file

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
"""safetensors dtype codes and the torch dtypes they hold."""

DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
"""torch dtype -> safetensors dtype code."""

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Longest header read (the safetensors library's own limit)."""


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], bytes]:
    """Parse and check a safetensors header against the file's size.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        The tensors by name, the ``__metadata__`` mapping, and the raw header bytes.

    Raises:
        CheckpointError: the file is truncated, corrupt, or not safetensors.
    """
    try:
        facts = path.stat()
        if not stat.S_ISREG(facts.st_mode):
            raise CheckpointError(f"{path}: not a regular file; weights must be plain files")
        size = facts.st_size
        # O_NONBLOCK: a FIFO swapped in after the check must not hang the open.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise CheckpointError(f"{path}: not a regular file; weights must be plain files")
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file: header claims "
                    f"{header_length} bytes, file has {size}"
                )
            raw = handle.read(header_length)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error.strerror}") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors header: {error}") from None

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise CheckpointError(
            f"{path}: corrupt safetensors header: __metadata__ must map strings to strings"
        )
    data_start = 8 + header_length
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    extents: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(path, name, entry)
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} has {end - begin} bytes, expected {expected} "
                f"for shape {list(shape)} {entry['dtype']}"
            )
        extents.append((begin, end, name))
        tensors[name] = TensorInfo(name, path, dtype, shape, data_start + begin)
    _check_extents(path, extents, data_size)
    return tensors, metadata, raw


def _entry(path: Path, name: str, entry: object) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """One header entry's dtype, shape and data offsets, each checked for type and sign."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: corrupt entry for tensor {name!r} in header")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if code not in SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name!r}: unknown dtype {code!r}; expected one of "
            f"{', '.join(SAFETENSORS_DTYPES)}"
        )
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise CheckpointError(
            f"{path}: tensor {name!r}: shape must be a list of whole numbers >= 0, got {shape!r}"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))):
        raise CheckpointError(
            f"{path}: tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= "
            f"end, got {offsets!r}"
        )
    begin, end = offsets
    if begin > end:
        raise CheckpointError(
            f"{path}: tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= "
            f"end, got {offsets!r}"
        )
    return SAFETENSORS_DTYPES[code], tuple(shape), begin, end


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_extents(path: Path, extents: list[tuple[int, int, str]], data_size: int) -> None:
    """The tensors' bytes must tile the data section exactly: from 0, in some order, with no
    gap and no overlap, ending at the file's end (the rule of the safetensors library)."""
    ordered = sorted(extents)
    # Overlaps first: a forged header that points two tensors at the same bytes also leaves
    # a gap, and the overlap is the real news.
    for (_, first_end, first), (begin, end, name) in itertools.pairwise(ordered):
        if begin < first_end and end > begin:
            raise CheckpointError(
                f"{path}: tensor {name!r} overlaps tensor {first!r} in the data section "
                f"(bytes {begin}-{end} against {first_end}); the file is corrupt or forged"
            )
    position = 0
    for begin, end, name in ordered:
        if begin < position:  # only zero-size tensors reach here
            raise CheckpointError(
                f"{path}: tensor {name!r} overlaps another tensor in the data section"
            )
        if begin > position:
            raise CheckpointError(
                f"{path}: {begin - position} bytes before tensor {name!r} belong to no tensor "
                "(data_offsets must be contiguous)"
            )
        position = end
    if position > data_size:
        raise CheckpointError(
            f"{path}: truncated: the header describes {position} bytes of tensor data, "
            f"the file holds {data_size}"
        )
    if position < data_size:
        raise CheckpointError(
            f"{path}: {data_size - position} bytes after the last tensor belong to no tensor "
            "(the data section must end with the last tensor)"
        )


class SafetensorsFile:
    """One safetensors file as a :class:`~mergemed.io.formats.TensorSource`.

    The header is parsed and checked when the object is made; the file is opened on the
    first read and stays open until :meth:`close`.

    Args:
        path: the ``.safetensors`` file.

    Raises:
        CheckpointError: the file is truncated, corrupt, or not safetensors.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tensors, self.metadata, raw = read_safetensors_header(self.path)
        self.header_digests = {self.path.name: hashlib.sha256(raw).hexdigest()}
        self._descriptor: int | None = None

    def files(self) -> list[Path]:
        """The file, alone."""
        return [self.path]

    def read(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Read ``count`` elements of tensor ``name`` from element ``start``, as a flat tensor
        (one ``preadv`` into a fresh buffer); with the defaults the whole tensor, shaped.

        Raises:
            CheckpointError: the file ends before the tensor does.
        """
        info = self.tensors[name]
        whole = start == 0 and count is None
        count = info.numel - start if count is None else count
        itemsize = info.dtype.itemsize
        buffer = bytearray(count * itemsize)
        offset = info.start + start * itemsize
        if self._descriptor is None:
            self._descriptor = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        view = memoryview(buffer)
        done = 0
        while done < len(buffer):
            read = os.preadv(self._descriptor, [view[done:]], offset + done)
            if read == 0:
                raise CheckpointError(f"{info.file}: truncated while reading tensor {name!r}")
            done += read
        flat = (
            torch.frombuffer(buffer, dtype=info.dtype)
            if buffer
            else torch.empty(0, dtype=info.dtype)
        )
        return flat.reshape(info.shape) if whole else flat

    def file_digest(self, file: Path, chunk_bytes: int = FILE_DIGEST_CHUNK_BYTES) -> str:
        """SHA-256 of the whole file (reads it once)."""
        return sha256_of_file(file, chunk_bytes)

    def close(self) -> None:
        """Close the file if it is open."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
