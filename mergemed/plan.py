"""``mergemed plan``: show the per-layer, per-component values a recipe resolves to.

Works from the recipe alone: when its models are present their real tensor names are used (for
a Hub id only its config and safetensors headers are fetched, never its weights); otherwise a
Llama-style layout with ``num_layers`` layers stands in for them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.errors import CheckpointError, OutputError, RecipeError
from mergemed.io.hub import open_model_header
from mergemed.recipe import Recipe, load_recipe
from mergemed.schedule import (
    COMPONENTS,
    MergePlan,
    ModelLayout,
    build_plan,
    generic_layout,
    layout_from_checkpoint,
)


@dataclass
class ScheduleTable:
    """A recipe's schedule: one row per layer (``None`` for non-layer tensors)."""

    recipe: Recipe
    plan: MergePlan
    columns: list[str]
    """``parameter`` or ``parameter[model]`` for per-model parameters."""
    rows: list[dict[str, Any]]
    """Each row: ``layer``, ``component`` and one value per column (a value shared by every
    tensor of the component, or a ``min..max`` range when its tensors differ)."""
    used_real_models: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "merge_method": self.recipe.merge_method,
            "num_layers": self.plan.num_layers,
            "used_real_models": self.used_real_models,
            "columns": self.columns,
            "rows": self.rows,
            "tensors": [
                {
                    "name": t.name,
                    "layer": t.layer,
                    "position": t.position,
                    "sources": [[s.model, s.name] for s in t.sources],
                    "parameters": t.parameters,
                    "model_parameters": {
                        t.sources[i].model: p for i, p in enumerate(t.model_parameters) if p
                    },
                }
                for t in self.plan.tasks
            ],
        }


def plan_recipe(recipe: Recipe | str | Path, num_layers: int | None = None) -> ScheduleTable:
    """Resolve a recipe's schedule without merging.

    Args:
        recipe: a :class:`Recipe` or the path of a recipe YAML.
        num_layers: layers to assume for models that are not available locally.

    Raises:
        RecipeError: the recipe is invalid, or models are missing and ``num_layers`` is not given.
    """
    search_dirs = []
    if not isinstance(recipe, Recipe):
        search_dirs = [Path(recipe).parent.absolute()]
        recipe = load_recipe(recipe)
    layouts: dict[str, ModelLayout] = {}
    real = True
    for reference in recipe.model_references():
        try:
            checkpoint = open_model_header(reference, search_dirs=search_dirs)
            try:
                layouts[reference] = layout_from_checkpoint(checkpoint)
            finally:
                checkpoint.close()
        except CheckpointError as error:
            real = False
            count = num_layers or _layers_from_slices(recipe)
            if count is None:
                raise RecipeError(
                    f"{error}; pass --num-layers to plan without the model present"
                ) from None
            layouts[reference] = generic_layout(reference, count)
    plan = build_plan(recipe, layouts)
    columns, rows = _summarise(plan)
    return ScheduleTable(recipe, plan, columns, rows, real)


def _layers_from_slices(recipe: Recipe) -> int | None:
    if not recipe.slices:
        return None
    return max(s.layer_range[1] for output_slice in recipe.slices for s in output_slice.sources)


def _summarise(plan: MergePlan) -> tuple[list[str], list[dict[str, Any]]]:
    grouped: dict[tuple[Any, str], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    order: list[tuple[Any, str]] = []
    columns: list[str] = []
    for task in plan.tasks:
        key = (task.layer, task.component)
        if key not in grouped:
            order.append(key)
        values = dict(task.parameters)
        for index, parameters in enumerate(task.model_parameters):
            for name, value in parameters.items():
                values[f"{name}[{task.sources[index].model}]"] = value
        for column, value in values.items():
            if column not in columns:
                columns.append(column)
            grouped[key][column].append(value)
    component_rank = {name: i for i, (name, _) in enumerate(COMPONENTS)}
    rows = []
    for layer, component in order:
        row: dict[str, Any] = {"layer": layer, "component": component}
        for column in columns:
            values = grouped[(layer, component)].get(column, [])
            row[column] = _collapse(values)
        rows.append(row)
    rows.sort(
        key=lambda r: (
            -1 if r["layer"] is None and r["component"] == "embed_tokens" else 0,
            r["layer"] if r["layer"] is not None else 10**9,
            component_rank.get(r["component"], 99),
        )
    )
    return columns, rows


def _collapse(values: list[Any]) -> Any:
    if not values:
        return None
    unique = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(unique) == 1:
        return unique[0]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in unique):
        return f"{min(unique):.4g}..{max(unique):.4g}"
    return "/".join(str(v) for v in unique)


def plot_plan(summary: ScheduleTable, path: str | Path) -> Path:
    """Plot each numeric parameter against the layer, one line per component, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric_columns = [
        c
        for c in summary.columns
        if any(isinstance(r[c], int | float) and not isinstance(r[c], bool) for r in summary.rows)
    ]
    panels = max(1, len(numeric_columns))
    figure, axes = plt.subplots(panels, 1, figsize=(8, 2.8 * panels), squeeze=False)
    for axis, column in zip(axes[:, 0], numeric_columns or [""], strict=False):
        lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in summary.rows:
            value = row.get(column)
            if row["layer"] is not None and isinstance(value, int | float):
                lines[row["component"]].append((row["layer"], float(value)))
        for component, points in lines.items():
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, marker="o", markersize=3, label=component)
        axis.set_ylabel(column)
        axis.grid(alpha=0.3)
        if lines:
            axis.legend(fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("output layer")
    title = summary.recipe.name or summary.recipe.merge_method
    figure.suptitle(f"{title}: per-layer schedule ({summary.recipe.merge_method})")
    figure.tight_layout()
    path = Path(path)
    try:
        if not path.parent.is_dir():
            raise FileNotFoundError(f"no folder {path.parent}")
        figure.savefig(path, dpi=110)
    except OSError as error:
        raise OutputError(f"{path}: cannot write the plot: {error.strerror or error}") from None
    finally:
        plt.close(figure)
    return path
