"""The package's place among others: it shadows no standard module and draws nothing in a
terminal (rich belongs to :mod:`mergemed.cli`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mergemed

PACKAGE = Path(mergemed.__file__).resolve().parent


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_inspect_is_the_standard_library_with_mergemed_first_on_the_path() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(PACKAGE)!r}); import inspect; "
        "print(inspect.__file__); print(hasattr(inspect, 'signature'))"
    )
    where, has_signature = run_python(code).splitlines()
    assert not Path(where).resolve().is_relative_to(PACKAGE), where
    assert Path(where).name == "inspect.py" and has_signature == "True"
    assert not (PACKAGE / "inspect.py").exists()


def test_the_library_does_not_import_rich() -> None:
    code = (
        "import sys, mergemed.compare, mergemed.compare.plot; "
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))"
    )
    assert run_python(code) == "[]"
    for module in (PACKAGE / "compare").glob("*.py"):
        assert not re.search(r"^\s*(from|import) rich\b", module.read_text(), re.M), module.name
