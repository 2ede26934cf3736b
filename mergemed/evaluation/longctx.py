"""Long-context lengths a model can take: skip them with a reason instead of truncating.

``pubmedqa_longctx`` (``evaluations/forgetting/pubmedqa_longctx/``) asks each PubMedQA test
question at four haystack lengths. Its prompts are sized by a tokenizer-free estimate
(characters / 4), so how many tokens they really are depends on the model's tokenizer; and when
a prompt and its answer are longer than the model's maximum, lm-eval's HFLM cuts tokens from the
*left* of the prompt (the instruction and the first documents, possibly the gold one) with only a
logged warning per request, and scores what is left. :func:`lengths_that_fit` measures the real
token counts first, so that mergemed runs only the lengths that fit and reports the others as
skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

GROUP = "pubmedqa_longctx"

LENGTHS = {
    "pubmedqa_longctx_1k": 1024,
    "pubmedqa_longctx_4k": 4096,
    "pubmedqa_longctx_8k": 8192,
    "pubmedqa_longctx_16k": 16384,
}
"""Subtask -> target length in estimated tokens (characters / 4)."""

ANSWERS = ("yes", "no", "maybe")
"""The answer choices, each scored after a space (lm-eval's ``target_delimiter``)."""

DEFAULT_MAX_LENGTH = 2048
"""What lm-eval's HFLM uses when neither the config nor the tokenizer gives a length."""

_SEQLEN_CONFIG_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")
_TOKENIZER_UNSET = 10**9
"""``tokenizer.model_max_length`` at or above this means "not set" (transformers uses 1e30)."""

_BATCH = 16

log = logging.getLogger("mergemed.evaluation.longctx")


def model_max_length(config: Any, tokenizer: Any = None, default: int = DEFAULT_MAX_LENGTH) -> int:
    """The longest input, in tokens, that lm-eval's HFLM gives the model when it is not told.

    Same order as lm-eval 0.4.13's ``resolve_max_length`` (what HFLM truncates to): the
    config's ``text_config`` if any, else the config itself, first of ``n_positions``,
    ``max_position_embeddings``, ``n_ctx``; then ``tokenizer.model_max_length`` when it is
    meaningful (transformers' "unset" value is about 1e30); then ``default``. The config comes
    first because it states what the model can attend to; tokenizers often carry a stale
    or smaller value (the tiny test tokenizer says 2048 for a 4096-position model).
    When HFLM is given ``max_length=N``, that N is what counts instead.
    """
    cfg = getattr(config, "text_config", None) or config
    for attr in _SEQLEN_CONFIG_ATTRS:
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _TOKENIZER_UNSET:
        return value
    return default


def expand(task_names: Iterable[str]) -> list[str]:
    """The names with ``pubmedqa_longctx`` replaced by its four subtasks (repeats dropped)."""
    names: list[str] = []
    for name in task_names:
        for task in LENGTHS if name == GROUP else (name,):
            if task not in names:
                names.append(task)
    return names


def lengths_that_fit(
    task_names: Iterable[str],
    tokenizer: Any,
    max_length: int,
    *,
    limit: float | None = None,
    data_dir: str | Path | None = None,
    samples: Mapping[str, Sequence[int] | None] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Split the requested tasks into those to run and the long-context ones that do not fit.

    ``pubmedqa_longctx`` stands for its four subtasks. A subtask is kept when every prompt that
    will be evaluated, followed by a space and the longest answer (in tokens), encodes with
    ``tokenizer`` (special tokens included, as HFLM encodes by default) to at most
    ``max_length`` tokens. All its prompts are measured (the first ``limit`` only, when given
    as lm-eval's ``limit``: a count, or a fraction below 1), longest in characters first, and
    measuring stops at the first one that does not fit. Other task names pass through.

    Args:
        task_names: lm-eval task or group names.
        tokenizer: the model's ``transformers`` tokenizer.
        max_length: the model's maximum (:func:`model_max_length`, or HFLM's ``max_length``).
        limit: lm-eval's ``limit``, if the evaluation will use one.
        data_dir: the evaluation's local data folder (the task reads ``<data_dir>/pubmedqa``).
        samples: task -> the document indices that will run (mergemed's fair subsets), in
            place of ``limit`` for the tasks it names.

    Returns:
        ``(kept, skipped)``: ``kept`` the task names to run, in order, the group expanded;
        ``skipped`` maps each skipped subtask to a one-line reason (its count includes the
        answer; after an early stop it is the largest measured), e.g.
        ``"pubmedqa_longctx_8k: prompts reach 17,919 tokens, above the model's maximum of
        4,096; skipped"``. Each reason is also logged as a warning.
    """
    kept: list[str] = []
    skipped: dict[str, str] = {}
    for task in expand(task_names):
        if task not in LENGTHS:
            kept.append(task)
            continue
        tokens = prompt_tokens(
            task,
            tokenizer,
            limit=limit,
            stop_above=max_length,
            data_dir=data_dir,
            indices=(samples or {}).get(task),
        )
        if tokens <= max_length:
            kept.append(task)
        else:
            reason = (
                f"{task}: prompts reach {tokens:,} tokens, above the model's maximum of "
                f"{max_length:,}; skipped"
            )
            log.warning(reason)
            skipped[task] = reason
    return kept, skipped


def prompt_tokens(
    task: str,
    tokenizer: Any,
    *,
    limit: float | None = None,
    stop_above: int | None = None,
    data_dir: str | Path | None = None,
    indices: Sequence[int] | None = None,
) -> int:
    """Tokens of the subtask's longest prompt plus a space and its longest answer.

    Measures every prompt (or the first ``limit``), longest in characters first; with
    ``stop_above``, returns as soon as one prompt exceeds it: the largest count measured so
    far, a lower bound of the true maximum.
    """
    prompts = _prompts_by_length(LENGTHS[task], limit, data_dir, indices)
    # Every prompt ends with "\nAnswer:", so the answer adds the same tokens to each.
    head = _count(tokenizer, [prompts[0]])[0]
    extra = max(_count(tokenizer, [prompts[0] + " " + a])[0] for a in ANSWERS) - head
    longest = 0
    for start in range(0, len(prompts), _BATCH):
        longest = max(longest, *_count(tokenizer, prompts[start : start + _BATCH]))
        if stop_above is not None and longest + extra > stop_above:
            break
    return longest + extra


def _count(tokenizer: Any, texts: list[str]) -> list[int]:
    ids = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    return [len(x) for x in ids]


def _prompts_by_length(
    target_length: int,
    limit: float | None,
    data_dir: str | Path | None,
    indices: Sequence[int] | None = None,
) -> tuple[str, ...]:
    # Keyed on the folder the data comes from as well.
    folder = str(task_utils().data_dir(data_dir))
    chosen = tuple(indices) if indices is not None else None
    return _sorted_prompts(target_length, limit, folder, chosen)


@functools.lru_cache(maxsize=8)
def _sorted_prompts(
    target_length: int, limit: float | None, data_dir: str, indices: tuple[int, ...] | None
) -> tuple[str, ...]:
    """The prompts lm-eval evaluates (those at ``indices``, else the first ``limit``),
    longest in characters first."""
    docs = task_utils().build_docs(target_length, folder=data_dir)
    if indices is not None:
        docs = [docs[i] for i in indices]
    elif limit is not None:  # as lm-eval: a fraction below 1, else a count
        docs = docs[: math.ceil(len(docs) * limit) if limit < 1 else int(limit)]
    return tuple(sorted((d["prompt"] for d in docs), key=len, reverse=True))


@functools.cache
def task_utils() -> ModuleType:
    """The task's own ``utils.py`` (so measured prompts are exactly those lm-eval evaluates)."""
    from mergemed.evaluation.suites import evaluations_dir

    path = Path(evaluations_dir()) / "forgetting" / GROUP / "utils.py"
    spec = importlib.util.spec_from_file_location("mergemed_pubmedqa_longctx_utils", path)
    if spec is None or spec.loader is None:  # pragma: no cover - a missing file raises below
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
