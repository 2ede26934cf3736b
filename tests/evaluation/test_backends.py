"""Backends on their own: which folders lm-eval can load, and the lm-eval LM objects built from
the settings (a real HFLM on a tiny model; vLLM without vLLM names the extra)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from mergemed.errors import MergemedError
from mergemed.evaluation.backends import check_model_folder, load_in_memory_model, make_lm
from mergemed.evaluation.settings import BackendSettings


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "no config.json"),
        ("model.safetensors", "no weights"),
        ("tokenizer", "no tokenizer"),
    ],
)
def test_incomplete_folders_are_named(tiny_eval_models, tmp_path: Path, remove, message) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_eval_models[0], folder)
    check_model_folder(folder)
    if remove == "tokenizer":
        for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"):
            (folder / name).unlink(missing_ok=True)
    else:
        (folder / remove).unlink()
    with pytest.raises(MergemedError, match=message) as caught:
        check_model_folder(folder)
    assert str(folder) in str(caught.value)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(MergemedError, match="model folder not found"):
        check_model_folder(tmp_path / "absent")


def test_hflm_gets_the_settings(tiny_eval_models) -> None:
    pytest.importorskip("lm_eval")
    settings = BackendSettings(device="cpu", dtype="float32", batch_size=3, max_length=64)
    lm = make_lm(settings, folder=tiny_eval_models[0])
    assert lm.batch_size == 3 and lm.max_length == 64
    assert next(lm.model.parameters()).dtype == torch.float32
    assert str(lm.device) == "cpu"


def test_extra_arguments_reach_the_model_class(tiny_eval_models) -> None:
    pytest.importorskip("lm_eval")
    settings = BackendSettings(device="cpu", batch_size=2, extra={"max_batch_size": 5})
    lm = make_lm(settings, folder=tiny_eval_models[0])
    assert lm.max_batch_size == 5


def test_a_model_in_memory_equals_the_same_weights_from_disk(tiny_eval_models) -> None:
    from transformers import AutoModelForCausalLM

    from mergemed.engine import merge_to_memory

    folder = tiny_eval_models[0]
    recipe = folder.parent / "identity-recipe.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {folder}\n    parameters:\n      weight: 1.0\n"
    )
    merged = merge_to_memory(recipe)
    try:
        in_memory = load_in_memory_model(merged, "cpu")
        from_disk = AutoModelForCausalLM.from_pretrained(folder).eval()
        ids = torch.tensor([[1, 5, 9, 13, 2]])
        with torch.no_grad():
            assert torch.allclose(in_memory(ids).logits, from_disk(ids).logits, atol=1e-6)
    finally:
        merged.cleanup()


def test_vllm_without_vllm_names_the_extra(tiny_eval_models) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; tests/evaluation/test_vllm_backend.py runs it")
    with pytest.raises(MergemedError, match=r"mergemed\[vllm\]"):
        make_lm(BackendSettings(backend="vllm"), folder=tiny_eval_models[0])
