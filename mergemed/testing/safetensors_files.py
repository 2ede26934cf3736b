"""A streaming safetensors reader and writer, for the random-weight checkpoints of the tests.

They are deliberately independent of :mod:`mergemed.io`, so that checkpoints made for
tests do not share bugs with the code under test.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

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


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a safetensors file: its name, dtype and shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of its data."""
        return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(specs: Sequence[TensorSpec], max_bytes: int) -> dict[str, list[TensorSpec]]:
    """Group tensors in order into shards of at most ``max_bytes`` (a bigger tensor sits alone),
    named like ``save_pretrained`` names them."""
    groups: list[list[TensorSpec]] = []
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


def write_index(out: Path, shards: Mapping[str, Sequence[TensorSpec]]) -> None:
    specs = [spec for group in shards.values() for spec in group]
    index = {
        "metadata": {
            "total_size": sum(spec.nbytes for spec in specs),
            "total_parameters": sum(math.prod(spec.shape) for spec in specs),
        },
        "weight_map": {spec.name: file for file, group in shards.items() for spec in group},
    }
    (out / _INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def read_safetensors_header(path: Path) -> tuple[list[TensorSpec], dict[str, str]]:
    """The tensors of a safetensors file in storage order, and its ``__metadata__``."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", None) or {}
    entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    specs = [
        TensorSpec(name, _SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]))
        for name, entry in entries
    ]
    return specs, metadata


def write_safetensors(
    path: Path,
    specs: Sequence[TensorSpec],
    produce: Callable[[TensorSpec], Iterable[torch.Tensor]],
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
