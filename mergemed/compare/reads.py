"""Which tensors of A, B and the base C are compared with which, and reading them once.

:func:`plan_reads` pairs the tensors up (a tied model's embeddings stand in for its lm_head,
vocabulary tensors whose row counts differ are compared over their common rows) and groups
them into read jobs (:class:`ReadJob`) in A's file order. :func:`stream_reads` then reads
every job's tensors once, slice by slice, the way the merge engine reads them: a reader thread
fetches the next slices (``Checkpoint.read``, ``preadv``) while the calling thread folds the
current ones into float64 sums. Memory stays at a few slices whatever the model size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from mergemed.compare.components import VOCABULARY_COMPONENTS, tensor_component
from mergemed.compare.report import LayoutDifferences, TensorComparison
from mergemed.compare.stats import BlockAccumulator
from mergemed.engine.stages import run_stages
from mergemed.io.checkpoint import Checkpoint

EMBEDDING_NAMES = ("model.embed_tokens.weight", "transformer.wte.weight")
"""Where the usual architectures keep their input embeddings (tried before any other name)."""

ProgressCallback = Callable[[int, str], None]
"""Called with (bytes just read, tensor name) while streaming."""


@dataclass
class ReadJob:
    """Tensors read together, slice by slice, and the comparisons fed from them."""

    sources: dict[tuple[str, str], int] = field(default_factory=dict)
    """(role, tensor name) -> elements to read."""
    comparisons: list[TensorComparison] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Elements of the longest source (the job is read in slices up to this)."""
        return max(self.sources.values(), default=0)


@dataclass
class ReadPlan:
    """What :func:`plan_reads` decided: the jobs to read, and what could not be paired."""

    jobs: list[ReadJob]
    layout: LayoutDifferences

    @property
    def comparisons(self) -> list[TensorComparison]:
        """Every comparison, in read order."""
        return [comparison for job in self.jobs for comparison in job.comparisons]

    def total_bytes(self, checkpoints: dict[str, Checkpoint]) -> int:
        """Bytes :func:`stream_reads` will read from ``checkpoints`` (by role)."""
        return sum(
            needed * checkpoints[role].tensors[name].dtype.itemsize
            for job in self.jobs
            for (role, name), needed in job.sources.items()
        )


def _embedding_name(checkpoint: Checkpoint) -> str | None:
    for name in EMBEDDING_NAMES:
        if name in checkpoint.tensors:
            return name
    return next((n for n in checkpoint.tensors if tensor_component(n)[1] == "embed_tokens"), None)


def _lm_head_name(checkpoint: Checkpoint) -> str | None:
    return next((n for n in checkpoint.tensors if n.endswith("lm_head.weight")), None)


def _effective_names(checkpoint: Checkpoint) -> tuple[dict[str, str], list[str], bool]:
    """Map each reported tensor name to the tensor to read; the skipped duplicates; tied?

    A tied model (``tie_word_embeddings``, or no lm_head saved) reads its embeddings as its
    lm_head, as the merge engine does. A saved lm_head of a tied model is a duplicate and is
    skipped.
    """
    names = {name: name for name in checkpoint.tensors}
    embedding, lm_head = _embedding_name(checkpoint), _lm_head_name(checkpoint)
    tied = embedding is not None and (checkpoint.tie_word_embeddings or lm_head is None)
    skipped = []
    if tied and lm_head is not None:
        del names[lm_head]
        skipped.append(lm_head)
    if tied and embedding is not None:
        names[lm_head or "lm_head.weight"] = embedding
    return names, skipped, tied


