"""Hostile weight files (issue 16): every one ends in one line naming the file or tensor, exit 2,
nothing written, inputs untouched, and no hang. The corrupt files are made here from a tiny
model, as an attacker would edit them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_cli


def read_raw(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_raw(path: Path, header: dict, payload: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_fifo():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def same_shape_pair(header: dict) -> tuple[str, str]:
    """Two tensors of one layer with the same shape and dtype (q_proj and o_proj)."""
    names = sorted(n for n in header if n != "__metadata__")
    q = next(n for n in names if n.endswith("layers.0.self_attn.q_proj.weight"))
    o = q.replace("q_proj", "o_proj")
    assert header[q]["shape"] == header[o]["shape"]
    return q, o


def overlapping_offsets(folder: Path) -> str:
    path = folder / "model.safetensors"
    header, payload = read_raw(path)
    q, o = same_shape_pair(header)
    header[o]["data_offsets"] = list(header[q]["data_offsets"])
    write_raw(path, header, payload)
    return "model.safetensors"


def dtype_lie(folder: Path) -> str:
    path = folder / "model.safetensors"
    header, payload = read_raw(path)
    q, _ = same_shape_pair(header)
    assert header[q]["dtype"] == "F32"
    header[q]["dtype"] = "I32"
    write_raw(path, header, payload)
    return q


def negative_offsets(folder: Path) -> str:
    path = folder / "model.safetensors"
    header, payload = read_raw(path)
    q, _ = same_shape_pair(header)
    start, end = header[q]["data_offsets"]
    header[q]["data_offsets"] = [start - 2**20, end - 2**20]
    write_raw(path, header, payload)
    return "model.safetensors"


def size_mismatch(folder: Path) -> str:
    path = folder / "model.safetensors"
    header, payload = read_raw(path)
    q, _ = same_shape_pair(header)
    header[q]["shape"] = [header[q]["shape"][0] + 1, header[q]["shape"][1]]
    write_raw(path, header, payload)
    return q


def index_outside_the_folder(folder: Path) -> str:
    header, _ = read_raw(folder / "model.safetensors")
    secret = folder.parent / f"{folder.name}-outside.safetensors"
    shutil.copy(folder / "model.safetensors", secret)
    names = [n for n in header if n != "__metadata__"]
    weight_map = {name: f"../{secret.name}" for name in names}
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return "model.safetensors.index.json"


def weight_map_not_a_mapping(folder: Path) -> str:
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": ["model.safetensors"]})
    )
    return "model.safetensors.index.json"


def shard_is_a_fifo(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    return "model.safetensors"


CORRUPTIONS: dict[str, tuple[Callable[[Path], str], str]] = {
    "overlapping_offsets": (overlapping_offsets, "overlap"),
    "dtype_lie": (dtype_lie, "int32"),
    "negative_offsets": (negative_offsets, "data_offsets"),
    "size_mismatch": (size_mismatch, "bytes"),
    "index_outside_the_folder": (index_outside_the_folder, "outside"),
    "weight_map_not_a_mapping": (weight_map_not_a_mapping, "weight_map"),
    "shard_is_a_fifo": (shard_is_a_fifo, "regular file"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_hostile_weight_files_end_in_one_line(
    corruption: str, tmp_path: Path, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> None:
    base, other = tiny_model_pair("llama")
    hostile = tmp_path / "hostile"
    shutil.copytree(other, hostile)
    corrupt, expected = CORRUPTIONS[corruption]
    named = corrupt(hostile)
    before = tree_digest(hostile)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {json.dumps(str(base))}\nmodels:\n"
        f"  - model: {json.dumps(str(base))}\n  - model: {json.dumps(str(hostile))}\n"
        "parameters:\n  t: 0.5\n"
    )
    output = tmp_path / "merged"
    result = run_cli("merge", recipe, "-o", output, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert named in lines[0] and expected in lines[0], lines[0]
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if "mergemed" in p.name] == []
    assert tree_digest(hostile) == before
