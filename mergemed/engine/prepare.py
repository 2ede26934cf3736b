"""Setting a merge up once: the resolved recipe, its opened models, vocabulary and plan.

:func:`prepare_merge` does everything a merge needs before the first tensor is read and
returns it as a :class:`MergeJob`. :func:`~mergemed.engine.merge` and
:func:`~mergemed.engine.merge_to_memory` run on one; a schedule search prepares one job and
:meth:`MergeJob.replan` s it for every candidate recipe over the same models, so the models
are opened, and their vocabularies compared, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mergemed.engine.trained_base import find_trained_base
from mergemed.errors import MergeError, MergemedError
from mergemed.io.checkpoint import Checkpoint
from mergemed.io.hub import resolve_model_folders
from mergemed.io.writer import OutputTensor
from mergemed.recipe import Recipe, load_recipe
from mergemed.schedule import MergePlan, ModelLayout, build_plan, layout_from_checkpoint
from mergemed.vocabulary import (
    VocabularyAlignment,
    build_output_vocabulary,
    check_hidden_sizes,
    compare_vocabularies,
    is_vocabulary_tensor,
    mismatch_message,
    read_vocabularies,
    tokenizer_settings,
)

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
"""The recipe's ``dtype``/``out_dtype`` names and their torch dtypes."""


@dataclass(frozen=True)
class MergeOptions:
    """How a recipe's models are found and where its arithmetic runs.

    Attributes:
        search_dirs: folders relative model paths are also looked for in (a recipe given as
            a path adds its own folder first).
        allow_pickle: permit ``.bin``/``.pt`` inputs (unpickling can run code from the file).
        device: where the arithmetic runs: ``cpu`` or ``cuda`` (``cuda:1``...).
    """

    search_dirs: tuple[Path, ...] = ()
    allow_pickle: bool = False
    device: str = "cpu"


@dataclass
class MergeJob:
    """A merge set up and ready to run: made by :func:`prepare_merge`.

    A context manager: leaving it closes the models (unless the job shares them, see
    :meth:`replan`).

    Attributes:
        recipe: the recipe, with a base found from ``training.json`` where it had none.
        options: the options it was prepared with (search folders made absolute).
        device: where the arithmetic runs.
        checkpoints: the opened models, by reference, in the recipe's order.
        alignment: how vocabulary rows move between the parents, or None when none move.
        plan: every output tensor, its sources and parameter values.
        output_dtype: the dtype of the merged weights (the config's ``torch_dtype``).
        tensor_dtypes: the tensors stored in another dtype: with neither ``dtype`` nor
            ``out_dtype`` in the recipe each output tensor takes the promoted dtype of its
            parents' (mergekit's rule), so fp32 norms of bf16 parents stay fp32.
    """

    recipe: Recipe
    options: MergeOptions
    device: torch.device
    checkpoints: dict[str, Checkpoint]
    alignment: VocabularyAlignment | None
    plan: MergePlan
    output_dtype: torch.dtype
    owns_checkpoints: bool = field(default=True, repr=False)
    """Whether :meth:`close` closes the checkpoints (False for a job made by :meth:`replan`)."""
    tensor_dtypes: dict[str, torch.dtype] = field(default_factory=dict, repr=False)

    def dtype_of(self, name: str) -> torch.dtype:
        """The dtype output tensor ``name`` is stored in."""
        return self.tensor_dtypes.get(name, self.output_dtype)

    @property
    def reference_model(self) -> str:
        """The model whose config the output copies: the base, else the first model."""
        return reference_model(self.recipe)

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype inputs are converted to before merging (None: as stored)."""
        return DTYPE_NAMES[self.recipe.dtype] if self.recipe.dtype else None

    def output_tensors(self) -> list[OutputTensor]:
        """The output tensors in plan order, not yet placed in shards."""
        return [OutputTensor(t.name, self.dtype_of(t.name), t.shape) for t in self.plan.tasks]

    def replan(self, recipe: Recipe | str | Path) -> MergeJob:
        """The same models merged by another recipe (other method, parameters, slices...).

        The new job shares this job's opened checkpoints (closing it leaves them open; close
        this job when done with both) and, when the tokenizer settings, base and models are
        the same, its vocabulary alignment.

        Args:
            recipe: a :class:`Recipe` or the path of a recipe YAML naming only models this
                job has opened.

        Returns:
            A :class:`MergeJob` whose merge equals a fresh :func:`prepare_merge` of ``recipe``.

        Raises:
            MergeError: the recipe names a model this job has not opened.
            MergemedError: the recipe is invalid, or its plan does not fit the models.
        """
        if not isinstance(recipe, Recipe):
            recipe = load_recipe(Path(recipe))
        recipe = find_trained_base(recipe, list(self.options.search_dirs))
        references = recipe.model_references()
        missing = [r for r in references if r not in self.checkpoints]
        if missing:
            raise MergeError(
                f"replan: {', '.join(map(repr, missing))} not among the prepared models "
                f"({', '.join(map(repr, self.checkpoints))}); prepare a new merge for them"
            )
        checkpoints = {reference: self.checkpoints[reference] for reference in references}
        same_vocabulary = (
            tokenizer_settings(recipe) == tokenizer_settings(self.recipe)
            and reference_model(recipe) == self.reference_model
            and references == list(self.checkpoints)
        )
        alignment = self.alignment if same_vocabulary else prepare_vocabulary(recipe, checkpoints)
        return _planned(recipe, self.options, self.device, checkpoints, alignment, owner=False)

    def close(self) -> None:
        """Close the models' files, if this job owns them."""
        if self.owns_checkpoints:
            for checkpoint in self.checkpoints.values():
                checkpoint.close()

    def __enter__(self) -> MergeJob:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def read_recipe(recipe: Recipe | str | Path) -> tuple[Recipe, list[Path]]:
    """A recipe and the folders its relative model paths are found in.

    Args:
        recipe: a :class:`Recipe`, or the path of a recipe YAML (mergekit YAML works as is).

    Returns:
        The recipe, and the recipe file's folder (absolute) or nothing for a :class:`Recipe`.

    Raises:
        RecipeError: the file is not a valid recipe.
    """
    if isinstance(recipe, Recipe):
        return recipe, []
    path = Path(recipe)
    return load_recipe(path), [path.parent.absolute()]


