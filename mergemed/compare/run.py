"""``inspect_models``: open the models, plan the reads, stream them once, build the report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergemed.compare.configs import check_comparable, compare_configs
from mergemed.compare.plot import plot_heatmap
from mergemed.compare.reads import ProgressCallback, plan_reads, stream_reads
from mergemed.compare.report import InspectReport, display_order, merge_verdict
from mergemed.compare.stats import DEFAULT_CHUNK_ELEMENTS
from mergemed.engine import compute_threads
from mergemed.errors import CheckpointError, InspectError, OutputError
from mergemed.io.checkpoint import Checkpoint
from mergemed.io.hub import resolve_model_folder


def inspect_models(
    model_a: str | Path,
    model_b: str | Path,
    *,
    base: str | Path | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    allow_pickle: bool = False,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
) -> InspectReport:
    """Compare two checkpoints tensor by tensor, reading each once in bounded memory.

    Args:
        model_a: folder or Hugging Face Hub id of the first model.
        model_b: the second model; relative change is measured against it (``|A-B| / |B|``).
        base: a common ancestor C; adds the angle between task vectors ``A-C`` and ``B-C``.
        chunk_elements: tensors are compared this many elements at a time.
        allow_pickle: permit ``.bin``/``.pt`` weights (unpickling can run code from the file).
        json_path: write :meth:`InspectReport.to_json` here when done.
        plot_path: draw :func:`~mergemed.compare.plot.plot_heatmap` here when done.
        progress: called with (bytes read, tensor name) while streaming.
        on_start: called once with the total bytes that will be read.

    Returns:
        An :class:`InspectReport`: per tensor, per layer and component, the config differences
        that matter for merging and whether a plain merge is possible.

    Raises:
        CheckpointError: a model folder is missing or unreadable.
        InspectError: the models have different architectures or hidden sizes.
        OutputError: ``json_path`` or ``plot_path`` cannot be written (checked before reading).

    Nothing is written unless the comparison succeeds.
    """
    if chunk_elements < 1:
        raise InspectError(f"chunk_elements: expected at least 1, got {chunk_elements}")
    json_path = _check_output_file(json_path, "--json")
    plot_path = _check_output_file(plot_path, "--plot")
    started = time.perf_counter()
    references = {"a": str(model_a), "b": str(model_b)}
    if base is not None:
        references["base"] = str(base)
    checkpoints: dict[str, Checkpoint] = {}
    try:
        for role, reference in references.items():
            checkpoints[role] = _open(reference, role, allow_pickle)
        check_comparable(checkpoints["a"], checkpoints["b"], "A", "B")
        if "base" in checkpoints:
            check_comparable(checkpoints["a"], checkpoints["base"], "A", "the base")
        plan = plan_reads(checkpoints)
        differences = compare_configs(
            checkpoints["a"].config,
            checkpoints["b"].config,
            checkpoints["base"].config if "base" in checkpoints else None,
        )
        num_layers = {role: checkpoint.num_layers for role, checkpoint in checkpoints.items()}
        blockers, cautions = merge_verdict(num_layers, plan.layout, plan.comparisons, differences)
        vocabulary = _compare_vocabularies(checkpoints["a"], checkpoints["b"])
        if not vocabulary["identical"]:
            blockers = [b for b in blockers if "align the tokenizers" not in b]
            blockers.append(
                f"vocabularies differ ({vocabulary['summary']}): add `tokenizer: {{source: "
                "union}` (or `{source: base}`) to the recipe to align them"
            )
        if on_start:
            on_start(plan.total_bytes(checkpoints))
        with compute_threads():
            bytes_read = stream_reads(plan.jobs, checkpoints, chunk_elements, progress)
    finally:
        for checkpoint in checkpoints.values():
            checkpoint.close()
    tensors = sorted(plan.comparisons, key=display_order)
    layout = plan.layout
    broken = [t.name for t in tensors if not t.sums.finite]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        layout.notes.append(f"NaN or Inf values in {broken[0]}{more}: no numbers for them")
    report = InspectReport(
        model_a=references["a"],
        model_b=references["b"],
        base=references.get("base"),
        folders={role: str(checkpoint.folder) for role, checkpoint in checkpoints.items()},
        tensors=tensors,
        only_in_a=layout.only_in_a,
        only_in_b=layout.only_in_b,
        missing_in_base=layout.missing_in_base,
        shape_mismatches=layout.shape_mismatches,
        config_differences=differences,
        plain_merge_possible=not blockers,
        merge_blockers=blockers,
        merge_cautions=cautions,
        notes=layout.notes,
        num_layers=num_layers,
        seconds=time.perf_counter() - started,
        bytes_read=bytes_read,
        chunk_elements=chunk_elements,
        vocabulary=vocabulary,
    )
    if plot_path is not None:
        plot_heatmap(report, plot_path)
    if json_path is not None:
        report.write_json(json_path)
    return report


def _open(reference: str, role: str, allow_pickle: bool) -> Checkpoint:
    try:
        folder = resolve_model_folder(reference)
        return Checkpoint(folder, reference, allow_pickle=allow_pickle)
    except CheckpointError as error:
        raise CheckpointError(f"{'base' if role == 'base' else role.upper()}: {error}") from None


def _compare_vocabularies(a: Checkpoint, b: Checkpoint) -> dict[str, Any]:
    """The token-level vocabulary comparison of A with B (the reference), as JSON."""
    from mergemed.vocabulary import compare_vocabularies, read_vocabularies

    parents = read_vocabularies({"A": a, "B": b})
    return compare_vocabularies(parents, "B").to_json()


def _check_output_file(path: str | Path | None, option: str) -> Path | None:
    """Refuse an output file that cannot be written, before any work is done."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; expected a file name")
    if not path.parent.is_dir():
        raise OutputError(f"{option} {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{option} {path}: folder {path.parent} is not writable")
    return path
