"""Tests of :class:`Checkpoint`: a model folder over its tensor sources, safetensors (one file
or sharded with an index) and pickle (refused unless allowed)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import load_model_tensors
from safetensors.torch import load_file, save_file

from mergemed.errors import CheckpointError
from mergemed.io.checkpoint import Checkpoint
from mergemed.io.formats.safetensors import SafetensorsFile


def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "model.embed_tokens.weight": torch.randn(6, 4, generator=generator),
        "model.layers.0.mlp.up_proj.weight": torch.randn(4, 4, generator=generator),
        "model.layers.1.mlp.up_proj.weight": torch.randn(4, 4, generator=generator),
        "model.layers.2.mlp.up_proj.weight": torch.randn(4, 4, generator=generator),
        "model.norm.weight": torch.ones(4),
    }


def folder_with(tmp_path: Path, config: dict | None = None, shards: int = 1) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config if config is not None else {}))
    names = list(tensors())
    if shards == 1:
        save_file(tensors(), folder / "model.safetensors")
        return folder
    weight_map = {}
    for index in range(shards):
        part = {n: t for i, (n, t) in enumerate(tensors().items()) if i % shards == index}
        filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, folder / filename)
        weight_map.update(dict.fromkeys(part, filename))
    assert set(weight_map) == set(names)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_sharded_folder_reads_like_the_library(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, {"num_hidden_layers": 3, "tie_word_embeddings": True}, 2)
    checkpoint = Checkpoint(folder, "my-model")
    try:
        assert checkpoint.reference == "my-model"
        assert set(checkpoint.tensors) == set(tensors())
        assert checkpoint.num_layers == 3 and checkpoint.tie_word_embeddings
        assert [f.name for f in checkpoint.files()] == [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]
        assert set(checkpoint.header_digests) == {f.name for f in checkpoint.files()}
        expected = load_model_tensors(folder)
        for name, tensor in expected.items():
            assert torch.equal(checkpoint.read(name), tensor)
            count = tensor.numel() - 2
            assert torch.equal(checkpoint.read(name, 1, count), tensor.reshape(-1)[1 : 1 + count])
        for file in checkpoint.files():
            assert checkpoint.file_digest(file) == hashlib.sha256(file.read_bytes()).hexdigest()
    finally:
        checkpoint.close()


def test_layer_count_from_the_config_else_from_the_names(tmp_path: Path) -> None:
    assert Checkpoint(folder_with(tmp_path / "a", {"n_layer": 7})).num_layers == 7
    nested = {"text_config": {"num_hidden_layers": 5}}
    assert Checkpoint(folder_with(tmp_path / "b", nested)).num_layers == 5
    counted = Checkpoint(folder_with(tmp_path / "c", {"num_layers": "many"}))
    assert counted.num_layers == 3 and not counted.tie_word_embeddings


def test_index_only_its_shards_are_read(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, shards=2)
    save_file({"stray": torch.zeros(1)}, folder / "extra.safetensors")
    assert "stray" not in Checkpoint(folder).tensors


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lists missing shard model-00002-of-00002"):
        Checkpoint(folder)


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ("{}", "weight_map: expected a JSON object of tensor name -> shard file"),
        ("[]", "weight_map: expected a JSON object of tensor name -> shard file"),
        ('{"weight_map": ["model.safetensors"]}', "weight_map: expected a JSON object"),
        ('{"weight_map": {"w": 3}}', "weight_map['w']: expected a shard file name"),
        ("{oops", "not valid JSON"),
    ],
)
def test_index_without_weight_map(tmp_path: Path, index: str, expected: str) -> None:
    folder = folder_with(tmp_path)
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        Checkpoint(folder)


def test_a_tensor_in_two_files(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    save_file({"model.norm.weight": torch.ones(4)}, folder / "second.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'model\.norm\.weight' also in"):
        Checkpoint(folder)


def test_no_config(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config.json \(model 'm'\)"):
        Checkpoint(folder, "m")


def test_config_that_is_not_json(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    (folder / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        Checkpoint(folder)


def test_no_weights(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*.safetensors weights \(model 'm'\)"):
        Checkpoint(folder, "m")


def pickle_folder(tmp_path: Path) -> Path:
    folder = folder_with(tmp_path, {"num_hidden_layers": 3})
    (folder / "model.safetensors").unlink()
    torch.save(tensors(), folder / "pytorch_model.bin")
    return folder


def test_pickle_is_refused_without_allow_pickle(tmp_path: Path) -> None:
    folder = pickle_folder(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        Checkpoint(folder)
    assert str(caught.value) == (
        f"{folder / 'pytorch_model.bin'}: pickle checkpoint refused; loading it can run code "
        "from the file. Convert it to safetensors, or pass --allow-pickle if you trust it"
    )


def test_pickle_reads_with_allow_pickle(tmp_path: Path) -> None:
    folder = pickle_folder(tmp_path)
    checkpoint = Checkpoint(folder, allow_pickle=True)
    assert checkpoint.num_layers == 3
    assert checkpoint.files() == [folder / "pytorch_model.bin"]
    assert checkpoint.header_digests == {}
    for name, tensor in tensors().items():
        assert checkpoint.tensors[name].start == -1
        assert checkpoint.tensors[name].shape == tuple(tensor.shape)
        assert torch.equal(checkpoint.read(name), tensor)
        assert torch.equal(checkpoint.read(name, 2, 3), tensor.reshape(-1)[2:5])
    file = folder / "pytorch_model.bin"
    assert checkpoint.file_digest(file) == hashlib.sha256(file.read_bytes()).hexdigest()
    checkpoint.close()


def test_corrupt_pickle(tmp_path: Path) -> None:
    folder = pickle_folder(tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot load"):
        Checkpoint(folder, allow_pickle=True)


def test_given_sources_are_composed_without_looking_at_the_folder(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, {"num_hidden_layers": 3})
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "model.safetensors", elsewhere)
    extra = tmp_path / "extra.safetensors"
    save_file({"lm_head.weight": torch.randn(6, 4)}, extra)
    checkpoint = Checkpoint(folder, sources=[SafetensorsFile(elsewhere), SafetensorsFile(extra)])
    assert set(checkpoint.tensors) == {*tensors(), "lm_head.weight"}
    assert torch.equal(checkpoint.read("lm_head.weight"), load_file(extra)["lm_head.weight"])
    assert checkpoint.files() == sorted([elsewhere, extra])
    with pytest.raises(CheckpointError, match="not a weight file"):
        checkpoint.file_digest(folder / "config.json")
    checkpoint.close()


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("[1, 2]", "expected a JSON object of config keys, got list"),
        ('{"text_config": null}', None),
        ('{"text_config": 3}', "text_config: expected a JSON object, got int"),
        ('{"a": "\\ud800"', "not valid JSON"),
    ],
)
def test_odd_configs(tmp_path: Path, config_text: str, expected: str | None) -> None:
    folder = folder_with(tmp_path)
    (folder / "config.json").write_text(config_text)
    if expected is None:
        assert Checkpoint(folder).num_layers is not None  # counted from the tensor names
        return
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        Checkpoint(folder)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/../../x"])
def test_index_paths_stay_inside_the_model_folder(tmp_path: Path, name: str) -> None:
    folder = folder_with(tmp_path)
    shutil.copy(folder / "model.safetensors", tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: name for n in tensors()}})
    )
    with pytest.raises(CheckpointError, match="is outside the model folder"):
        Checkpoint(folder)
