"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
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
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``mergemed ARGS`` (``python -m mergemed`` unless ``command`` is given) as a real
    subprocess (in ``cwd``) and capture its output."""
    return subprocess.run(
        [*(command or (sys.executable, "-m", "mergemed")), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=cli_env(env),
        preexec_fn=preexec_fn,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def kill_when_written(marker: Path, *args: Any, timeout: float = 300) -> None:
    """Run ``mergemed ARGS`` and SIGKILL it as soon as ``marker`` exists (a checkpoint's last
    file), as a crash would; it is also killed if it ends or ``timeout`` passes first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mergemed", *(str(a) for a in args)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``result``, after checking it exited 0 without a traceback (both outputs shown if not)."""
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def write(path: Path, text: str) -> Path:
    """Write dedented ``text`` (a recipe, a config) to ``path``."""
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def slerp_recipe(path: Path, base: Path | str, other: Path | str, t: str) -> Path:
    """A SLERP recipe of ``base`` and ``other`` with parameter ``t`` (a YAML value)."""
    return write(
        path,
        f"""
        merge_method: slerp
        base_model: {json.dumps(str(base))}
        models:
          - model: {json.dumps(str(base))}
          - model: {json.dumps(str(other))}
        parameters:
          t: {t}
        """,
    )
