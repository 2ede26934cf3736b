"""A search space: a base recipe, what varies in it, and how each candidate is scored.

```yaml
recipe: ../recipes/gatortron_llama.yaml     # relative to this file, or an inline mapping
vary:
  attn_t:                                   # a name for the dimension
    path: parameters.t.0.value              # where in the recipe (list items by index)
    values: [[0, 0.5, 1], [0.2, 0.7, 0.2]]  # candidate values (any YAML value)
  rest_t:
    path: parameters.t.2.value
    low: 0.2
    high: 0.8
    step: 0.3                               # a range; ``step`` makes it a grid
score:
  tasks: [mm_pubmedqa, ifeval_med]          # or suites: [medical, forgetting]
  limit: 100                                # the same stratified sample for every candidate
  fidelity: [20, 50]                        # optional: score on 20, then 50, then 100 documents
  clinical: models/GatorTronLlama-8B
  instruct: meta-llama/Llama-3.1-8B-Instruct
objectives: [domain_gain, forgetting]       # or [weighted] (gain − forgetting_weight·forgetting)
strategy: grid                              # grid, random, tpe, nsga2, cmaes
```

Every candidate recipe is validated as a recipe before anything runs, so a value the method
does not take is a one-line error naming the dimension.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mergemed.errors import MergemedError
from mergemed.recipe import Recipe, load_recipe
from mergemed.validated_yaml import load_validated


class SearchError(MergemedError):
    """A search space, run folder or storage that cannot be used."""


class Dimension(BaseModel):
    """One thing that varies: a list of values, or a numeric range."""

    model_config = ConfigDict(extra="forbid")

    path: str
    """Dotted path into the recipe's mapping; list items by index (``parameters.t.0.value``)."""
    values: list[Any] | None = None
    """The candidate values (numbers, anchor lists, method names...)."""
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    """With ``low``/``high``: the grid spacing (required by ``strategy: grid``)."""

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        if (self.values is None) == (self.low is None and self.high is None):
            raise ValueError("give either values or low and high")
        if self.values is not None and not self.values:
            raise ValueError("values: expected at least one value")
        if self.values is None:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high < self.low:
                raise ValueError("expected finite low <= high")
        return self

    def grid(self) -> list[Any] | None:
        """The values a grid visits, or None for a range without a step."""
        if self.values is not None:
            return list(self.values)
        if self.step is None:
            return None
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


