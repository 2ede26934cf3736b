"""The oracle test: mergemed's output equals mergekit 0.1.5's on the same inputs (fp32, 1e-6).

mergekit runs in-process through its own ``run_merge``; mergemed through ``mergemed.merge``.
Every method and schedule form (scalar, gradient, filter rules, per-model values, slices) is
checked on tiny Llama-, Qwen2-, Mistral-, Gemma- and GPT-2-shaped models, and LLaVA-shaped
ones (a vision tower's block list beside the language model's).
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
@pytest.mark.parametrize("preset", ["llama", "qwen2", "mistral", "gemma"])
@pytest.mark.parametrize("case", sorted(RECIPES))
def test_matches_mergekit(case, preset, tiny_model_trio, tmp_path):
    if case == "passthrough-stack" and preset == "qwen2":
        pytest.skip(
            "mergekit 0.1.5 cannot write a Qwen2 config whose layer count changes (its "
            "layer_types list keeps the old length); test_stacked_qwen2_loads covers mergemed"
        )
    base, first, second = tiny_model_trio(preset)
    recipe = _bind(RECIPES[case], {"A": base, "B": first, "C": second})
    if case == "multislerp" and preset == "gemma":
        _zero_tensors_refused_by_mergekit(recipe, tmp_path, "model.layers.0.input_layernorm.weight")
        return
    _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    _assert_same(tmp_path / "mergemed", tmp_path / "mergekit")


def _zero_tensors_refused_by_mergekit(recipe: dict, tmp_path: Path, zero_tensor: str) -> None:
    """Multi-SLERP of tensors that are zero in every model (GPT-2's biases, Gemma's norms
    before training): mergekit 0.1.5 stops with an error, mergemed gives their barycentre,
    zero, and merges everything else."""
    with pytest.raises(ValueError, match="weighted sum of the input tensors is zero"):
        _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    merged = load_model_tensors(tmp_path / "mergemed")
    assert not merged[zero_tensor].any()
    assert all(t.isfinite().all() for t in merged.values())


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
        _zero_tensors_refused_by_mergekit(recipe, tmp_path, "transformer.h.0.attn.c_attn.bias")
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


LLAVA_RENAMES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def _llava(folder: Path, *, stored_names: str) -> Path:
    """A tiny LLaVA (2 language layers, 3 CLIP vision layers: two block lists that both end
    in ``self_attn.q_proj.weight``), stored under transformers' current names (``"model"``:
    ``model.language_model.*``) or the older ones it saves and converts on load
    (``"legacy"``: ``language_model.model.*``)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration as Llava

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=4,
        num_hidden_layers=3,
        num_attention_heads=2,
        hidden_size=64,
        intermediate_size=128,
    )
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_hidden_layers=2,
    )
    Llava(LlavaConfig(vision_config=vision, text_config=text, image_seq_length=16)).save_pretrained(
        folder
    )
    if stored_names == "model":
        tensors = load_model_tensors(folder)
        renamed = {}
        for name, tensor in tensors.items():
            for old, new in LLAVA_RENAMES:
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
            renamed[name] = tensor.contiguous()
        save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def llava_trio(tmp_path_factory):
    """Per naming scheme: a tiny LLaVA base and two 0.5 perturbations of it."""
    from mergemed.testing import make_random_model

    made = {}

    def trio(stored_names: str) -> tuple[Path, Path, Path]:
        if stored_names not in made:
            folder = tmp_path_factory.mktemp(f"llava-{stored_names}")
            base = _llava(folder / "base", stored_names=stored_names)
            others = [
                make_random_model(folder / f"o{s}", base_dir=base, seed=s, perturbation=0.5)
                for s in (1, 2)
            ]
            made[stored_names] = (base, *others)
        return made[stored_names]

    return trio


def _loads_cleanly(folder: Path) -> dict:
    """Load ``folder`` with the class its config names; no key may be missing or unexpected.
    Returns the loaded model's config."""
    import transformers

    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, architecture).from_pretrained(
        folder, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.config.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(c for c in RECIPES if "slices" not in RECIPES[c]))
def test_llava_matches_mergekit(case, llava_trio, tmp_path):
    """Every method on a model with two block lists whose tensor names end alike: each list
    is indexed on its own (gradients run over each list's blocks) and nothing is dropped."""
    recipe = _bind(RECIPES[case], dict(zip("ABC", llava_trio("model"), strict=True)))
    recipe = json.loads(json.dumps(recipe).replace('"H"', "1"))
    if case == "multislerp":
        _zero_tensors_refused_by_mergekit(
            recipe,
            tmp_path,
            "model.multi_modal_projector.linear_1.bias",
        )
        return
    _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    _assert_same(tmp_path / "mergemed", tmp_path / "mergekit")
    _loads_cleanly(tmp_path / "mergemed")


