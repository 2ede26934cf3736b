"""Shared fixtures: tiny random-weight models made once per test session, never downloaded."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections.abc import Callable
from pathlib import Path

import pytest

from mergemed.testing import build_tokenizer, make_random_model

TINY_PRESETS = ("llama", "qwen2", "mistral")
"""The tiny architectures every merge method should be tested on."""

PAIR_PERTURBATION = 0.5
"""Relative size of the noise that separates the models of a pair or trio from their base."""


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the 512-token byte-level BPE tokenizer the tiny models share."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def _tiny_models(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path
) -> Callable[[str, int], Path]:
    """``model(preset, index)``: index 0 is a fresh base (seed 0), index k > 0 is that base
    perturbed by ``PAIR_PERTURBATION`` with seed k. Each model is made once per session."""
    cache: dict[tuple[str, int], Path] = {}

    def model(preset: str, index: int) -> Path:
        key = (preset, index)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{preset}-{index}")
            if index == 0:
                make_random_model(folder, preset, seed=0, tokenizer_dir=tiny_tokenizer_dir)
            else:
                make_random_model(
                    folder,
                    base_dir=model(preset, 0),
                    seed=index,
                    perturbation=PAIR_PERTURBATION,
                )
            cache[key] = folder
        return cache[key]

    return model


@pytest.fixture(scope="session")
def tiny_model_pair(_tiny_models: Callable[[str, int], Path]) -> Callable[[str], tuple[Path, Path]]:
    """Factory: ``tiny_model_pair("qwen2")`` -> ``(base_dir, other_dir)``.

    ``other_dir`` is the base perturbed by 0.5 of each tensor's spread (seed 1): the two are
    correlated like a fine-tune and its parent. Presets: ``"llama"``, ``"llama-tied"``,
    ``"qwen2"``, ``"mistral"``. Folders are shared by the whole session: do not modify them.
    """

    def pair(preset: str = "llama") -> tuple[Path, Path]:
        return _tiny_models(preset, 0), _tiny_models(preset, 1)

    return pair


@pytest.fixture(scope="session")
def tiny_model_trio(
    _tiny_models: Callable[[str, int], Path],
) -> Callable[[str], tuple[Path, Path, Path]]:
    """Factory: ``tiny_model_trio("llama")`` -> ``(base_dir, first_dir, second_dir)``.

    ``base_dir`` and ``first_dir`` are the same folders as ``tiny_model_pair``'s; ``second_dir``
    is another 0.5 perturbation of the base (seed 2), for methods that merge two models onto
    a base (task arithmetic, TIES, DARE).
    """

    def trio(preset: str = "llama") -> tuple[Path, Path, Path]:
        return _tiny_models(preset, 0), _tiny_models(preset, 1), _tiny_models(preset, 2)

    return trio


@pytest.fixture(scope="session")
def tiny_eval_models(
    _tiny_models: Callable[[str, int], Path],
) -> tuple[Path, Path, Path]:
    """``(instruct, clinical, other)``: three "llama-eval" models (head size 64, 4096
    positions, the tiny tokenizer with its chat template) for evaluation tests: a base and two
    0.5 perturbations of it. Shared by the session: do not modify them."""
    return (
        _tiny_models("llama-eval", 0),
        _tiny_models("llama-eval", 1),
        _tiny_models("llama-eval", 2),
    )