def _compared_elements(name: str, shapes: list[tuple[int, ...]]) -> tuple[int, str | None] | None:
    """Elements to compare for tensors of these shapes (a leading block of rows for vocabulary
    tensors whose row counts differ), with a note; None when they cannot be compared."""
    if all(shape == shapes[0] for shape in shapes):
        return math.prod(shapes[0]), None
    _, component = tensor_component(name)
    if (
        component in VOCABULARY_COMPONENTS
        and all(len(shape) == len(shapes[0]) >= 1 for shape in shapes)
        and all(shape[1:] == shapes[0][1:] for shape in shapes)
    ):
        rows = min(shape[0] for shape in shapes)
        counts = "/".join(str(shape[0]) for shape in shapes)
        return (
            rows * math.prod(shapes[0][1:]),
            f"vocabulary rows differ ({counts}): compared the first {rows} rows",
        )
    return None


def _tied_notes(
    checkpoints: dict[str, Checkpoint],
    effective: dict[str, dict[str, str]],
    skipped: dict[str, list[str]],
    tied: dict[str, bool],
) -> list[str]:
    """Notes on tied lm_heads; drops lm_head from ``effective`` when A and B are both tied."""
    notes = []
    tied_roles = [role for role in ("a", "b") if tied[role]]
    if len(tied_roles) == 2:
        for role in checkpoints:
            effective[role].pop(_lm_head_name(checkpoints[role]) or "lm_head.weight", None)
        notes.append(
            "lm_head is tied to embed_tokens in both models: reported once, as embed_tokens"
        )
    elif tied_roles:
        for role in tied_roles:
            notes.append(
                f"model {role.upper()} ties lm_head to embed_tokens: its embeddings stand in for "
                "its lm_head (as in a merge)"
            )
    for role, names in skipped.items():
        for name in names:
            notes.append(
                f"{name} of {'the base' if role == 'base' else role.upper()} skipped: a duplicate "
                "of its embeddings (tie_word_embeddings)"
            )
    return notes


def plan_reads(checkpoints: dict[str, Checkpoint]) -> ReadPlan:
    """Decide what to compare and group it into read jobs, in A's file order.

    Args:
        checkpoints: the open models by role: ``a``, ``b`` and optionally ``base``.

    Returns:
        The jobs (a tensor read by several comparisons is in one job, read once) and the
        tensors that could not be paired (only in one model, missing in the base, other shapes).
    """
    from mergemed.schedule import component_of

    effective: dict[str, dict[str, str]] = {}
    skipped: dict[str, list[str]] = {}
    tied: dict[str, bool] = {}
    for role, checkpoint in checkpoints.items():
        effective[role], skipped[role], tied[role] = _effective_names(checkpoint)
    has_base = "base" in checkpoints
    layout = LayoutDifferences(notes=_tied_notes(checkpoints, effective, skipped, tied))
    layout.only_in_a = [n for n in effective["a"] if n not in effective["b"]]
    layout.only_in_b = [n for n in effective["b"] if n not in effective["a"]]
    jobs: list[ReadJob] = []
    job_of_source: dict[tuple[str, str], ReadJob] = {}

    def position(name: str) -> tuple[str, int]:
        info = checkpoints["a"].tensors[effective["a"][name]]
        return str(info.file), info.start

    for name in sorted((n for n in effective["a"] if n in effective["b"]), key=position):
        sources = {"a": effective["a"][name], "b": effective["b"][name]}
        shapes = [checkpoints[r].tensors[sources[r]].shape for r in ("a", "b")]
        compared = _compared_elements(name, shapes)
        if compared is None:
            layout.shape_mismatches.append(
                {"name": name, "a": list(shapes[0]), "b": list(shapes[1])}
            )
            continue
        elements, note = compared
        base_shape, base_elements = None, 0
        if has_base:
            base_source = effective["base"].get(name)
            if base_source is None:
                layout.missing_in_base.append(name)
            else:
                base_shape = checkpoints["base"].tensors[base_source].shape
                with_base = _compared_elements(name, [*shapes, base_shape])
                if with_base is None:
                    mismatch = {"name": name, "a": list(shapes[0]), "b": list(shapes[1])}
                    layout.shape_mismatches.append({**mismatch, "base": list(base_shape)})
                else:
                    base_elements = with_base[0]
                    sources["base"] = base_source
                    if base_elements < elements:
                        rows = base_elements // max(1, math.prod(shapes[0][1:]))
                        note = (note + "; " if note else "") + (
                            f"the base has {base_shape[0]} rows: task vectors use the first {rows}"
                        )
        layer, component = tensor_component(name)
        comparison = TensorComparison(
            name=name,
            layer=layer,
            component=component,
            group=component_of(name),
            shape_a=shapes[0],
            shape_b=shapes[1],
            shape_base=base_shape,
            source_a=sources["a"],
            source_b=sources["b"],
            source_base=sources.get("base"),
            elements=elements,
            base_elements=base_elements,
            note=note,
        )
        keys = [(role, tensor) for role, tensor in sources.items()]
        job = next((job_of_source[key] for key in keys if key in job_of_source), None)
        if job is None:
            job = ReadJob()
            jobs.append(job)
        job.comparisons.append(comparison)
        for key in keys:
            needed = base_elements if key[0] == "base" else elements
            job.sources[key] = max(job.sources.get(key, 0), needed)
            job_of_source[key] = job
    return ReadPlan(jobs, layout)