def test_llava_stored_under_older_names_is_merged_whole(llava_trio, tmp_path):
    """transformers saves LLaVA as ``language_model.model.*``; mergekit 0.1.5 merges only the
    vision tower and projector of such a checkpoint (its output loads with the language model
    missing). mergemed merges all of it, and the tensors mergekit does write agree."""
    base, first, _ = llava_trio("legacy")
    recipe = _bind(RECIPES["slerp-gradient-filters"], {"A": base, "B": first})
    _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    ours, theirs = (
        load_model_tensors(tmp_path / "mergemed"),
        load_model_tensors(tmp_path / "mergekit"),
    )
    assert set(ours) == set(load_model_tensors(base))
    assert not any("language_model" in name for name in theirs)
    for name, tensor in theirs.items():
        legacy = name.removeprefix("model.")
        torch.testing.assert_close(ours[legacy], tensor, rtol=0, atol=TOLERANCE)
    _loads_cleanly(tmp_path / "mergemed")


@pytest.mark.parametrize("stored_names", ["model", "legacy"])
def test_llava_slices_stack_the_language_model(stored_names, llava_trio, tmp_path):
    """``slices`` count the language model's blocks (mergekit refuses slices on a model with
    several modules); the vision tower is kept whole, and the config says the new count."""
    base, first, _ = llava_trio(stored_names)
    recipe = _bind(RECIPES["passthrough-stack"], {"A": base, "B": first})
    with pytest.raises(RuntimeError, match="multiple modules"):
        _mergekit(recipe, tmp_path / "mergekit")
    merge(_recipe_object(recipe), tmp_path / "mergemed")
    config = _loads_cleanly(tmp_path / "mergemed")
    assert config["text_config"]["num_hidden_layers"] == 3
    assert config["vision_config"]["num_hidden_layers"] == 3


def test_llava_layer_range_that_fits_only_the_vision_tower_is_refused(llava_trio, tmp_path):
    """A layer range past the language model's 2 blocks but within the vision tower's 3 is a
    one-line error naming both lists, and nothing is written."""
    from mergemed.errors import MergeError

    base, _, _ = llava_trio("model")
    recipe = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(base), "layer_range": [0, 3]}]}],
        "dtype": "float32",
    }
    with pytest.raises(MergeError, match=r"past its 2 layers; layer ranges count the decoder"):
        merge(_recipe_object(recipe), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["llama", "llama-tied", "qwen2", "mistral", "gemma", "gpt2"])
def test_every_family_loads_whole_and_stacks_to_the_stated_count(
    family, tiny_model_pair, gpt2_trio, tmp_path
):
    """The merged output loads in transformers with no missing or unexpected key, and
    ``slices`` that stack layers give a model with the layer count its config states."""
    from mergemed.io.architecture import config_num_layers

    base, first = gpt2_trio[:2] if family == "gpt2" else tiny_model_pair(family)
    layers = config_num_layers(json.loads((base / "config.json").read_text()))
    for case in ("linear-weights", "passthrough-stack"):
        recipe = _bind(RECIPES[case], {"A": base, "B": first})
        merge(_recipe_object(recipe), tmp_path / case)
        config = _loads_cleanly(tmp_path / case)
        expected = 2 * layers - 1 if case == "passthrough-stack" else layers
        assert config_num_layers(config) == expected
        stored = {n for n in load_model_tensors(tmp_path / case) if ".0." in n or ".h.0." in n}
        assert stored, "the first block is written"


@pytest.mark.parametrize("stored_names", ["model", "legacy"])
def test_llava_output_missing_a_language_tensor_is_refused(stored_names, llava_trio):
    """The completeness check judges LLaVA too: its stored names are compared after the
    renaming transformers applies on load, so a dropped language-model tensor is an error."""
    from mergemed.engine import prepare_merge
    from mergemed.engine.completeness import check_output_complete
    from mergemed.engine.output import output_config
    from mergemed.errors import MergeError

    base, first, _ = llava_trio(stored_names)
    recipe = _recipe_object(_bind(RECIPES["linear-weights"], {"A": base, "B": first}))
    with prepare_merge(recipe) as job:
        config = output_config(job)
        check_output_complete(job, config)
        job.plan.tasks = [
            t
            for t in job.plan.tasks
            if not ("language_model" in t.name and "layers.1.self_attn.q_proj" in t.name)
        ]
        with pytest.raises(MergeError, match=r"lack 1 tensors .*language_model.layers.1"):
            check_output_complete(job, config)
