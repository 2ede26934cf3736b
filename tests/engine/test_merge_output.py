"""What ``mergemed merge`` writes, run as a real subprocess: a complete model folder (weights,
config, tokenizer, resolved recipe, report) that ``transformers`` loads and generates from."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import load_model_tensors, run_cli, slerp_recipe, succeeded
from safetensors.torch import load_file

from mergemed.engine import merge
from mergemed.recipe import load_recipe

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# mergemed merge


class Merged:
    def __init__(self, recipe: Path, output: Path, base: Path, other: Path, stderr: str):
        self.recipe = recipe
        self.output = output
        self.base = base
        self.other = other
        self.stderr = stderr


@pytest.fixture(scope="module")
def merged(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> Merged:
    """One ``mergemed merge`` of the tiny Llama pair: SLERP with t from 0 (layer 0) to 1
    (layer 1), cut into 20 KB shards."""
    base, other = tiny_model_pair("llama")
    root = tmp_path_factory.mktemp("cli-merge")
    recipe = slerp_recipe(root / "recipe.yaml", base, other, "[0, 1]")
    output = root / "merged"
    result = succeeded(run_cli("merge", recipe, "-o", output, "--max-shard-size", "20KB"))
    return Merged(recipe, output, base, other, result.stderr)


@pytest.mark.slow
def test_merge_writes_a_complete_model_folder(merged: Merged) -> None:
    output, base = merged.output, merged.base
    assert f"-> {output}" in merged.stderr.replace("\n", "")  # rich folds long lines
    names = {p.name for p in output.iterdir()}
    assert {"config.json", "recipe.yaml", "merge.json", "model.safetensors.index.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no journal or temporary left
    assert not [p for p in output.parent.iterdir() if "mergemed-partial" in p.name]

    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (output / name).read_bytes() == (base / name).read_bytes(), name
    assert (output / "chat_template.jinja").read_text() == (
        base / "chat_template.jinja"
    ).read_text()
    config = json.loads((output / "config.json").read_text())
    base_config = json.loads((base / "config.json").read_text())
    assert config["num_hidden_layers"] == base_config["num_hidden_layers"] == 2
    assert config["architectures"] == base_config["architectures"]
    assert config.get("dtype", config.get("torch_dtype")) == "float32"

    shards = sorted(output.glob("*.safetensors"))
    assert len(shards) > 5
    assert all(p.name.endswith(f"-of-{len(shards):05d}.safetensors") for p in shards)
    assert all(p.stat().st_size <= 20_000 or len(load_file(p)) == 1 for p in shards)
    index = json.loads((output / "model.safetensors.index.json").read_text())
    base_tensors = load_file(base / "model.safetensors")
    assert set(index["weight_map"]) == set(base_tensors)
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    for name, shard in index["weight_map"].items():
        assert name in load_file(output / shard)
    tensors = load_model_tensors(output)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )


@pytest.mark.slow
def test_merge_applies_the_recipe(merged: Merged) -> None:
    """t = 0 at layer 0 gives the base's tensors, t = 1 at layer 1 the other model's; tensors
    outside the layers sit at t = 0."""
    tensors = load_model_tensors(merged.output)
    base = load_file(merged.base / "model.safetensors")
    other = load_file(merged.other / "model.safetensors")
    assert tensors.keys() == base.keys()
    for name, tensor in tensors.items():
        expected = other[name] if ".layers.1." in name else base[name]
        assert torch.equal(tensor, expected), name
    assert not torch.equal(
        base["model.layers.1.mlp.up_proj.weight"], other["model.layers.1.mlp.up_proj.weight"]
    )


@pytest.mark.slow
def test_merge_report(merged: Merged) -> None:
    report = json.loads((merged.output / "merge.json").read_text())
    assert report["merge_method"] == "slerp"
    assert report["resumed_shards"] == 0
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    for package in ("transformers", "safetensors"):
        assert report["versions"][package]
    timings = report["timings_seconds"]
    assert set(timings) >= {"read", "compute", "write"}
    assert all(value >= 0 for value in timings.values())
    assert report["seconds"] >= 0

    assert set(report["inputs"]) == {str(merged.base), str(merged.other)}
    for reference, entry in report["inputs"].items():
        folder = Path(entry["folder"])
        assert folder == Path(reference).resolve()
        assert entry["files"] == {
            "model.safetensors": {
                "bytes": (folder / "model.safetensors").stat().st_size,
                "header_sha256": entry["files"]["model.safetensors"]["header_sha256"],
            }
        }
        assert len(entry["files"]["model.safetensors"]["header_sha256"]) == 64

    shards = sorted(p.name for p in merged.output.glob("*.safetensors"))
    assert report["output"]["shards"] == shards
    assert report["output"]["bytes"] == sum((merged.output / s).stat().st_size for s in shards)
    assert report["output"]["tensors"] == len(load_model_tensors(merged.output))


@pytest.mark.slow
def test_resolved_recipe_merges_again_to_identical_tensors(merged: Merged, tmp_path: Path) -> None:
    resolved = merged.output / "recipe.yaml"
    recipe = load_recipe(resolved)
    original = load_recipe(merged.recipe)
    assert recipe.merge_method == original.merge_method == "slerp"
    assert recipe.base_model == original.base_model
    assert [m.model for m in recipe.models] == [m.model for m in original.models]
    assert recipe.parameters == original.parameters
    again = merge(resolved, tmp_path / "again")
    first = load_model_tensors(merged.output)
    second = load_model_tensors(again.output)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_resolved_recipe_makes_relative_model_paths_absolute(
    tiny_model_pair: Callable[[str], tuple[Path, Path]], tmp_path: Path
) -> None:
    base, other = tiny_model_pair("llama")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name, folder in (("base", base), ("other", other)):
        (tmp_path / name).symlink_to(folder, target_is_directory=True)
    recipe = slerp_recipe(recipes / "recipe.yaml", "../base", "../other", "0.5")
    first = merge(recipe, tmp_path / "merged")
    resolved = load_recipe(first.output / "recipe.yaml")
    assert resolved.base_model == str(base.resolve())
    assert [m.model for m in resolved.models] == [str(base.resolve()), str(other.resolve())]
    moved = tmp_path / "elsewhere" / "deep"
    moved.mkdir(parents=True)
    (first.output / "recipe.yaml").rename(moved / "recipe.yaml")
    again = merge(moved / "recipe.yaml", tmp_path / "again")
    one, two = load_model_tensors(first.output), load_model_tensors(again.output)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[name], two[name]) for name in one)


@pytest.mark.slow
def test_sharded_output_loads_in_transformers_and_generates(merged: Merged) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(merged.output, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tensors = load_model_tensors(merged.output)
    state = model.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name

    tokenizer = AutoTokenizer.from_pretrained(merged.output)
    prompt = tokenizer("The physician said", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(
            **prompt,
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    prompt_length = prompt["input_ids"].shape[1]
    assert generated.shape == (1, prompt_length + 6)
    assert torch.equal(generated[0, :prompt_length], prompt["input_ids"][0])
    assert int(generated[0, prompt_length:].max()) < model.config.vocab_size
