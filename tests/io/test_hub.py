"""Tests of model references, folders and Hub headers.

The Hugging Face Hub cannot be reached here, so the header-only path is tested at
huggingface_hub's API boundary: ``hf_hub_download`` and ``get_safetensors_metadata`` are
replaced by functions that answer as the Hub would, with huggingface_hub's own metadata
classes filled from a real local model's safetensors headers, and ``snapshot_download`` by a
spy that fails the test if any weights would be downloaded.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

from mergemed.errors import CheckpointError, RecipeError
from mergemed.io.checkpoint import Checkpoint
from mergemed.io.hub import (
    ModelReference,
    hub_commit,
    open_model_header,
    resolve_model_folder,
    resolve_model_folders,
)
from mergemed.plan import plan_recipe

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_reference_parsing(tmp_path: Path) -> None:
    assert ModelReference.parse("org/name@v1") == ModelReference("org/name@v1", "org/name", "v1")
    assert ModelReference.parse("org/name") == ModelReference("org/name", "org/name", None)
    with_at = tmp_path / "model@home"
    with_at.mkdir()
    assert ModelReference.parse(str(with_at)).revision is None


def test_local_folders_are_found_as_given_then_beside_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "recipes" / "parents" / "a").mkdir(parents=True)
    found = resolve_model_folder("parents/a", search_dirs=[tmp_path / "recipes"])
    assert found == (tmp_path / "recipes" / "parents" / "a").resolve()
    assert resolve_model_folder(str(found)) == found


@pytest.mark.parametrize("reference", ["./absent", "/no/such/model", "a/b/c", "not a hub id"])
def test_missing_local_folder(reference: str) -> None:
    with pytest.raises(CheckpointError, match=r"folder not found"):
        resolve_model_folder(reference)


def test_hub_id_offline_and_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match=r"not in the Hugging Face cache \(HF_HUB_OFFLINE"):
        resolve_model_folder("nobody/absent-model")


def test_every_unavailable_model_is_named_in_one_line_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GatorTronLlama recipe's case: a gated Hub id that is not cached and a local folder
    that does not exist are both named, once each, with how to log in and that a model off the
    public Hub must be a local folder; a folder that exists is not named."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "present").mkdir()
    references = ["meta-llama/Llama-3.1-8B-Instruct", "./models/GatorTronLlama-8B", "./present"]
    with pytest.raises(CheckpointError) as raised:
        resolve_model_folders([*references, references[0]])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("2 of 3 models are not available: ")
    assert message.count("'meta-llama/Llama-3.1-8B-Instruct'") == 1
    assert f"folder not found ({tmp_path / 'models' / 'GatorTronLlama-8B'})" in message
    assert "present" not in message
    assert message.count("HF_TOKEN") == 1 and "hf auth login" in message
    assert "must be given as a local folder" in message
    assert "unset hf_hub_offline" in message.lower()


def test_an_unreachable_hub_is_told_apart_from_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without HF_HUB_OFFLINE, a Hub that cannot be reached (a closed local port) is said to
    be unreachable, not merely uncached, with how to log in for gated models."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(CheckpointError) as raised:
        resolve_model_folder("meta-llama/Llama-3.1-8B-Instruct")
    message = str(raised.value)
    assert "Hub cannot be reached" in message or "cannot fetch from the Hub" in message
    assert "HF_TOKEN" in message and "\n" not in message


def test_hub_commit_of_a_snapshot_folder(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--org--name" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    assert hub_commit(snapshot) == COMMIT
    assert hub_commit(tmp_path) is None


# --------------------------------------------------------------------------------------------
# Headers without weights


def hub_metadata(folder: Path) -> SafetensorsRepoMetadata:
    """What ``get_safetensors_metadata`` answers for a repository holding ``folder``."""
    files = {}
    weight_map = {}
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + length])
        metadata = header.pop("__metadata__", {})
        files[path.name] = SafetensorsFileMetadata(
            metadata=metadata,
            tensors={
                name: TensorInfo(e["dtype"], e["shape"], tuple(e["data_offsets"]))
                for name, e in header.items()
            },
        )
        weight_map.update(dict.fromkeys(header, path.name))
    return SafetensorsRepoMetadata(
        metadata=None, sharded=len(files) > 1, weight_map=weight_map, files_metadata=files
    )


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_pair):
    """``org/tiny`` on a stand-in Hub that serves a tiny local model's config and headers.

    A stand-in because tests cannot reach the Hub (no network here or in CI). It replaces
    only the three huggingface_hub calls at the network edge, returns their real types
    (``SafetensorsRepoMetadata`` built from the real file headers) and fails the test if the
    weights would be downloaded; everything above them runs as it does against the Hub.
    """
    source, _ = tiny_model_pair("llama")
    calls: list[tuple[str, ...]] = []
    snapshot = tmp_path / "cache" / "models--org--tiny" / "snapshots" / COMMIT

    def hf_hub_download(repo_id: str, filename: str, *, revision=None, **_):
        calls.append(("hf_hub_download", repo_id, filename, revision))
        assert repo_id == "org/tiny", repo_id
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / filename, snapshot / filename)
        return str(snapshot / filename)

    def get_safetensors_metadata(repo_id: str, *, revision=None, **_):
        calls.append(("get_safetensors_metadata", repo_id, revision))
        return hub_metadata(source)

    def snapshot_download(*args, **kwargs):
        raise AssertionError(f"snapshot_download would download weights: {args} {kwargs}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", get_safetensors_metadata)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return source, calls


def test_hub_header_has_the_models_tensors_and_config(fake_hub) -> None:
    source, calls = fake_hub
    header = open_model_header("org/tiny@main")
    local = Checkpoint(source)
    assert header.config == local.config
    assert hub_commit(header.folder) == COMMIT
    assert {n: (i.dtype, i.shape) for n, i in header.tensors.items()} == {
        n: (i.dtype, i.shape) for n, i in local.tensors.items()
    }
    assert header.num_layers == local.num_layers
    assert header.tie_word_embeddings == local.tie_word_embeddings
    assert calls == [
        ("hf_hub_download", "org/tiny", "config.json", "main"),
        ("get_safetensors_metadata", "org/tiny", COMMIT),
    ]
    with pytest.raises(CheckpointError, match="only its headers were read from the Hub"):
        header.read(next(iter(header.tensors)))
    # Its files are the repository's names: nothing is on disk but the config.
    assert header.files() == [Path(f.name) for f in local.files()]
    assert [source.files() for source in header.sources] == [[]]
    assert sorted(p.name for p in header.folder.iterdir()) == ["config.json"]


def test_plan_of_a_hub_id_reads_headers_only(fake_hub, tmp_path: Path) -> None:
    source, calls = fake_hub
    recipe = "merge_method: slerp\nbase_model: {a}\nmodels: [{{model: {a}}}, {{model: {b}}}]\nparameters: {{t: [0, 1]}}\n"
    (tmp_path / "local").mkdir()
    shutil.copytree(source, tmp_path / "local" / "tiny")
    hub_recipe = tmp_path / "hub.yaml"
    hub_recipe.write_text(recipe.format(a="org/tiny", b="org/tiny@main"))
    local_recipe = tmp_path / "local" / "local.yaml"
    local_recipe.write_text(recipe.format(a="tiny", b="./tiny"))
    from_hub = plan_recipe(hub_recipe)
    assert from_hub.used_real_models
    assert {c[0] for c in calls} == {"hf_hub_download", "get_safetensors_metadata"}
    from_folder = plan_recipe(local_recipe)
    assert from_hub.rows == from_folder.rows
    assert [t.name for t in from_hub.plan.tasks] == [t.name for t in from_folder.plan.tasks]
    assert [t.shape for t in from_hub.plan.tasks] == [t.shape for t in from_folder.plan.tasks]


def test_hub_errors_become_checkpoint_errors(
    fake_hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub.errors import NotASafetensorsRepoError

    def not_safetensors(repo_id: str, **_):
        raise NotASafetensorsRepoError(f"'{repo_id}' is not a safetensors repo.\nmore text")

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", not_safetensors)
    with pytest.raises(CheckpointError) as caught:
        open_model_header("org/tiny")
    assert str(caught.value) == (
        "model 'org/tiny': cannot read its headers from the Hub: "
        "'org/tiny' is not a safetensors repo."
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "merge_method: linear\nmodels: [{model: org/tiny, parameters: {weight: 1}}]\n"
    )
    with pytest.raises(RecipeError, match="pass --num-layers"):
        plan_recipe(recipe)
    assert plan_recipe(recipe, num_layers=3).plan.num_layers == 3


def test_local_folder_header_is_the_folder(tiny_model_pair) -> None:
    source, _ = tiny_model_pair("llama")
    header = open_model_header(str(source))
    assert header.folder == source.resolve()
    assert header.files() == Checkpoint(source).files()