def prepare_merge(recipe: Recipe | str | Path, *, options: MergeOptions | None = None) -> MergeJob:
    """Set a merge up: resolve the recipe, open its models, align vocabularies, plan it.

    Nothing is read but headers, configs and tokenizers. Use the job as a context manager
    (or call :meth:`MergeJob.close`) to close the models.

    Args:
        recipe: a :class:`Recipe`, or the path of a recipe YAML (mergekit YAML works as is).
        options: how models are found and where the arithmetic runs.

    Returns:
        The :class:`MergeJob`.

    Raises:
        MergemedError: bad recipe, device or models; nothing is left open.
    """
    options = options or MergeOptions()
    recipe, recipe_dirs = read_recipe(recipe)
    options = replace(options, search_dirs=(*recipe_dirs, *options.search_dirs))
    device = check_device(options.device)
    recipe = find_trained_base(recipe, list(options.search_dirs))
    checkpoints = open_models(recipe, options.search_dirs, options.allow_pickle)
    try:
        alignment = prepare_vocabulary(recipe, checkpoints)
        return _planned(recipe, options, device, checkpoints, alignment, owner=True)
    except BaseException:
        for checkpoint in checkpoints.values():
            checkpoint.close()
        raise


def _planned(
    recipe: Recipe,
    options: MergeOptions,
    device: torch.device,
    checkpoints: dict[str, Checkpoint],
    alignment: VocabularyAlignment | None,
    *,
    owner: bool,
) -> MergeJob:
    plan = build_plan(recipe, _layouts(checkpoints, alignment))
    check_source_dtypes(plan, checkpoints)
    output_dtype, tensor_dtypes = _output_dtypes(recipe, checkpoints, plan)
    job = MergeJob(
        recipe, options, device, checkpoints, alignment, plan, output_dtype, owner, tensor_dtypes
    )
    from mergemed.engine.completeness import check_output_complete  # (imports this module)
    from mergemed.engine.output import output_config

    check_output_complete(job, output_config(job))
    return job


def check_source_dtypes(plan: MergePlan, checkpoints: dict[str, Checkpoint]) -> None:
    """Every tensor a merge reads must hold floating-point numbers.

    Merge methods do arithmetic on weights; an integer or boolean tensor (a header that
    declares ``I32`` for bytes written as ``F32`` reads as integers up to 10^9) would be merged
    into nonsense without any NaN to catch it.

    Raises:
        MergeError: naming the tensor, the model and its dtype (and another parent's).
    """
    for task in plan.tasks:
        infos = [(s.model, checkpoints[s.model].tensors.get(s.name)) for s in task.sources]
        dtypes = [(model, info.dtype) for model, info in infos if info is not None]
        for model, dtype in dtypes:
            if dtype.is_floating_point:
                continue
            floats = [(m, d) for m, d in dtypes if d.is_floating_point]
            other = f", while {floats[0][0]!r} stores it as {floats[0][1]}" if floats else ""
            raise MergeError(
                f"tensor {task.sources[0].name!r}: {model!r} stores it as {dtype}{other}; "
                "merge methods take floating-point weights (is the file's header forged?)"
            )


