"""The oracle test: mergemed's output equals mergekit 0.1.5's on the same inputs (fp32, 1e-6).

mergekit runs in-process through its own ``run_merge``; mergemed through ``mergemed.merge``.
Every method and schedule form (scalar, gradient, filter rules, per-model values, slices) is
checked on tiny Llama-, Qwen2- and Mistral-shaped models.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from helpers import load_model_tensors

from mergemed.engine import merge
from mergemed.io.architecture import config_num_layers

mergekit_config = pytest.importorskip("mergekit.config")
mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_options = pytest.importorskip("mergekit.options")

TOLERANCE = 1e-6

SLERP_SCHEDULE = {
    "t": [
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
        {"value": 0.5},
    ]
}

RECIPES = {
    "linear-weights": {
        "merge_method": "linear",
        "models": [
            {"model": "A", "parameters": {"weight": 0.3}},
            {"model": "B", "parameters": {"weight": 0.7}},
        ],
    },
    "linear-filters-unnormalised": {
        "merge_method": "linear",
        "models": [
            {
                "model": "A",
                "parameters": {"weight": [{"filter": "mlp", "value": 0.2}, {"value": 0.6}]},
            },
            {"model": "B", "parameters": {"weight": [0.1, 0.9]}},
        ],
        "parameters": {"normalize": False},
    },
    "slerp-gradient-filters": {
        "merge_method": "slerp",
        "base_model": "A",
        "models": [{"model": "A"}, {"model": "B"}],
        "parameters": SLERP_SCHEDULE,
    },
    "slerp-with-model-weights": {  # mergekit's own test configs: slerp ignores `weight`
        "merge_method": "slerp",
        "base_model": "A",
        "models": [
            {"model": "A", "parameters": {"weight": 0.3}},
            {"model": "B", "parameters": {"weight": 0.7}},
        ],
        "parameters": {"t": [0.2, 0.9]},
    },
    "slerp-slices": {
        "merge_method": "slerp",
        "base_model": "A",
        "slices": [
            {
                "sources": [
                    {"model": "A", "layer_range": [0, "H"]},
                    {"model": "B", "layer_range": [0, "H"]},
                ]
            },
            {
                "sources": [
                    {"model": "A", "layer_range": ["H", "N"]},
                    {"model": "B", "layer_range": ["H", "N"]},
                ],
                "parameters": {"t": 0.8},
            },
        ],
        "parameters": {"t": [0.1, 0.9]},
    },
    "task-arithmetic": {
        "merge_method": "task_arithmetic",
        "base_model": "A",
        "models": [
            {"model": "B", "parameters": {"weight": 0.6}},
            {"model": "C", "parameters": {"weight": [0.2, 0.8]}},
        ],
        "parameters": {"lambda": 0.9},
    },
    "ties": {
        "merge_method": "ties",
        "base_model": "A",
        "models": [
            {"model": "B", "parameters": {"weight": 0.5, "density": 0.5}},
            {"model": "C", "parameters": {"weight": 0.8, "density": [0.3, 0.9]}},
        ],
    },
    "ties-yaml11-numbers-bool-gradient": {  # what PyYAML gives for `1e-1`; 0/1 as booleans
        "merge_method": "ties",
        "base_model": "A",
        "models": [
            {"model": "B", "parameters": {"weight": "7e-1", "density": "5e-1"}},
            {"model": "C", "parameters": {"weight": 0.5, "density": ["3e-1", 0.9]}},
        ],
        "parameters": {"normalize": [0, 1], "lambda": "9e-1"},
    },
    "ties-unnormalised-rescaled": {
        "merge_method": "ties",
        "base_model": "A",
        "models": [
            {"model": "B", "parameters": {"weight": 1.0, "density": 0.4}},
            {"model": "C", "parameters": {"weight": 0.5, "density": 0.6}},
        ],
        "parameters": {"normalize": False, "rescale": True},
    },
    "dare-ties-dense": {
        "merge_method": "dare_ties",
        "base_model": "A",
        "models": [
            {"model": "B", "parameters": {"weight": 0.7, "density": 1.0}},
            {"model": "C", "parameters": {"weight": 0.4, "density": 1.0}},
        ],
    },
    "dare-linear-dense": {
        "merge_method": "dare_linear",
        "base_model": "A",
        "models": [
            {"model": "B", "parameters": {"weight": 0.7}},
            {"model": "C", "parameters": {"weight": 0.4}},
        ],
        "parameters": {"normalize": True},
    },
    "passthrough-scaled": {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": "A", "layer_range": [0, "H"], "parameters": {"scale": 0.5}}]},
            {"sources": [{"model": "B", "layer_range": ["H", "N"]}], "parameters": {"scale": 2}},
        ],
    },
    "passthrough-stack": {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": "A", "layer_range": [0, "N"]}]},
            {"sources": [{"model": "B", "layer_range": [1, "N"]}]},
        ],
    },
}


def _weighted(*models_and_weights, **extra) -> list[dict]:
    return [{"model": m, "parameters": {"weight": w, **extra}} for m, w in models_and_weights]


RECIPES.update(
    {
        "nuslerp-weights": {
            "merge_method": "nuslerp",
            "models": _weighted(("A", 0.3), ("B", 0.7)),
        },
        "nuslerp-base-row-wise": {
            "merge_method": "nuslerp",
            "base_model": "C",
            "models": _weighted(("A", 1.0), ("B", [0.5, 2.0])),
            "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        },
        "nuslerp-columns": {
            "merge_method": "nuslerp",
            "models": _weighted(("A", 2.0), ("B", 1.0)),
            "parameters": {"nuslerp_flatten": False},
        },
        "multislerp": {
            "merge_method": "multislerp",
            "models": _weighted(("A", 0.2), ("B", 0.3), ("C", 0.5)),
        },
        "multislerp-base-unnormalised": {
            "merge_method": "multislerp",
            "base_model": "A",
            "models": _weighted(("B", 0.4), ("C", [0.2, 0.8])),
            "parameters": {"normalize_weights": False},
        },
        "karcher": {
            "merge_method": "karcher",
            "models": [{"model": "A"}, {"model": "B"}, {"model": "C"}],
        },
        "karcher-base-not-listed": {
            "merge_method": "karcher",
            "base_model": "A",
            "models": [{"model": "B"}, {"model": "C"}],
            "parameters": {"max_iter": 3, "tol": 1e-6},
        },
        "model-stock": {
            "merge_method": "model_stock",
            "base_model": "A",
            "models": [{"model": "B"}, {"model": "C"}],
        },
        "model-stock-filter-wise": {
            "merge_method": "model_stock",
            "base_model": "A",
            "models": [{"model": "A"}, {"model": "B"}, {"model": "C"}],
            "parameters": {"filter_wise": True},
        },
        "breadcrumbs": {
            "merge_method": "breadcrumbs",
            "base_model": "A",
            "models": _weighted(("B", 0.6), ("C", 0.4), density=0.7, gamma=0.05),
        },
        "breadcrumbs-ties-gradient": {
            "merge_method": "breadcrumbs_ties",
            "base_model": "A",
            "models": _weighted(("B", 1.0), ("C", 0.5), density=[0.3, 0.9]),
            "parameters": {"normalize": True, "rescale": True},
        },
        "sce": {
            "merge_method": "sce",
            "base_model": "A",
            "models": [{"model": "B"}, {"model": "C"}],
        },
        "sce-select-topk": {
            "merge_method": "sce",
            "base_model": "A",
            "models": [{"model": "B"}, {"model": "C"}],
            "parameters": {"select_topk": 0.4},
        },
        "nearswap": {
            "merge_method": "nearswap",
            "base_model": "A",
            "models": [{"model": "A"}, {"model": "B"}],
            "parameters": {"t": [0.05, 0.5]},
        },
        "arcee-fusion": {
            "merge_method": "arcee_fusion",
            "base_model": "A",
            "models": [{"model": "B"}],
        },
        "ram": {
            "merge_method": "ram",
            "base_model": "A",
            "models": [{"model": "B"}, {"model": "C"}],
            "parameters": {"epsilon": 0.4},
        },
        "ramplus-tl": {
            "merge_method": "ramplus_tl",
            "base_model": "A",
            "models": [{"model": "B"}, {"model": "C"}],
            "parameters": {"epsilon": 0.4, "r": 0.5, "alpha": 0.3},
        },
    }
)


def _bind(recipe: dict, models: dict[str, Path]) -> dict:
    """Replace the placeholders A, B, C by model folders, N by A's layer count and H by half."""
    text = json.dumps(recipe)
    layers = config_num_layers(json.loads((models["A"] / "config.json").read_text()))
    text = text.replace('"N"', str(layers)).replace('"H"', str(max(1, layers // 2)))
    for placeholder, folder in models.items():
        text = text.replace(f'"{placeholder}"', json.dumps(str(folder)))
    bound = json.loads(text)
    bound["dtype"] = "float32"
    return bound


def _mergekit(recipe: dict, output: Path) -> None:
    configuration = mergekit_config.MergeConfiguration.model_validate(copy.deepcopy(recipe))
    options = mergekit_options.MergeOptions(
        write_model_card=False, copy_tokenizer=False, random_seed=0, lazy_unpickle=False
    )
    mergekit_merge.run_merge(configuration, str(output), options=options)


def _assert_same(ours: Path, theirs: Path) -> None:
    mine, reference = load_model_tensors(ours), load_model_tensors(theirs)
    assert set(mine) == set(reference)
    for name, tensor in reference.items():
        assert mine[name].shape == tensor.shape, name
        assert mine[name].dtype == tensor.dtype, name
        difference = (mine[name].double() - tensor.double()).abs().max().item()
        assert difference <= TOLERANCE, f"{name}: max |difference| {difference:.3g}"
    our_config = json.loads((ours / "config.json").read_text())
    their_config = json.loads((theirs / "config.json").read_text())
    assert config_num_layers(our_config) == config_num_layers(their_config)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("case", sorted(RECIPES))
def test_matches_mergekit(case, preset, tiny_model_trio, tmp_path):
    if case == "passthrough-stack" and preset == "qwen2":
        pytest.skip(
            "mergekit 0.1.5 cannot write a Qwen2 config whose layer count changes (its "
            "layer_types list keeps the old length); test_stacked_qwen2_loads covers mergemed"
        )
    base, first, second = tiny_model_trio(preset)
    recipe = _bind(RECIPES[case], {"A": base, "B": first, "C": second})
    _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    _assert_same(tmp_path / "mergemed", tmp_path / "mergekit")


@pytest.fixture(scope="module")
def gpt2_trio(tmp_path_factory, tiny_tokenizer_dir) -> tuple[Path, Path, Path]:
    """Three tiny GPT-2 models (blocks named ``transformer.h.<i>``, not ``layers``): a base and
    two 0.5 perturbations of it."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from mergemed.testing import make_random_model

    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=512, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder / "base")
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(folder / "base")
    others = [
        make_random_model(
            folder / f"other-{seed}", base_dir=folder / "base", seed=seed, perturbation=0.5
        )
        for seed in (1, 2)
    ]
    return folder / "base", others[0], others[1]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RECIPES))
def test_gpt2_blocks_match_mergekit(case, gpt2_trio, tmp_path):
    """GPT-2's blocks are ``transformer.h.<i>``: gradients and slices must place them as
    mergekit does (they were once merged by name, every block at t of the first anchor)."""
    recipe = _bind(RECIPES[case], dict(zip("ABC", gpt2_trio, strict=True)))
    if case == "multislerp":
        with pytest.raises(ValueError, match="weighted sum of the input tensors is zero"):
            _mergekit(recipe, tmp_path / "mergekit")
        merge(_recipe_object(recipe), tmp_path / "mergemed")
        # GPT-2's biases start at zero in all three models: their barycentre is zero.
        merged = load_model_tensors(tmp_path / "mergemed")
        assert not merged["transformer.h.0.attn.c_attn.bias"].any()
        return
    _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    _assert_same(tmp_path / "mergemed", tmp_path / "mergekit")


def test_streamed_slices_match_mergekit(tiny_model_trio, tmp_path):
    """Merging in slices of 1,000 elements (two passes for SLERP) changes nothing."""
    base, first, _ = tiny_model_trio("llama")
    recipe = _bind(RECIPES["slerp-gradient-filters"], {"A": base, "B": first})
    _mergekit(recipe, tmp_path / "mergekit")
    result = merge(_recipe_object(recipe), tmp_path / "mergemed", chunk_elements=1000)
    assert result.report["streamed_tensors"] > 0
    _assert_same(tmp_path / "mergemed", tmp_path / "mergekit")


@pytest.mark.parametrize("case", ["ties", "ties-unnormalised-rescaled"])
def test_sparsified_tensors_are_never_cut_into_slices(case, tiny_model_trio, tmp_path):
    """TIES keeps the top entries of a whole task vector: a tensor larger than the slice size
    must still be sparsified whole (a bug once applied the threshold slice by slice)."""
    base, first, second = tiny_model_trio("llama")
    recipe = _bind(RECIPES[case], {"A": base, "B": first, "C": second})
    _mergekit(recipe, tmp_path / "mergekit")
    result = merge(_recipe_object(recipe), tmp_path / "mergemed", chunk_elements=1000)
    assert result.report["streamed_tensors"] == 0
    _assert_same(tmp_path / "mergemed", tmp_path / "mergekit")


def test_tied_embeddings_match_mergekit(tiny_model_pair, tmp_path):
    base, first = tiny_model_pair("llama-tied")
    recipe = _bind(RECIPES["slerp-gradient-filters"], {"A": base, "B": first})
    _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    _assert_same(tmp_path / "mergemed", tmp_path / "mergekit")


def _recipe_object(recipe: dict):
    from mergemed.recipe import load_recipe

    return load_recipe(recipe)


def test_stacked_qwen2_loads(tiny_model_pair, tmp_path):
    """Stacking layers rewrites per-layer config lists (layer_types) so transformers loads it."""
    from transformers import AutoModelForCausalLM

    base, first = tiny_model_pair("qwen2")
    recipe = _bind(RECIPES["passthrough-stack"], {"A": base, "B": first})
    merge(_recipe_object(recipe), tmp_path / "stacked")
    config = json.loads((tmp_path / "stacked" / "config.json").read_text())
    layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    assert config["num_hidden_layers"] == 2 * layers - 1
    assert len(config["layer_types"]) == config["num_hidden_layers"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "stacked")
    source = load_model_tensors(first)
    # Output layer `layers` is source layer 1 of the second model.
    stacked = dict(model.named_parameters())
    name = f"model.layers.{layers}.mlp.down_proj.weight"
    assert torch.equal(stacked[name].detach(), source["model.layers.1.mlp.down_proj.weight"])


def _restored(source: Path, folder: Path, dtype_of) -> Path:
    """A copy of ``source`` whose tensors are stored in ``dtype_of(name)``."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.json"))
    shutil.copy(source / "config.json", folder / "config.json")
    tensors = {n: t.to(dtype_of(n)).contiguous() for n, t in load_model_tensors(source).items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _bf16_with_fp32_norms(name: str) -> torch.dtype:
    return torch.float32 if "norm" in name else torch.bfloat16


@pytest.mark.parametrize("other_dtype", ["float32", "mixed"])
def test_mixed_precision_parents_without_dtype_follow_mergekit(
    other_dtype, tiny_model_pair, tmp_path
):
    """No ``dtype`` key: each tensor takes the promotion of its parents' dtypes, as in mergekit
    (once every tensor took the first planned tensor's bf16, norms included)."""
    base, first = tiny_model_pair("llama")
    base = _restored(base, tmp_path / "base", _bf16_with_fp32_norms)
    other_rule = _bf16_with_fp32_norms if other_dtype == "mixed" else lambda _: torch.float32
    first = _restored(first, tmp_path / "first", other_rule)
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(base), "parameters": {"weight": 0.3}},
            {"model": str(first), "parameters": {"weight": 0.7}},
        ],
    }
    _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    mine, reference = (
        load_model_tensors(tmp_path / "mergemed"),
        load_model_tensors(tmp_path / "mergekit"),
    )
    assert set(mine) == set(reference)
    for name, tensor in reference.items():
        assert mine[name].dtype == tensor.dtype, name
        tolerance = 1e-6 if tensor.dtype == torch.float32 else 1e-2
        torch.testing.assert_close(
            mine[name].float(), tensor.float(), rtol=tolerance, atol=tolerance
        )
    dtypes = {t.dtype for t in mine.values()}
    assert dtypes == (
        {torch.float32} if other_dtype == "float32" else {torch.float32, torch.bfloat16}
    )
