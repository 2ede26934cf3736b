"""Tests of the output layout and sinks: files written slice by slice load with the
``safetensors`` library and with transformers, and the in-memory sink gives the same tensors."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import torch
from helpers import load_model_tensors
from safetensors.torch import load_file

from mergemed.io.writer import (
    MemorySink,
    OutputTensor,
    ShardWriter,
    layout_shards,
    output_error,
    write_index,
)


def sample_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        "a": torch.randn(10, 10, generator=generator),  # 400 bytes
        "b": torch.randn(30, generator=generator).to(torch.bfloat16),  # 60 bytes
        "c": torch.randn(200, generator=generator),  # 800 bytes: larger than a shard
        "d": torch.arange(25, dtype=torch.int64),  # 200 bytes
        "e": torch.randn(3, 1, 2, generator=generator).half(),
        "f": torch.zeros(0, 3),
    }


def layout_for(tensors: dict[str, torch.Tensor], max_bytes: int):
    return layout_shards(
        [OutputTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], max_bytes
    )


def write_in_slices(sink, shards, tensors: dict[str, torch.Tensor], slice_elements: int) -> None:
    """Write every tensor in slices of ``slice_elements``, the last slice first."""
    for shard in shards:
        sink.open(shard)
        for placed in shard.tensors:
            flat = tensors[placed.name].reshape(-1)
            starts = list(range(0, flat.numel(), slice_elements))
            for start in reversed(starts):
                sink.write(placed.name, start, flat[start : start + slice_elements])
        sink.close_shard(shard)
    sink.close()


def test_layout_keeps_order_and_respects_the_shard_size() -> None:
    tensors = sample_tensors()
    shards = layout_for(tensors, 500)
    assert [t.name for s in shards for t in s.tensors] == list(tensors)
    assert [[t.name for t in s.tensors] for s in shards] == [["a", "b"], ["c"], ["d", "e", "f"]]
    for shard in shards:
        assert shard.data_bytes <= 500 or len(shard.tensors) == 1
        offset = 0
        for placed in shard.tensors:
            assert (placed.shard, placed.offset) == (shard.index, offset)
            offset += placed.nbytes
        assert len(shard.header) % 8 == 0
        assert shard.file_bytes == 8 + len(shard.header) + shard.data_bytes
    assert [s.filename for s in shards] == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    single = layout_for(tensors, 1 << 30)
    assert len(single) == 1 and single[0].filename == "model.safetensors"


def test_shard_writer_output_loads_with_safetensors(tmp_path: Path) -> None:
    tensors = sample_tensors()
    shards = layout_for(tensors, 500)
    write_in_slices(ShardWriter(tmp_path, shards), shards, tensors, slice_elements=7)
    loaded = {}
    for shard in shards:
        path = tmp_path / shard.filename
        assert path.stat().st_size == shard.file_bytes
        loaded.update(load_file(path))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_memory_sink_gives_what_the_shard_writer_writes(tmp_path: Path) -> None:
    tensors = sample_tensors()
    shards = layout_for(tensors, 500)
    write_in_slices(ShardWriter(tmp_path, shards), shards, tensors, slice_elements=11)
    sink = MemorySink()
    write_in_slices(sink, shards, tensors, slice_elements=11)
    written = {}
    for shard in shards:
        written.update(load_file(tmp_path / shard.filename))
    assert set(sink.tensors) == set(written)
    for name, tensor in written.items():
        assert sink.tensors[name].dtype == tensor.dtype
        assert torch.equal(sink.tensors[name], tensor), name


def test_write_index_is_what_transformers_loads(
    tmp_path: Path, tiny_model_pair, tiny_tokenizer_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    base, _ = tiny_model_pair("llama")
    tensors = load_model_tensors(base)
    shards = layout_for(tensors, 40_000)
    assert len(shards) > 2
    write_in_slices(ShardWriter(tmp_path, shards), shards, tensors, slice_elements=1000)
    write_index(tmp_path, shards)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )
    assert set(index["weight_map"]) == set(tensors)
    shutil.copyfile(base / "config.json", tmp_path / "config.json")
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    state = model.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name


def test_one_shard_writes_no_index(tmp_path: Path) -> None:
    shards = layout_for(sample_tensors(), 1 << 30)
    write_index(tmp_path, shards)
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_output_errors_say_disk_full_or_why_not() -> None:
    path = Path("/out/model.safetensors")
    full = output_error(path, OSError(errno.ENOSPC, "No space left on device"))
    assert str(full) == (
        f"{path}: disk full while writing (No space left on device); nothing was kept"
    )
    denied = output_error(path, OSError(errno.EACCES, "Permission denied"))
    assert str(denied) == f"{path}: cannot write: Permission denied"
