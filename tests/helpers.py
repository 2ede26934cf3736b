"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_model_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors shards, by name."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a ``mergemed`` subprocess: offline, no colours or width tricks."""
    env = dict(os.environ)
    for key in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):
        env.pop(key, None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_COLOR="1")
    env.update(extra or {})
    return env
