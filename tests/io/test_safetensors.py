"""Tests of the safetensors header parser and byte-range reader against the ``safetensors``
library: what it writes parses to the same tensors, what is broken is refused, naming the file."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mergemed.errors import CheckpointError
from mergemed.io.formats.safetensors import (
    MAX_HEADER_BYTES,
    SAFETENSORS_DTYPES,
    SafetensorsFile,
    read_safetensors_header,
)


def sample_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(7, 5, generator=generator).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(3, 11, generator=generator),
        "model.layers.0.mlp.up_proj.bias": torch.randn(3, generator=generator).half(),
        "model.norm.weight": torch.randn(5, generator=generator).double(),
        "position_ids": torch.arange(13, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = sample_tensors()
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "made by safetensors"})
    return path, tensors


def write_raw(path: Path, header: bytes, data: bytes = b"", claimed: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if claimed is None else claimed) + header + data)
    return path


def test_header_of_a_library_file_gives_its_tensors(written) -> None:
    path, tensors = written
    parsed, metadata, raw = read_safetensors_header(path)
    loaded = load_file(path)
    assert set(parsed) == set(loaded)
    for name, tensor in loaded.items():
        info = parsed[name]
        assert (info.name, info.file, info.dtype, info.shape) == (
            name,
            path,
            tensor.dtype,
            tuple(tensor.shape),
        )
        assert info.nbytes == tensor.numel() * tensor.element_size()
    with safe_open(str(path), framework="pt") as reader:
        assert metadata == reader.metadata()
    # The offsets point at each tensor's bytes: read them straight from the file.
    content = path.read_bytes()
    assert raw == content[8 : 8 + struct.unpack("<Q", content[:8])[0]]
    for name, tensor in tensors.items():
        info = parsed[name]
        expected = tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        assert content[info.start : info.start + info.nbytes] == expected, name


def test_every_dtype_code_parses(tmp_path: Path) -> None:
    tensors = {code: torch.zeros(2, 3, dtype=dtype) for code, dtype in SAFETENSORS_DTYPES.items()}
    path = tmp_path / "dtypes.safetensors"
    save_file(tensors, path)
    parsed, _, _ = read_safetensors_header(path)
    assert {name: info.dtype for name, info in parsed.items()} == SAFETENSORS_DTYPES


def test_truncated_data_is_refused(written) -> None:
    path, _ = written
    os.truncate(path, path.stat().st_size - 4)
    with pytest.raises(CheckpointError, match="truncated: the header describes") as caught:
        read_safetensors_header(path)
    assert str(path) in str(caught.value)


def test_file_shorter_than_the_length_prefix(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match=r"not a safetensors file \(only 3 bytes\)") as caught:
        read_safetensors_header(path)
    assert str(path) in str(caught.value)


def test_header_length_past_the_file(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "long.safetensors", b'{"a":1}', claimed=1000)
    with pytest.raises(CheckpointError, match="header claims 1000 bytes, file has 15") as caught:
        read_safetensors_header(path)
    assert str(path) in str(caught.value)


def test_header_over_the_size_limit(tmp_path: Path) -> None:
    # A sparse file big enough to hold the claimed header: only the limit refuses it.
    path = write_raw(tmp_path / "huge.safetensors", b"{", claimed=MAX_HEADER_BYTES + 8)
    os.truncate(path, 8 + MAX_HEADER_BYTES + 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file") as caught:
        read_safetensors_header(path)
    assert str(path) in str(caught.value)


def test_non_json_header(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "garbled.safetensors", b"{not json}")
    with pytest.raises(CheckpointError, match="corrupt safetensors header") as caught:
        read_safetensors_header(path)
    assert str(path) in str(caught.value)


def test_header_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "list.safetensors", b"[1, 2, 3]")
    with pytest.raises(CheckpointError, match="header is not a JSON object") as caught:
        read_safetensors_header(path)
    assert str(path) in str(caught.value)


def test_unknown_dtype(tmp_path: Path) -> None:
    header = {"weird": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}}
    path = write_raw(tmp_path / "dtype.safetensors", json.dumps(header).encode(), b"\0\0")
    with pytest.raises(
        CheckpointError, match="tensor 'weird': unknown dtype 'Q7'; expected one of F64, F32"
    ) as caught:
        read_safetensors_header(path)
    assert str(path) in str(caught.value)


def test_byte_count_that_does_not_match_the_shape(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}
    path = write_raw(tmp_path / "count.safetensors", json.dumps(header).encode(), bytes(12))
    with pytest.raises(CheckpointError, match=r"tensor 'w' has 12 bytes, expected 16"):
        read_safetensors_header(path)


def test_byte_range_reads_equal_the_library(written) -> None:
    path, _ = written
    expected = load_file(path)
    source = SafetensorsFile(path)
    try:
        for name, tensor in expected.items():
            whole = source.read(name)
            assert whole.shape == tensor.shape and whole.dtype == tensor.dtype
            assert torch.equal(whole, tensor), name
            flat = tensor.reshape(-1)
            for start, count in ((0, 1), (1, 2), (flat.numel() // 2, flat.numel() // 3)):
                if start + count <= flat.numel():
                    assert torch.equal(source.read(name, start, count), flat[start : start + count])
            assert source.read(name, flat.numel(), 0).numel() == 0
    finally:
        source.close()
    assert source.files() == [path]
    assert list(source.header_digests) == [path.name]


def test_a_file_truncated_after_opening_fails_on_read(written) -> None:
    path, _ = written
    source = SafetensorsFile(path)
    last = max(source.tensors.values(), key=lambda info: info.start + info.nbytes)
    os.truncate(path, last.start + 1)
    with pytest.raises(CheckpointError, match=f"truncated while reading tensor {last.name!r}"):
        source.read(last.name)
    source.close()


@pytest.mark.parametrize(
    ("entries", "payload_bytes", "expected"),
    [
        (
            {"a": ("F32", [2], [0, 8]), "b": ("F32", [2], [0, 8])},
            16,
            "overlaps tensor 'a'",
        ),
        ({"a": ("F32", [2], [8, 16])}, 16, "8 bytes before tensor 'a' belong to no tensor"),
        ({"a": ("F32", [2], [0, 8])}, 12, "4 bytes after the last tensor belong to no tensor"),
        ({"a": ("F32", [2], [-8, 0])}, 8, "data_offsets must be [begin, end]"),
        ({"a": ("F32", [2], [8, 0])}, 8, "data_offsets must be [begin, end]"),
        ({"a": ("F32", [True, 2], [0, 8])}, 8, "shape must be a list of whole numbers"),
        ({"a": ("F32", [-2], [0, 8])}, 8, "shape must be a list of whole numbers"),
    ],
)
def test_header_is_as_strict_as_the_safetensors_library(
    tmp_path: Path, entries: dict, payload_bytes: int, expected: str
) -> None:
    """Offsets in range, contiguous, non-overlapping, tiling the data section exactly; the
    reference library refuses every one of these files too."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = {
        name: {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        for name, (dtype, shape, offsets) in entries.items()
    }
    path = write_raw(
        tmp_path / "forged.safetensors", json.dumps(header).encode(), b"\0" * payload_bytes
    )
    with pytest.raises(CheckpointError) as caught:
        read_safetensors_header(path)
    assert expected in str(caught.value) and str(path) in str(caught.value)
    with pytest.raises((SafetensorError, ValueError, RuntimeError)):
        load_file(path)


def test_entry_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "odd.safetensors", b'{"a": [1, 2]}', b"")
    with pytest.raises(CheckpointError, match="corrupt entry for tensor 'a'"):
        read_safetensors_header(path)


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    """A FIFO in place of a shard would block ``open()`` forever: it is refused unopened."""
    import os

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_safetensors_header(fifo)
