"""Each extra installs what its code path imports: the modules the evaluation code and its task
files import must all come with ``mergemed[eval]`` (found by walking the installed packages'
own requirements, the way pip resolves them)."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = (
    pytest.importorskip("tomllib")
    if sys.version_info >= (3, 11)
    else pytest.skip("tomllib needs Python 3.11", allow_module_level=True)
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mergemed"


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(requirements: list[str]) -> set[str]:
    """Distribution names a set of requirements pulls in (installed metadata, with extras)."""
    seen: set[str] = set()
    todo = [(Requirement(r), ()) for r in requirements]
    while todo:
        requirement, _ = todo.pop()
        name = _normal(requirement.name)
        key = name + "[" + ",".join(sorted(requirement.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        if name == "mergemed":
            project = _project()
            nested = list(project["dependencies"])
            for extra in requirement.extras:
                nested += project["optional-dependencies"][extra]
        else:
            try:
                nested = metadata.requires(requirement.name) or []
            except metadata.PackageNotFoundError:
                continue
        for text in nested:
            child = Requirement(text)
            if child.marker is None or any(
                child.marker.evaluate({"extra": extra}) for extra in (*requirement.extras, "")
            ):
                todo.append((child, ()))
    return {k for k in seen if "[" not in k}


def imported_distributions(files: list[Path]) -> set[str]:
    """Distributions of the third-party modules ``files`` import (any depth)."""
    providers = metadata.packages_distributions()
    local = {path.stem for path in files}  # a task folder's script importing its sibling
    found: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "mergemed" or top in local:
                    continue
                found |= {_normal(d) for d in providers.get(top, [top])}
    return found


OPTIONAL_PATHS = {"vllm", "ray"}  # the vllm extra's path


def test_the_eval_extra_brings_everything_the_evaluator_imports() -> None:
    files = [*(PACKAGE / "evaluation").glob("*.py"), *(PACKAGE / "evaluations").rglob("*.py")]
    needed = imported_distributions(files) - OPTIONAL_PATHS
    # What lm-eval's HFLM and the IFEval checkers import at run time, beyond our own imports.
    needed |= {"accelerate", "langdetect", "nltk", "immutabledict", "lm-eval", "datasets"}
    available = closure(["mergemed[eval]"])
    assert needed <= available, sorted(needed - available)


def test_the_vllm_extra_names_vllm_through_lm_eval_and_ray() -> None:
    declared = [Requirement(r) for r in _project()["optional-dependencies"]["vllm"]]
    names = {(_normal(r.name), tuple(sorted(r.extras))) for r in declared}
    assert ("lm-eval", ("vllm",)) in names  # lm-eval's own floor for the vLLM it supports
    assert ("ray", ()) in names  # --data-parallel-size > 1
    assert ("mergemed", ("eval",)) in names
