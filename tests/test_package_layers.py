"""The package's dependency direction (README, "Architecture"), checked on the source: a module
imports only from its own layer or below, and never another module's private helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mergemed"

LAYERS: dict[str, int] = {
    "errors": 0,
    "units": 0,
    "redact": 0,
    "validated_yaml": 1,
    "atomic": 1,
    "outputs": 1,
    "io": 1,
    "methods": 1,
    "testing": 1,
    "recipe": 2,
    "layout": 2,
    "schedule": 3,
    "vocabulary": 3,
    "engine": 4,
    "plan": 4,
    "compare": 5,
    "evaluation": 5,
    "train": 5,
    "validation": 6,
    "search": 6,
    "publish": 6,
    "demo": 7,
    "cli": 8,
}
"""Top-level module or package -> layer. Lower layers never import higher ones."""


def modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if "evaluations" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"
    )


def top_level(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported mergemed module, names taken from it, line) for every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mergemed"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mergemed."):
                    found.append((alias.name, [], node.lineno))
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    if path == PACKAGE / "__init__.py":
        return  # the public API re-exports lazily from every layer
    own = top_level(path)
    assert own in LAYERS, f"{own}: not placed in a layer (add it to LAYERS)"
    for module, names, line in imports(path):
        parts = module.split(".")
        if len(parts) == 1:  # "from mergemed import __version__"
            assert names == ["__version__"], f"{path}:{line}: imports {names} from mergemed"
            continue
        target = parts[1]
        assert LAYERS[target] <= LAYERS[own], (
            f"{path.relative_to(PACKAGE)}:{line}: {own} (layer {LAYERS[own]}) imports "
            f"{module} (layer {LAYERS[target]})"
        )
        if target != own or module != ".".join(["mergemed", *path.relative_to(PACKAGE).parts]):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert private == [], f"{path.relative_to(PACKAGE)}:{line}: private {private}"


def test_no_module_shadows_the_standard_library() -> None:
    """With a mergemed folder on ``sys.path`` (``python mergemed/cli/app.py``), a module named
    like the standard library's would be imported in its place. ``io`` is exempt: the
    interpreter imports it before ``sys.path`` is ever searched, so it cannot be shadowed."""
    import sys

    preloaded = {"io"}
    names = {p.stem for p in PACKAGE.rglob("*.py")} | {
        p.name for p in PACKAGE.rglob("*") if p.is_dir()
    }
    shadowing = sorted((names & set(sys.stdlib_module_names)) - preloaded)
    assert shadowing == [], f"modules named like the standard library: {shadowing}"