def check_device(device: str) -> torch.device:
    """The torch device a ``--device`` value names.

    Raises:
        MergeError: not ``cpu`` or ``cuda[:index]``, or CUDA is not available.
    """
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise MergeError(f"--device {device}: expected cpu or cuda[:index]") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise MergeError(f"--device {device}: CUDA is not available on this machine")
    if parsed.type not in ("cpu", "cuda"):
        raise MergeError(f"--device {device}: expected cpu or cuda[:index]")
    return parsed


def open_models(
    recipe: Recipe, search_dirs: Sequence[Path], allow_pickle: bool
) -> dict[str, Checkpoint]:
    """Every model of the recipe, opened, by reference in the recipe's order.

    Raises:
        MergemedError: a model is missing or unreadable; the ones opened are closed.
    """
    folders = resolve_model_folders(recipe.model_references(), search_dirs=search_dirs)
    checkpoints: dict[str, Checkpoint] = {}
    try:
        for reference, folder in folders.items():
            checkpoints[reference] = Checkpoint(folder, reference, allow_pickle=allow_pickle)
    except MergemedError:
        for checkpoint in checkpoints.values():
            checkpoint.close()
        raise
    return checkpoints


def reference_model(recipe: Recipe) -> str:
    """The model whose config (and default tokenizer) the output copies: the base, else the
    first model."""
    return recipe.base_model or recipe.model_references()[0]


def prepare_vocabulary(
    recipe: Recipe, checkpoints: dict[str, Checkpoint]
) -> VocabularyAlignment | None:
    """Compare the parents' vocabularies before any weight is read; build the alignment the
    recipe's tokenizer section asks for (None when no row moves).

    Raises:
        MergeError: the vocabularies differ and the recipe does not say how to align them, or
            the hidden sizes differ.
    """
    settings = tokenizer_settings(recipe)
    reference = reference_model(recipe)
    parents = read_vocabularies(checkpoints, load_tokenizers=False)
    check_hidden_sizes(parents)
    digests = {p.tokenizer_digest for p in parents.values() if p.tokenizer_digest}
    rows = {p.rows for p in parents.values()}
    if settings is None and len(digests) <= 1 and len(rows) <= 1:
        return None
    parents = read_vocabularies(checkpoints)
    if settings is None:
        comparison = compare_vocabularies(parents, reference)
        if not comparison.identical:
            raise MergeError(mismatch_message(comparison))
        return None
    output = build_output_vocabulary(settings, reference, recipe.model_references(), parents)
    alignment = VocabularyAlignment(settings, output, parents, reference)
    if alignment.is_identity(list(checkpoints)) and not settings.tokens:
        return None
    return alignment


def _layouts(
    checkpoints: dict[str, Checkpoint], alignment: VocabularyAlignment | None
) -> dict[str, ModelLayout]:
    """Each model's layout; with an alignment, vocabulary tensors take the output's rows."""
    layouts = {ref: layout_from_checkpoint(cp) for ref, cp in checkpoints.items()}
    if alignment is None:
        return layouts
    aligned = {}
    for reference, layout in layouts.items():
        shapes = {
            name: (alignment.rows, *shape[1:]) if is_vocabulary_tensor(name) else shape
            for name, shape in layout.shapes.items()
        }
        aligned[reference] = ModelLayout(
            reference=layout.reference,
            shapes=shapes,
            num_layers=layout.num_layers,
            tie_word_embeddings=layout.tie_word_embeddings,
            layer_prefix=layout.layer_prefix,
        )
    return aligned


def _output_dtypes(
    recipe: Recipe, checkpoints: dict[str, Checkpoint], plan: MergePlan
) -> tuple[torch.dtype, dict[str, torch.dtype]]:
    """The output dtype and the tensors stored in another one.

    ``out_dtype``, else ``dtype``, sets every tensor's. With neither, a tensor takes the
    promotion of its parents' dtypes (``torch.promote_types``, as mergekit 0.1.5 promotes each
    tensor group): bf16 parents with fp32 norms keep fp32 norms, and one fp32 parent makes the
    whole output fp32. The config states the dtype most output elements have.
    """
    if recipe.out_dtype:
        return DTYPE_NAMES[recipe.out_dtype], {}
    if recipe.dtype:
        return DTYPE_NAMES[recipe.dtype], {}
    promoted: dict[str, torch.dtype] = {}
    elements: dict[torch.dtype, int] = {}
    for task in plan.tasks:
        dtype = None
        for source in task.sources:
            info = checkpoints[source.model].tensors.get(source.name)
            if info is None or not info.dtype.is_floating_point:
                continue
            dtype = info.dtype if dtype is None else torch.promote_types(dtype, info.dtype)
        if dtype is None:
            continue
        promoted[task.name] = dtype
        numel = 1
        for size in task.shape:
            numel *= size
        elements[dtype] = elements.get(dtype, 0) + numel
    if not elements:
        return torch.float32, {}
    dominant = max(elements, key=lambda d: (elements[d], d.itemsize))
    return dominant, {name: d for name, d in promoted.items() if d != dominant}
