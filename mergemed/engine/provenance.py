"""What a merge records about itself: ``merge.json`` (the report) and ``recipe.yaml``."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from typing import Any

import torch

from mergemed import __version__
from mergemed.engine.pipeline import MergeStats
from mergemed.engine.prepare import MergeJob
from mergemed.io.hub import hub_commit
from mergemed.io.writer import Shard
from mergemed.recipe import Recipe


@dataclass
class MergeRun:
    """What one run of a job did, for its report.

    Attributes:
        started: ``time.time()`` when the merge was asked for.
        stats: the pipeline's timings.
        shards: the output layout.
        sources: where config, tokenizer and chat template came from
            (:func:`~mergemed.engine.output.write_model_files`).
        resumed_shards: shards an interrupted run had already written.
        hash_inputs: record the SHA-256 of every input file (reads each once more).
    """

    started: float
    stats: MergeStats
    shards: list[Shard]
    sources: dict[str, Any]
    resumed_shards: int = 0
    hash_inputs: bool = False


def merge_report(job: MergeJob, run: MergeRun) -> dict[str, Any]:
    """The ``merge.json`` of a finished merge.

    Args:
        job: the merge.
        run: what its run did.

    Returns:
        Versions, method, device, timings, every input file (size, header digest, and its
        SHA-256 with ``hash_inputs``), the sources of config and tokenizer, the vocabulary
        alignment, and the output files.
    """
    inputs = {}
    for reference, checkpoint in job.checkpoints.items():
        files = {}
        for file in checkpoint.files():
            entry: dict[str, Any] = {"bytes": file.stat().st_size}
            if file.name in checkpoint.header_digests:
                entry["header_sha256"] = checkpoint.header_digests[file.name]
            if run.hash_inputs:
                entry["sha256"] = checkpoint.file_digest(file)
            files[file.name] = entry
        inputs[reference] = {
            "folder": str(checkpoint.folder),
            "revision": hub_commit(checkpoint.folder),
            "files": files,
        }
    finished = time.time()
    stats, shards = run.stats, run.shards
    return {
        "mergemed_version": __version__,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _package_version("transformers"),
            "safetensors": _package_version("safetensors"),
        },
        "merge_method": job.recipe.merge_method,
        # parameters another method takes, given to this one: ignored, as mergekit does
        "ignored_parameters": job.recipe.ignored_parameters,
        "device": str(job.options.device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(run.started)),
        "seconds": round(finished - run.started, 3),
        "timings_seconds": {
            "read": round(stats.read, 3),
            "compute": round(stats.compute, 3),
            "write": round(stats.write, 3),
        },
        "streamed_tensors": stats.streamed_tensors,
        "resumed_shards": run.resumed_shards,
        "inputs": inputs,
        "sources": run.sources,
        "vocabulary": (
            job.alignment.to_report()
            if job.alignment is not None
            else {"aligned": False, "note": "the parents' vocabularies are identical"}
        ),
        "output": {
            "bytes": sum(s.file_bytes for s in shards),
            "tensors": sum(len(s.tensors) for s in shards),
            "shards": [s.filename for s in shards],
        },
    }


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def resolved_recipe(job: MergeJob) -> str:
    """The recipe with the values the merge used made explicit (method defaults, dtypes,
    tokenizer source, Hub commits, absolute local paths), as YAML for ``recipe.yaml``."""
    recipe = job.recipe
    data = recipe.model_dump(mode="json", exclude_none=True)
    parameters = data.setdefault("parameters", {})
    for parameter in recipe.spec.parameters:
        if (
            parameter.scope == "global"
            and not parameter.required
            and parameter.name not in parameters
        ):
            parameters[parameter.name] = parameter.default
    if not parameters:
        data.pop("parameters")
    if not job.tensor_dtypes:
        # (mixed dtypes follow the parents' promotion; an out_dtype would flatten them)
        data["out_dtype"] = str(job.output_dtype).removeprefix("torch.")
    if "tokenizer" not in data:
        data.setdefault("tokenizer_source", "base")
    pins = {}
    for reference, checkpoint in job.checkpoints.items():
        commit = hub_commit(checkpoint.folder)
        if commit is None:
            # A local folder: absolute, so the recipe written next to the output still finds it.
            pins[reference] = str(checkpoint.folder.absolute())
        elif "@" not in reference:
            pins[reference] = f"{reference}@{commit}"
    text = json.dumps(data)
    for reference, pinned in pins.items():
        text = text.replace(json.dumps(reference), json.dumps(pinned))
    return (
        "# Resolved by mergemed "
        + __version__
        + "; merge it again with `mergemed merge`.\n"
        + (Recipe.model_validate(json.loads(text)).to_yaml())
    )
