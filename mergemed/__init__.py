"""mergemed: adapt open LLMs to medicine by weight-space merging.

Public API (heavy modules are imported on first use)::

    from mergemed import load_recipe, merge, plan_recipe
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_recipe", "merge", "plan_recipe"]


def __getattr__(name: str) -> Any:
    if name == "merge":
        from mergemed.engine import merge

        return merge
    if name == "load_recipe":
        from mergemed.recipe import load_recipe

        return load_recipe
    if name == "plan_recipe":
        from mergemed.plan import plan_recipe

        return plan_recipe
    raise AttributeError(f"module 'mergemed' has no attribute {name!r}")
