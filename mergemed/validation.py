"""Checking a YAML file without running it: a merge recipe or a training config, told apart by
its top-level keys and loaded by its own loader, every problem collected.

``mergemed validate FILE`` prints what :func:`validate_file` returns: the file as mergemed
reads it (every default spelled out) or every problem, one line each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mergemed.errors import ConfigError, MergemedError
from mergemed.recipe import Recipe, load_recipe
from mergemed.train.config import TrainConfig, load_train_config
from mergemed.validated_yaml import decode_utf8, parse_yaml

FileKind = Literal["recipe", "training config"]

RECIPE_KEYS = frozenset(Recipe.model_fields) | {"modules"}
"""Top-level keys of a recipe (``modules``: mergekit's, which recipes refuse by name)."""

TRAINING_CONFIG_KEYS = frozenset(TrainConfig.model_fields)
"""Top-level keys of a training config."""


@dataclass
class FileValidation:
    """What :func:`validate_file` found.

    Attributes:
        path: the file checked.
        kind: ``recipe`` or ``training config``; None when the file is neither (or cannot be
            read as YAML).
        yaml: the file as mergemed reads it, every default spelled out (None unless valid).
        problems: one line each, ``file:line: key: what was expected``.
    """

    path: Path
    kind: FileKind | None
    yaml: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """No problem found."""
        return not self.problems


def file_kind(data: dict[str, Any]) -> FileKind | None:
    """Recipe or training config, by which kind's keys the mapping's top level has more of;
    None when it has none of either (or as many of each)."""
    keys = set(map(str, data))
    recipe, training = len(keys & RECIPE_KEYS), len(keys & TRAINING_CONFIG_KEYS)
    if recipe == training:
        return None
    return "recipe" if recipe > training else "training config"


def _training_kind(data: dict[str, Any]) -> Literal["cpt", "sft"] | None:
    """``cpt`` or ``sft`` from the data section when the config does not state its kind:
    raw-text ``sources`` are CPT, a records ``path`` is SFT."""
    section = data.get("data")
    if "kind" in data or not isinstance(section, dict):
        return None
    has_sources, has_path = "sources" in section, "path" in section
    if has_sources == has_path:
        return None
    return "cpt" if has_sources else "sft"


def validate_file(path: str | Path, *, strict: bool = False) -> FileValidation:
    """Check a recipe or a training config without touching any model or data.

    The kind is told by the top-level keys (:func:`file_kind`). A training config that does not
    state ``kind`` is read as ``cpt`` when its data has ``sources`` and as ``sft`` when it has
    a ``path``.

    Args:
        path: the file.
        strict: also refuse what mergemed accepts for mergekit's sake but ignores (a
            parameter the recipe's method does not use).

    Returns:
        The kind, the normalised YAML (when valid) and every problem, one line each. Never
        raises for a problem with the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return FileValidation(path, None, problems=[f"{path}: file not found"])
    except OSError as error:
        return FileValidation(path, None, problems=[f"{path}: cannot read: {error.strerror}"])
    try:
        data, _ = parse_yaml(decode_utf8(raw, str(path), ConfigError), str(path), ConfigError)
    except ConfigError as error:
        return FileValidation(path, None, problems=error.problems or [str(error)])
    if not isinstance(data, dict):
        shown = "an empty file" if data is None else f"a {type(data).__name__}"
        return FileValidation(
            path, None, problems=[f"{path}: expected a recipe or a training config, got {shown}"]
        )
    kind = file_kind(data)
    if kind is None:
        found = ", ".join(map(str, data)) or "none"
        return FileValidation(
            path,
            None,
            problems=[
                f"{path}: expected a recipe (merge_method, models or slices...) or a training "
                f"config (model, data, output...); found keys: {found}"
            ],
        )
    try:
        if kind == "recipe":
            recipe = load_recipe(path)
            if strict and recipe.ignored_parameters:
                problems = [
                    f"{path}: {key}: {recipe.merge_method} does not use it (--strict)"
                    for key in recipe.ignored_parameters
                ]
                return FileValidation(path, kind, problems=problems)
            return FileValidation(path, kind, yaml=recipe.to_yaml())
        config = load_train_config(path, _training_kind(data))
    except MergemedError as error:
        return FileValidation(path, kind, problems=getattr(error, "problems", []) or [str(error)])
    if config.kind is None:
        return FileValidation(
            path,
            kind,
            problems=[
                f"{path}: kind: not stated, and data gives both or neither of sources (cpt) and "
                "path (sft); add kind: cpt or kind: sft"
            ],
        )
    return FileValidation(path, kind, yaml=config.to_yaml())
