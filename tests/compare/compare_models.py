"""The models the inspect tests compare, and torch's numbers on whole tensors to check against.

The models are a 4-layer tiny Llama ("parent": the session's 2-layer one with two more layers)
and copies of it edited on disk: one where only layer 2's MLP moved, two 0.5 perturbations (for
task vectors), tied copies, one with a larger vocabulary, one with a tensor added, removed and
reshaped, one with a NaN, one with a layer fewer, and two whose configs name another
architecture or width.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import load_model_tensors
from safetensors.torch import save_file

from mergemed.testing import make_random_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MLP_COLUMNS = ("gate", "up", "down")
SMALL_CHUNK = 1000
"""Elements per slice in most tests: every weight matrix of the tiny models is cut in slices."""


def edited_copy(
    source: Path,
    destination: Path,
    edit: Callable[[dict[str, torch.Tensor]], None] | None = None,
    config: dict | None = None,
) -> Path:
    """Copy a model folder; ``edit`` changes its tensors in place, ``config`` its config keys."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("*.safetensors*"))
    tensors = load_model_tensors(source)
    if edit is not None:
        edit(tensors)
    save_file(tensors, destination / "model.safetensors", metadata={"format": "pt"})
    if config:
        path = destination / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}, indent=2))
    return destination


def change_layer_2_mlp(tensors: dict[str, torch.Tensor]) -> None:
    generator = torch.Generator().manual_seed(7)
    for column in MLP_COLUMNS:
        name = f"model.layers.2.mlp.{column}_proj.weight"
        noise = torch.randn(tensors[name].shape, generator=generator, dtype=tensors[name].dtype)
        tensors[name] = tensors[name] + 0.2 * tensors[name].std() * noise


def grow_vocabulary(tensors: dict[str, torch.Tensor]) -> None:
    generator = torch.Generator().manual_seed(8)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = torch.randn((8, tensors[name].shape[1]), generator=generator) * 0.02
        tensors[name] = torch.cat([tensors[name], extra.to(tensors[name].dtype)])


def add_remove_reshape(tensors: dict[str, torch.Tensor]) -> None:
    tensors["model.extra.weight"] = torch.ones(4)
    del tensors["model.norm.weight"]
    name = "model.layers.1.mlp.gate_proj.weight"
    tensors[name] = tensors[name][:-1].contiguous()


def add_layers_2_and_3(tensors: dict[str, torch.Tensor]) -> None:
    """Turn a 2-layer model into a 4-layer one: layers 2 and 3 are noisy copies of 0 and 1."""
    generator = torch.Generator().manual_seed(9)
    for name in [n for n in tensors if n.startswith(("model.layers.0.", "model.layers.1."))]:
        layer = int(name.split(".")[2])
        values = tensors[name]
        noise = torch.randn(values.shape, generator=generator, dtype=values.dtype)
        copy = values + 0.5 * values.std().nan_to_num(0.02).clamp(min=0.02) * noise
        tensors[name.replace(f"layers.{layer}.", f"layers.{layer + 2}.", 1)] = copy


def poison_layer_0_q(tensors: dict[str, torch.Tensor]) -> None:
    tensors["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")


def drop_layer_3(tensors: dict[str, torch.Tensor]) -> None:
    for name in [n for n in tensors if n.startswith("model.layers.3.")]:
        del tensors[name]


class Models:
    """The folders every test here uses (made once per test session)."""

    def __init__(self, root: Path, tiny_llama: Path):
        self.parent = edited_copy(
            tiny_llama, root / "parent", add_layers_2_and_3, {"num_hidden_layers": 4}
        )
        self.layer_2_mlp = edited_copy(self.parent, root / "layer-2-mlp", change_layer_2_mlp)
        self.first = make_random_model(
            root / "first", base_dir=self.parent, seed=1, perturbation=0.5
        )
        self.second = make_random_model(
            root / "second", base_dir=self.parent, seed=2, perturbation=0.5
        )
        self.tied = edited_copy(
            self.parent,
            root / "tied",
            lambda t: t.pop("lm_head.weight"),
            config={"tie_word_embeddings": True},
        )
        self.tied_with_copy = edited_copy(
            self.parent, root / "tied-with-copy", config={"tie_word_embeddings": True}
        )
        vocabulary = json.loads((self.parent / "config.json").read_text())["vocab_size"]
        self.bigger_vocabulary = edited_copy(
            self.first, root / "bigger-vocabulary", grow_vocabulary, {"vocab_size": vocabulary + 8}
        )
        self.edited_names = edited_copy(self.parent, root / "edited-names", add_remove_reshape)
        self.with_nan = edited_copy(self.parent, root / "with-nan", poison_layer_0_q)
        self.three_layers = edited_copy(
            self.parent, root / "three-layers", drop_layer_3, {"num_hidden_layers": 3}
        )
        self.qwen_config = edited_copy(
            self.parent,
            root / "qwen-config",
            config={"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
        )
        self.wide_config = edited_copy(
            self.parent, root / "wide-config", config={"hidden_size": 128}
        )


def reference_metrics(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> dict:
    """The metrics computed by torch on whole tensors, in float64."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    result = {
        "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=0)),
        "relative_change": float((a - b).norm() / b.norm()),
    }
    if c is not None:
        c = c.double().reshape(-1)
        task_cosine = float(torch.nn.functional.cosine_similarity(a - c, b - c, dim=0, eps=0))
        result["task_cosine"] = task_cosine
        result["task_angle"] = math.degrees(math.acos(task_cosine))
        result["task_change_a"] = float((a - c).norm() / c.norm())
        result["task_change_b"] = float((b - c).norm() / c.norm())
    return result


def assert_close(found: dict, expected: dict) -> None:
    """Every metric in ``expected`` matches ``found`` to 1e-9."""
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
