"""A merge prepared once and replanned for other recipes over the same models gives, tensor for
tensor, what a fresh merge of each recipe gives; and the set-up is shared, not redone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import load_model_tensors
from transformers import AutoTokenizer

from mergemed.engine import (
    MergeOptions,
    PipelineSettings,
    merge,
    merge_job_to_memory,
    merge_to_memory,
    prepare_merge,
)
from mergemed.errors import MergeError
from mergemed.recipe import Recipe, load_recipe
from mergemed.testing import make_random_model


def linear(a: Path, b: Path, weight: float, **extra) -> Recipe:
    return load_recipe(
        {
            "merge_method": "linear",
            "models": [
                {"model": str(a), "parameters": {"weight": weight}},
                {"model": str(b), "parameters": {"weight": 1 - weight}},
            ],
            **extra,
        }
    )


def slerp(a: Path, b: Path, t: list[float] | float) -> Recipe:
    return load_recipe(
        {
            "merge_method": "slerp",
            "base_model": str(a),
            "models": [{"model": str(a)}, {"model": str(b)}],
            "parameters": {"t": t},
        }
    )


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert set(first) == set(second)
    for name, tensor in first.items():
        assert second[name].dtype == tensor.dtype, name
        assert torch.equal(second[name], tensor), name


def fresh(recipe: Recipe, **options) -> dict[str, torch.Tensor]:
    merged = merge_to_memory(recipe, **options)
    merged.cleanup()
    return merged.state_dict


@pytest.mark.parametrize("chunk_elements", [1 << 24, 700])
def test_replanned_merges_equal_fresh_merges(tiny_model_trio, chunk_elements: int) -> None:
    base, first, second = tiny_model_trio("llama")
    candidates = [
        slerp(base, first, 0.5),
        slerp(base, first, [0.1, 0.9, 0.3]),
        linear(first, base, 0.25),
        load_recipe(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(base),
                "models": [
                    {"model": str(first), "parameters": {"weight": 0.7}},
                    {"model": str(second), "parameters": {"weight": [0.2, 0.9]}},
                ],
            }
        ),
    ]
    everything = load_recipe(
        {
            "merge_method": "linear",
            "models": [
                {"model": str(m), "parameters": {"weight": 1}} for m in (base, first, second)
            ],
        }
    )
    settings = PipelineSettings(chunk_elements=chunk_elements)
    with prepare_merge(everything) as job:
        for recipe in candidates:
            replanned = job.replan(recipe)
            assert not replanned.owns_checkpoints
            for reference, checkpoint in replanned.checkpoints.items():
                assert checkpoint is job.checkpoints[reference]
            merged = merge_job_to_memory(replanned, settings)
            try:
                expected = fresh(recipe, chunk_elements=chunk_elements)
                assert_same_tensors(expected, merged.state_dict)
                assert (merged.folder / "config.json").is_file()
                assert merged.recipe == replanned.recipe
            finally:
                merged.cleanup()


def test_a_job_merged_to_memory_equals_the_written_merge(tiny_model_pair, tmp_path: Path) -> None:
    base, first = tiny_model_pair("qwen2")
    recipe = slerp(base, first, [0.2, 0.8])
    with prepare_merge(recipe) as job:
        merged = merge_job_to_memory(job)
    merge(recipe, tmp_path / "out")
    assert_same_tensors(load_model_tensors(tmp_path / "out"), merged.state_dict)
    written = (tmp_path / "out" / "recipe.yaml").read_text()
    assert (merged.folder / "recipe.yaml").read_text() == written
    merged.cleanup()


@pytest.fixture(scope="module")
def different_vocabularies(tmp_path_factory, tiny_tokenizer_dir) -> tuple[Path, Path]:
    """Two tiny Llama models: the shared tokenizer, and it plus two added tokens."""
    root = tmp_path_factory.mktemp("vocabularies")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_tokens(["<lab_value>", "<dose>"])
    tokenizer.save_pretrained(root / "tokenizer-b")
    a = make_random_model(root / "a", "llama", seed=0, tokenizer_dir=tiny_tokenizer_dir)
    b = make_random_model(root / "b", "llama", seed=1, tokenizer_dir=root / "tokenizer-b")
    return a, b


def test_replanning_reuses_the_alignment_when_the_tokenizer_settings_match(
    different_vocabularies,
) -> None:
    a, b = different_vocabularies
    union = {"tokenizer": {"source": "union"}}
    with prepare_merge(linear(a, b, 0.3, **union)) as job:
        assert job.alignment is not None
        same_settings = job.replan(linear(a, b, 0.8, **union))
        assert same_settings.alignment is job.alignment
        other_settings = job.replan(linear(a, b, 0.8, tokenizer={"source": str(b)}))
        assert other_settings.alignment is not job.alignment
        for replanned, recipe in (
            (same_settings, linear(a, b, 0.8, **union)),
            (other_settings, linear(a, b, 0.8, tokenizer={"source": str(b)})),
        ):
            merged = merge_job_to_memory(replanned)
            assert_same_tensors(fresh(recipe), merged.state_dict)
            merged.cleanup()


def test_replanning_for_other_models_is_refused(tiny_model_trio) -> None:
    base, first, second = tiny_model_trio("llama")
    with prepare_merge(slerp(base, first, 0.5)) as job, pytest.raises(MergeError) as caught:
        job.replan(linear(base, second, 0.5))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"replan: {str(second)!r} not among the prepared models")


def test_a_recipe_path_finds_models_beside_it(tiny_model_pair, tmp_path: Path) -> None:
    base, first = tiny_model_pair("llama")
    shutil.copytree(base, tmp_path / "parents" / "a")
    shutil.copytree(first, tmp_path / "parents" / "b")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "merge_method: slerp\nbase_model: parents/a\n"
        "models: [{model: parents/a}, {model: parents/b}]\nparameters: {t: 0.5}\n"
    )
    with prepare_merge(recipe, options=MergeOptions(allow_pickle=False)) as job:
        assert job.options.search_dirs == (tmp_path.absolute(),)
        assert job.checkpoints["parents/a"].folder == (tmp_path / "parents" / "a").resolve()
        assert job.output_dtype == torch.float32 and job.input_dtype is None


def test_a_bad_device_is_refused_before_any_model_is_opened(tmp_path: Path) -> None:
    recipe = linear(tmp_path / "absent-a", tmp_path / "absent-b", 0.5)
    with pytest.raises(MergeError, match="--device tpu: expected cpu or cuda"):
        prepare_merge(recipe, options=MergeOptions(device="tpu"))


def test_a_candidate_reuses_the_tensors_it_shares_with_the_previous_one(tiny_model_pair) -> None:
    base, other = tiny_model_pair("llama")
    first = load_recipe(
        {
            "merge_method": "slerp",
            "base_model": str(base),
            "models": [{"model": str(base)}, {"model": str(other)}],
            "parameters": {"t": [{"filter": "mlp", "value": [0, 1]}, {"value": 0.3}]},
        }
    )
    second = first.model_copy(deep=True)
    second.parameters["t"][0].value = [1, 0]  # only the MLPs change
    with prepare_merge(first) as job:
        a = merge_job_to_memory(job)
        b = merge_job_to_memory(job.replan(second), reuse=a)
        again = merge_job_to_memory(job.replan(second), reuse=b)
    for merged in (a, b, again):
        merged.cleanup()
    assert_same_tensors(b.state_dict, fresh(second))
    mlp = [name for name in b.state_dict if ".mlp." in name]
    assert mlp and b.reused == len(b.state_dict) - len(mlp)
    for name in b.state_dict:
        assert (b.state_dict[name] is a.state_dict[name]) == (".mlp." not in name), name
    assert again.reused == len(again.state_dict)  # the same candidate twice: nothing recomputed
    assert_same_tensors(again.state_dict, b.state_dict)


def test_stochastic_methods_reuse_only_under_the_same_seed(tiny_model_pair) -> None:
    base, other = tiny_model_pair("llama")

    def dare(seed: int) -> Recipe:
        return load_recipe(
            {
                "merge_method": "dare_linear",
                "base_model": str(base),
                "models": [
                    {"model": str(other), "parameters": {"weight": 1.0, "density": 0.5}},
                ],
                "random_seed": seed,
            }
        )

    with prepare_merge(dare(1)) as job:
        a = merge_job_to_memory(job)
        same = merge_job_to_memory(job.replan(dare(1)), reuse=a)
        other_seed = merge_job_to_memory(job.replan(dare(2)), reuse=a)
    for merged in (a, same, other_seed):
        merged.cleanup()
    assert same.reused == len(same.state_dict)
    floating = [n for n, t in a.state_dict.items() if t.is_floating_point()]
    assert other_seed.reused < len(floating)
    assert_same_tensors(other_seed.state_dict, fresh(dare(2)))


def test_an_output_missing_tensors_its_config_needs_is_refused(tiny_model_pair) -> None:
    """Whatever the cause, a plan that leaves out a tensor transformers expects for the output
    config is an error before any weight is read, never a model with random weights."""
    from mergemed.engine.completeness import check_output_complete
    from mergemed.engine.output import output_config

    base, other = tiny_model_pair("llama")
    with prepare_merge(linear(base, other, 0.5)) as job:
        config = output_config(job)
        check_output_complete(job, config)  # complete: no error
        job.plan.tasks = [
            t for t in job.plan.tasks if t.name != "model.layers.1.mlp.up_proj.weight"
        ]
        with pytest.raises(
            MergeError, match=r"lack 1 tensors .*'model.layers.1.mlp.up_proj.weight'"
        ):
            check_output_complete(job, config)


def test_an_output_holding_tensors_its_config_does_not_count_is_refused(tiny_model_pair) -> None:
    """A plan writing more blocks than the output config counts (a layer count written to the
    wrong key) would have transformers drop them on load: refused before any weight is read."""
    from mergemed.engine.completeness import check_output_complete
    from mergemed.engine.output import output_config

    base, other = tiny_model_pair("llama")
    with prepare_merge(linear(base, other, 0.5)) as job:
        config = output_config(job)
        config["num_hidden_layers"] -= 1
        with pytest.raises(MergeError, match=r"would hold 9 tensors its config does not describe"):
            check_output_complete(job, config)
