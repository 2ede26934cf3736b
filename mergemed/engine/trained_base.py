"""The base a task-vector recipe without ``base_model`` was trained from (``training.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from mergemed.errors import MergeError, MergemedError
from mergemed.io.hub import resolve_model_folder
from mergemed.recipe import Recipe


def find_trained_base(recipe: Recipe, search_dirs: list[Path]) -> Recipe:
    """A task-vector recipe without ``base_model`` gets the base its models were trained from.

    Models made by ``mergemed train`` record their base in ``training.json``; when every one
    that has such a record names the same base, that base is used (its local folder when it
    still exists, else its reference). Other recipes are returned unchanged.

    Raises:
        MergeError: the method needs a base and none can be found, or the records disagree.
    """
    method = recipe.spec
    slices_with_base = recipe.slices and all(s.base_model for s in recipe.slices)
    if recipe.base_model or method.base_model != "required" or slices_with_base:
        return recipe
    found: dict[str, list[str]] = {}
    for reference in recipe.model_references():
        try:
            folder = resolve_model_folder(reference, search_dirs=search_dirs)
        except MergemedError:
            continue
        record = folder / "training.json"
        if not record.is_file():
            continue
        try:
            training = json.loads(record.read_text())
        except ValueError:
            raise MergeError(f"{record}: not valid JSON") from None
        local = training.get("base_model_folder")
        base = local if local and Path(local).is_dir() else training.get("base_model")
        if base:
            found.setdefault(str(base), []).append(reference)
    if not found:
        raise MergeError(
            f"{method.name} needs a base_model: set base_model in the recipe (none of its "
            "models has a training.json from `mergemed train` naming its base)"
        )
    if len(found) > 1:
        listed = "; ".join(f"{base} ({', '.join(refs)})" for base, refs in found.items())
        raise MergeError(
            f"{method.name} needs one base_model, but the models were trained from different "
            f"bases: {listed}; set base_model in the recipe"
        )
    return recipe.model_copy(update={"base_model": next(iter(found))})
