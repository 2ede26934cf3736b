"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def run_cli(
    *args: Any,
    env: dict[str, str] | None = None,
    command: tuple[str, ...] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``mergemed ARGS`` (``python -m mergemed.cli`` unless ``command`` is given) as a real
    subprocess and capture its output."""
    return subprocess.run(
        [*(command or (sys.executable, "-m", "mergemed.cli")), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=cli_env(env),
        preexec_fn=preexec_fn,
        timeout=timeout,
        check=False,
    )
