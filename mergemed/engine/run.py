"""Running a merge: into a model folder (:func:`merge`) or into memory (:func:`merge_to_memory`).

Both prepare the merge once (:func:`~mergemed.engine.prepare.prepare_merge`) and run the
pipeline over it; they differ only in the sink and in what is written around the weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergemed.atomic import replace_folder
from mergemed.engine.output import write_model_files
from mergemed.engine.pipeline import (
    DEFAULT_CHUNK_ELEMENTS,
    OutputTarget,
    PipelineSettings,
    ProgressCallback,
    StartCallback,
    run_pipeline,
    task_key,
)
from mergemed.engine.prepare import MergeJob, MergeOptions, check_device, prepare_merge, read_recipe
from mergemed.engine.provenance import MergeRun, merge_report, resolved_recipe
from mergemed.engine.resume import (
    JOURNAL,
    check_free_space,
    check_output,
    fingerprint,
    partial_folder,
    prepare_partial,
    write_journal,
)
from mergemed.errors import MergeError, MergemedError
from mergemed.io.writer import MemorySink, ShardWriter, layout_shards, output_error, write_index
from mergemed.outputs import OutputLock, check_replaceable
from mergemed.recipe import Recipe
from mergemed.units import parse_byte_size

IN_MEMORY_SHARD_BYTES = 1 << 62
"""In memory everything is one shard."""


@dataclass
class MergeResult:
    """What a finished merge produced."""

    output: Path
    seconds: float
    output_bytes: int
    tensors: int
    shards: int
    resumed_shards: int
    report: dict[str, Any] = field(repr=False)


def merge(
    recipe: Recipe | str | Path,
    output: str | Path,
    *,
    device: str = "cpu",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    allow_pickle: bool = False,
    hash_inputs: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: ProgressCallback | None = None,
    on_start: StartCallback | None = None,
) -> MergeResult:
    """Merge the models of a recipe into a new model folder.

    Args:
        recipe: a :class:`Recipe`, or the path of a recipe YAML (mergekit YAML works as is).
        output: the folder to create.
        device: where the arithmetic runs: ``cpu`` or ``cuda`` (``cuda:1``...).
        max_shard_size: largest output shard, e.g. ``"5GB"``.
        overwrite: replace ``output`` if it exists (only once the new merge is complete).
        allow_pickle: permit ``.bin``/``.pt`` inputs (unpickling can run code from the file).
        hash_inputs: record the SHA-256 of every input file (reads each file once more);
            otherwise the report records each file's size and header digest.
        chunk_elements: tensors with more elements are merged in slices of this many.
        progress: called as output bytes are written.
        on_start: called once with (total output bytes, bytes already done by a resumed run).

    Returns:
        A :class:`MergeResult`; ``output`` then holds the weights, config, tokenizer,
        ``recipe.yaml`` (the resolved recipe) and ``merge.json`` (the report).

    Raises:
        MergemedError: bad recipe, models, output location or numbers; nothing is left behind.
    """
    started = time.time()
    recipe, search_dirs = read_recipe(recipe)
    output = Path(output).absolute()
    check_output(output, overwrite)
    check_device(device)
    try:
        max_shard_bytes = parse_byte_size(max_shard_size)
    except ValueError as error:
        raise MergeError(f"--max-shard-size: {error}") from None
    if max_shard_bytes <= 0:
        raise MergeError(f"--max-shard-size: expected a positive size, got {max_shard_size!r}")
    options = MergeOptions(tuple(search_dirs), allow_pickle, device)
    settings = PipelineSettings(chunk_elements, progress, on_start)

    # One run per output for the whole merge: a second one is refused, naming the first.
    with OutputLock(output), prepare_merge(recipe, options=options) as job:
        check_replaceable(
            output,
            [c.folder for c in job.checkpoints.values()],
            option="--overwrite" if overwrite else "-o",
        )
        shards = layout_shards(job.output_tensors(), max_shard_bytes)
        run_fingerprint = fingerprint(job, shards, chunk_elements)
        partial = partial_folder(output)
        completed = prepare_partial(partial, run_fingerprint)
        try:
            check_free_space(partial, shards, completed)
            target = OutputTarget(
                shards,
                ShardWriter(partial, shards),
                completed,
                on_shard_finished=lambda finished: write_journal(
                    partial, run_fingerprint, finished
                ),
            )
            stats = run_pipeline(job, target, settings)
            try:
                write_index(partial, shards)
                sources = write_model_files(partial, job)
            except OSError as error:
                raise output_error(Path(error.filename or partial), error) from None
            run = MergeRun(started, stats, shards, sources, len(completed), hash_inputs)
            report = merge_report(job, run)
            try:
                (partial / "merge.json").write_text(json.dumps(report, indent=2) + "\n")
                (partial / "recipe.yaml").write_text(resolved_recipe(job))
            except OSError as error:
                raise output_error(Path(error.filename or partial), error) from None
            (partial / JOURNAL).unlink(missing_ok=True)
            replace_folder(partial, output, overwrite=overwrite)
        except MergemedError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return MergeResult(
        output=output,
        seconds=time.time() - started,
        output_bytes=sum(s.file_bytes for s in shards),
        tensors=len(job.plan.tasks),
        shards=len(shards),
        resumed_shards=len(completed),
        report=report,
    )


@dataclass
class InMemoryMerge:
    """A merge held in memory: the tensors, and a folder with everything but the weights
    (config, tokenizer, chat template, resolved recipe) that lives until :meth:`cleanup`."""

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    folder: Path
    recipe: Recipe
    seconds: float
    _holder: tempfile.TemporaryDirectory = field(repr=False)
    task_keys: dict[str, str] = field(default_factory=dict, repr=False)
    """Output tensor -> what its values depend on (``pipeline.task_key``), for ``reuse``."""
    reused: int = 0
    """How many tensors were taken from the ``reuse`` merge instead of recomputed."""

    def cleanup(self) -> None:
        """Remove the metadata folder."""
        self._holder.cleanup()


def merge_to_memory(
    recipe: Recipe | str | Path,
    *,
    device: str = "cpu",
    allow_pickle: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: ProgressCallback | None = None,
    on_start: StartCallback | None = None,
) -> InMemoryMerge:
    """Merge a recipe into tensors in memory, writing no weights to disk.

    Same arithmetic as :func:`merge` (the tensors equal those :func:`merge` writes), for
    evaluating a recipe without keeping its output. The returned folder (a temporary
    directory) holds the config, tokenizer and chat template the written merge would have.

    Raises:
        MergemedError: bad recipe or models.
    """
    started = time.time()
    options = MergeOptions(allow_pickle=allow_pickle, device=device)
    with prepare_merge(recipe, options=options) as job:
        merged = merge_job_to_memory(job, PipelineSettings(chunk_elements, progress, on_start))
    merged.seconds = time.time() - started
    return merged


def merge_job_to_memory(
    job: MergeJob,
    settings: PipelineSettings | None = None,
    *,
    reuse: InMemoryMerge | None = None,
) -> InMemoryMerge:
    """Merge a prepared job (see :meth:`MergeJob.replan`) into tensors in memory.

    Args:
        job: the prepared merge; it stays open.
        settings: slicing and progress callbacks.
        reuse: an earlier merge over the same opened models (the previous candidate of a
            search): every tensor whose inputs and parameters are unchanged is taken from it
            instead of recomputed (shared, not copied; the values are equal by construction).

    Returns:
        An :class:`InMemoryMerge`, as :func:`merge_to_memory` gives.

    Raises:
        MergemedError: a model cannot be read or the merge produced NaN or Inf values.
    """
    started = time.time()
    keys = {task.name: task_key(job, task) for task in job.plan.tasks}
    reused = {}
    if reuse is not None:
        reused = {
            name: reuse.state_dict[name]
            for name, key in keys.items()
            if reuse.task_keys.get(name) == key and name in reuse.state_dict
        }
    holder = tempfile.TemporaryDirectory(prefix="mergemed-in-memory-")
    try:
        shards = layout_shards(job.output_tensors(), IN_MEMORY_SHARD_BYTES)
        sink = MemorySink()
        target = OutputTarget(shards, sink, reused=reused)
        run_pipeline(job, target, settings or PipelineSettings())
        folder = Path(holder.name)
        write_model_files(folder, job)
        (folder / "recipe.yaml").write_text(resolved_recipe(job))
    except BaseException:
        holder.cleanup()
        raise
    return InMemoryMerge(
        sink.tensors, folder, job.recipe, time.time() - started, holder, keys, len(reused)
    )
