"""Appending a dated, machine-described section to ``benchmarks/RESULTS.md`` (shared by the
evaluation and training benchmarks)."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"


def machine_line() -> str:
    """``- **machine**: ...``: CPU, cores, memory, Python and torch versions."""
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"- **machine**: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{memory:.1f} GiB, Python {platform.python_version()}, torch {torch.__version__}"
    )


def append_section(title: str, details: Sequence[str], table: str) -> Path:
    """Append ``## <UTC time>: <title>``, the machine, ``details`` lines and ``table``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    section = [f"\n## {now:%Y-%m-%d %H:%M} UTC: {title}\n", machine_line(), *details, "", table, ""]
    with RESULTS_PATH.open("a") as results:
        results.write("\n".join(section))
    return RESULTS_PATH