READER_THREAD = "mergemed-inspect-reader"
"""Name of the thread that reads the models' slices."""


def stream_reads(
    jobs: list[ReadJob],
    checkpoints: dict[str, Checkpoint],
    chunk_elements: int,
    progress: ProgressCallback | None,
) -> int:
    """Read every job's tensors once, slice by slice, and fill in the comparisons' sums.

    The engine's staged threads (:func:`~mergemed.engine.stages.run_stages`) do the work: a
    reader thread (``mergemed-inspect-reader``) reads, job by job, slices of ``chunk_elements``
    elements of every source of the job (``Checkpoint.read`` is safe from another thread) into
    a short queue; the calling thread folds each into the sums in float64
    (:class:`BlockAccumulator`).

    Args:
        jobs: what to read, from :func:`plan_reads`; each job's comparisons get their sums.
        checkpoints: the open models by role (``a``, ``b``, ``base``).
        chunk_elements: elements of a tensor read at a time.
        progress: called on the calling thread with (bytes, tensor name) per slice received.

    Returns:
        The bytes read.

    Raises:
        BaseException: whatever the reader raised (e.g. a ``CheckpointError``), re-raised on the
            calling thread once the reader has stopped. An exception on the calling thread (from
            ``progress``, say) stops the reader and propagates instead.
    """
    bytes_read = 0
    accumulator = BlockAccumulator(chunk_elements)

    def read_slices() -> Iterator[tuple[ReadJob, int, dict[tuple[str, str], torch.Tensor]]]:
        for job in jobs:
            for start in range(0, max(job.length, 1), chunk_elements):
                read = {}
                for (role, name), needed in job.sources.items():
                    count = min(chunk_elements, needed - start)
                    if count > 0:
                        read[(role, name)] = checkpoints[role].read(name, start, count)
                yield job, start, read

    def fold(entry: tuple[ReadJob, int, dict[tuple[str, str], torch.Tensor]]) -> None:
        nonlocal bytes_read
        job, start, read = entry
        for (_, name), values in read.items():
            size = values.numel() * values.element_size()
            bytes_read += size
            if progress:
                progress(size, name)
        for comparison in job.comparisons:
            count = min(chunk_elements, comparison.elements - start)
            if count <= 0:
                continue
            with_base = 0
            if comparison.source_base is not None:
                with_base = max(0, min(count, comparison.base_elements - start))
            accumulator.fold(
                comparison.sums,
                read[("a", comparison.source_a)].reshape(-1),
                read[("b", comparison.source_b)].reshape(-1),
                read[("base", comparison.source_base)].reshape(-1) if with_base else None,
                count,
                with_base,
            )

    run_stages(read_slices(), fold, names=(READER_THREAD, READER_THREAD))
    return bytes_read