class Scoring(BaseModel):
    """What scores a candidate: tasks or suites, the sample size, the parents compared."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = []
    suites: list[str] = []
    limit: float | None = 100
    """Documents per task (an int, or a fraction below 1); the same for every candidate."""
    fidelity: list[int] = []
    """Smaller samples to score first, ascending and below ``limit`` (multi-fidelity): a
    candidate goes on to the next size only while no candidate already scored at this size is
    significantly better on every objective (paired, same documents; see
    :mod:`mergemed.search.fidelity`)."""
    clinical: str
    """The clinical (domain) parent, for retention."""
    instruct: str
    """The instruct parent: gain and forgetting are measured against it."""
    settings: dict[str, Any] = {}
    """Any other ``EvalSettings`` / ``BackendSettings`` fields (``dtype``, ``chat_template``...)."""

    @model_validator(mode="after")
    def _something(self) -> Scoring:
        if not self.tasks and not self.suites:
            raise ValueError("give tasks or suites to score candidates on")
        if self.fidelity:
            if self.limit is None or self.limit < 1 or self.limit != int(self.limit):
                raise ValueError("fidelity needs limit as a number of documents (an integer)")
            sizes = [*self.fidelity, int(self.limit)]
            if any(size < 2 for size in sizes) or sizes != sorted(set(sizes)):
                raise ValueError(
                    f"fidelity: expected ascending sample sizes of at least 2, each below "
                    f"limit {int(self.limit)}"
                )
        return self


Objective = Literal["domain_gain", "forgetting", "weighted"]
Strategy = Literal["grid", "random", "tpe", "nsga2", "cmaes"]


class SearchSpace(BaseModel):
    """A search space file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    recipe: str | dict[str, Any]
    vary: dict[str, Dimension]
    score: Scoring
    objectives: list[Objective] = ["domain_gain", "forgetting"]
    forgetting_weight: float = Field(1.0, ge=0, allow_inf_nan=False)
    """For ``weighted``: score = domain gain − forgetting_weight × forgetting."""
    strategy: Strategy = "grid"
    trials: int | None = Field(None, gt=0)
    """How many candidates (default: the whole grid; required for other strategies)."""
    seed: int = 0
    max_trials: int = Field(200, gt=0)
    """A search larger than this needs ``--yes``."""
    folder: Path | None = Field(None, exclude=True)
    """The folder the space file is in (relative recipe paths start there)."""

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpace:
        if not self.vary:
            raise ValueError("vary: expected at least one dimension")
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise ValueError("objectives: expected distinct objectives")
        if "weighted" in self.objectives and len(self.objectives) > 1:
            raise ValueError("objectives: weighted stands alone")
        return self

    def base_recipe(self) -> dict[str, Any]:
        """The base recipe as a mapping (read from its file when given as a path)."""
        if isinstance(self.recipe, dict):
            return copy.deepcopy(self.recipe)
        path = Path(self.recipe)
        if not path.is_absolute() and self.folder is not None:
            path = self.folder / path
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except OSError as error:
            raise SearchError(f"recipe {path}: cannot read: {error.strerror}") from None
        load_recipe(path)  # the base itself must be a valid recipe
        return data

    def fingerprint(self) -> str:
        """SHA-256 of what defines the search (base recipe, dimensions, scoring, objectives,
        strategy, seed): a run folder or study made from another space has another one."""
        identity = {
            "recipe": self.base_recipe(),
            "vary": {k: v.model_dump() for k, v in self.vary.items()},
            # (fidelity left out when unused: spaces from before it existed keep their print)
            "score": self.score.model_dump(exclude=set() if self.score.fidelity else {"fidelity"}),
            "objectives": self.objectives,
            "forgetting_weight": self.forgetting_weight,
            "strategy": self.strategy,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def load_space(source: str | Path | dict[str, Any]) -> SearchSpace:
    """Load and check a search space: the YAML, then every grid candidate (or the first
    value of each range) as a recipe.

    Raises:
        SearchError: naming the file, line and key, or the dimension and what it produced.
    """
    space = load_validated(source, SearchSpace, what="search space", error=SearchError)
    if not isinstance(source, dict):
        space.folder = Path(source).expanduser().absolute().parent
    base = space.base_recipe()
    for name, dimension in space.vary.items():
        try:
            _locate(base, dimension.path)
        except KeyError as missing:
            raise SearchError(
                f"vary.{name}.path: {dimension.path!r} is not in the recipe ({missing.args[0]})"
            ) from None
    if space.strategy == "grid":
        without_step = [n for n, d in space.vary.items() if d.grid() is None]
        if without_step:
            raise SearchError(
                f"vary.{without_step[0]}: strategy grid needs values or a step for each range"
            )
        size = grid_size(space)
        if space.trials is not None and space.trials > size:
            raise SearchError(f"trials: {space.trials} is more than the grid's {size} candidates")
    elif space.trials is None:
        raise SearchError(f"trials: strategy {space.strategy} needs a number of trials")
    for choice in _probe_choices(space):
        candidate_recipe(space, choice, base)
    return space


def grid_size(space: SearchSpace) -> int:
    """The number of grid candidates (for ranges without a step: 0)."""
    sizes = [len(d.grid() or []) for d in space.vary.values()]
    return math.prod(sizes)


def grid_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every grid candidate, as dimension name -> value, in a fixed order."""
    names = list(space.vary)
    grids = [space.vary[n].grid() or [] for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grids)]


def _probe_choices(space: SearchSpace) -> list[dict[str, Any]]:
    """The candidates checked when the space loads: the whole grid (up to ``max_trials``),
    else the ends of each dimension."""
    if space.strategy == "grid":
        return grid_points(space)[: space.max_trials]
    ends = []
    for which in (0, -1):
        ends.append(
            {
                n: (d.values[which] if d.values is not None else (d.low, d.high)[which])
                for n, d in space.vary.items()
            }
        )
    return ends


def candidate_recipe(
    space: SearchSpace, choice: dict[str, Any], base: dict[str, Any] | None = None
) -> Recipe:
    """The base recipe with each dimension's value put at its path, validated.

    Raises:
        SearchError: the result is not a valid recipe (naming the dimensions and values).
    """
    data = copy.deepcopy(base if base is not None else space.base_recipe())
    for name, value in choice.items():
        parent, key = _locate(data, space.vary[name].path)
        parent[key] = copy.deepcopy(value)
    try:
        return load_recipe(data)
    except MergemedError as error:
        shown = ", ".join(f"{n}={v!r}" for n, v in choice.items())
        raise SearchError(f"candidate {shown}: {error}") from None


def _locate(data: Any, path: str) -> tuple[Any, Any]:
    """(container, key) of a dotted path; raises KeyError naming the first missing step."""
    steps = path.split(".")
    node = data
    for i, step in enumerate(steps):
        key: Any = int(step) if isinstance(node, list) and step.lstrip("-").isdigit() else step
        present = (
            (isinstance(key, int) and -len(node) <= key < len(node))
            if isinstance(node, list)
            else isinstance(node, dict) and key in node
        )
        if not present:
            raise KeyError(f"no {'.'.join(steps[: i + 1])!r}")
        if i == len(steps) - 1:
            return node, key
        node = node[key]
    raise KeyError(path)  # pragma: no cover - empty path


__all__ = [
    "Dimension",
    "Scoring",
    "SearchError",
    "SearchSpace",
    "candidate_recipe",
    "grid_points",
    "grid_size",
    "load_space",
]
