"""safetensors files: the header parser and a byte-range reader.

The header is parsed here, not by the ``safetensors`` library, and checked against the file's
size, so a truncated download is caught before any math. Reads fetch byte ranges with
``os.preadv`` into fresh buffers: memory held is what the caller asks for, not what the
operating system maps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
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
        size = path.stat().st_size
        with path.open("rb") as handle:
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
    data_start = 8 + header_length
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt entry for tensor {name!r} in header") from None
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} has {end - begin} bytes, expected {expected} "
                f"for shape {list(shape)} {entry['dtype']}"
            )
        data_end = max(data_end, end)
        tensors[name] = TensorInfo(name, path, dtype, shape, data_start + begin)
    if data_end > data_size:
        raise CheckpointError(
            f"{path}: truncated: the header describes {data_end} bytes of tensor data, "
            f"the file holds {data_size}"
        )
    return tensors, metadata, raw


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
            self._descriptor = os.open(self.path, os.O_RDONLY)
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
