"""One task through ``lm_eval.simple_evaluate``, and what of its output is kept.

The call is the one a direct lm-eval user makes (same task objects, ``log_samples=True``);
errors inside lm-eval or a task's loader come back as one redacted line; the output is reduced
to the JSON-safe block the results store keeps (scores, version, config, per-sample values).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mergemed.errors import MergemedError
from mergemed.evaluation.candidates import first_line
from mergemed.evaluation.results import ModelEvaluation
from mergemed.redact import redact


def with_new_tokens(gen_kwargs: str | None, cap: int) -> str:
    """``gen_kwargs`` with ``max_gen_toks`` set to ``cap``."""
    items = [i for i in (gen_kwargs or "").split(",") if i.strip()]
    kept = [i for i in items if i.partition("=")[0].strip() != "max_gen_toks"]
    return ",".join([*kept, f"max_gen_toks={cap}"])


def add_block(evaluation: ModelEvaluation, task: str, block: Mapping[str, Any]) -> None:
    """Put a stored or fresh task block into the evaluation's lm-eval-shaped sections."""
    for section, name in (
        ("results", "results"),
        ("versions", "version"),
        ("n-samples", "n-samples"),
        ("configs", "config"),
        ("higher_is_better", "higher_is_better"),
        ("per_sample", "per_sample"),
    ):
        if name in block:
            evaluation.lm_eval.setdefault(section, {})[task] = block[name]


def run_task(lm: Any, task: str, manager: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on one task; lm-eval's failures become one line."""
    import lm_eval

    try:
        output = lm_eval.simple_evaluate(
            model=lm, tasks=[task], task_manager=manager, log_samples=True, **arguments
        )
    except MergemedError:
        raise
    except Exception as error:  # lm-eval and datasets raise many kinds; state it in one line
        raise task_error(task, error) from None
    if output is None or task not in output.get("results", {}):
        raise MergemedError(f"task {task}: lm-eval returned no result")
    return output


def task_error(task: str, error: Exception) -> Exception:
    """What to raise for an error inside lm-eval or a task: one redacted line, or (with
    ``MERGEMED_DEBUG``) the error itself with its traceback and its secrets masked."""
    if isinstance(error, MergemedError):
        return error
    if os.environ.get("MERGEMED_DEBUG"):
        _redact_message(error)
        return error
    return MergemedError(
        redact(f"task {task}: {type(error).__name__}: {first_line(error)}")
        + " (MERGEMED_DEBUG=1 shows the traceback)"
    )


def _redact_message(error: BaseException) -> None:
    """Take secrets out of an error's message and notes (its traceback is kept)."""
    error.args = tuple(redact(a) if isinstance(a, str) else a for a in error.args)
    if getattr(error, "__notes__", None):
        error.__notes__ = [redact(str(note)) for note in error.__notes__]


def task_block(output: Mapping[str, Any], task: str) -> dict[str, Any]:
    """One task's part of lm-eval's output, JSON-safe."""
    block = {
        "results": output["results"][task],
        "version": output.get("versions", {}).get(task),
        "n-samples": output.get("n-samples", {}).get(task),
        "config": output.get("configs", {}).get(task),
        "higher_is_better": output.get("higher_is_better", {}).get(task),
        "per_sample": per_sample_scores(output.get("samples", {}).get(task) or []),
    }
    return json.loads(json.dumps(block, default=str))


def per_sample_scores(logged: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """lm-eval's logged samples reduced to what paired statistics need: ``doc_id`` and, per
    ``metric,filter``, each document's value (in ``doc_id`` order; prompts and responses are
    not kept)."""
    by_filter: dict[str, list[Mapping[str, Any]]] = {}
    for sample in logged:
        by_filter.setdefault(str(sample.get("filter", "none")), []).append(sample)
    scores: dict[str, list[Any]] = {}
    for filter_name, rows in by_filter.items():
        rows = sorted(rows, key=lambda r: r["doc_id"])
        scores.setdefault("doc_id", [r["doc_id"] for r in rows])
        for metric in rows[0].get("metrics", []) if rows else []:
            scores[f"{metric},{filter_name}"] = [r.get(metric) for r in rows]
    return scores


def quiet_lm_eval_logging() -> None:
    """lm-eval warns at every task about things mergemed has settled (custom loaders,
    pretrained objects); its errors still show."""
    if not os.environ.get("MERGEMED_DEBUG"):
        for name in ("lm-eval", "lm_eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
    # The report lists skipped lengths once; the module's own warning would repeat them.
    logging.getLogger("mergemed.evaluation.longctx").setLevel(logging.ERROR)
