"""Fair subsets for ``--limit``: a seeded sample of each task's documents, the same for every
model in a comparison.

lm-eval's ``limit`` takes the *first* N documents of whatever a task loads; on a file sorted by
label (PubMedQA's test split is 276 "yes", then 169 "no", then 55 "maybe") any N ≤ 276 scores
yes-bias only. Instead, mergemed draws the documents itself and hands lm-eval their indices
(``simple_evaluate(samples=...)``):

* classification tasks (``multiple_choice`` with a target per document) are sampled
  *stratified by label*: each label gets its share of N by largest remainder, and its
  documents are drawn with a seeded generator;
* other tasks get a seeded uniform sample without replacement.

The sample depends only on the task's documents, N and the seed, never on the model, so every
model in a comparison answers the same questions; its document ids are stored with each result.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Hashable, Sequence
from typing import Any

DEFAULT_SEED = 1234


def sample_size(limit: float, total: int) -> int:
    """How many documents ``limit`` asks for, as lm-eval reads it (a fraction below 1 of the
    documents, rounded up, else a count), at most ``total``."""
    count = math.ceil(total * limit) if limit < 1 else int(limit)
    return min(count, total)


def stratified_indices(labels: Sequence[Hashable], count: int, seed: int) -> list[int]:
    """``count`` indices into ``labels``, each label holding its share (largest remainder),
    drawn with ``random.Random`` seeded by ``seed``; returned in ascending order."""
    if count >= len(labels):
        return list(range(len(labels)))
    groups: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    quotas = {label: count * len(members) / len(labels) for label, members in groups.items()}
    shares = {label: math.floor(quota) for label, quota in quotas.items()}
    left = count - sum(shares.values())
    by_remainder = sorted(groups, key=lambda label: (-(quotas[label] - shares[label]), str(label)))
    for label in by_remainder[:left]:
        shares[label] += 1
    generator = random.Random(seed)
    chosen: list[int] = []
    for label in sorted(groups, key=str):
        chosen += generator.sample(groups[label], shares[label])
    return sorted(chosen)


def uniform_indices(total: int, count: int, seed: int) -> list[int]:
    """``count`` distinct indices below ``total``, seeded, in ascending order."""
    if count >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), count))


def task_labels(task: Any) -> list[Hashable] | None:
    """The gold label of each evaluation document of an lm-eval task, or None when the task
    is not a classification (not multiple choice, or its targets are not labels)."""
    if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice":
        return None
    labels: list[Hashable] = []
    for doc in task.eval_docs:
        target = task.doc_to_target(doc)
        if isinstance(target, list):
            return None  # several gold answers per document: not a label
        if isinstance(target, int):
            choices = task.doc_to_choice(doc)
            target = choices[target] if 0 <= target < len(choices) else target
        labels.append(target)
    return labels


def draw_sample(
    task: Any, limit: float, seed: int = DEFAULT_SEED, group: str | None = None
) -> list[int] | None:
    """The document indices a ``--limit`` evaluation of ``task`` runs, or None for all of
    them (``limit`` covers the whole task). Tasks drawn under one ``group`` name (default:
    the task's name) over the same labels get the same documents."""
    total = len(task.eval_docs)
    count = sample_size(limit, total)
    if count >= total:
        return None
    labels = task_labels(task)
    name = group or (getattr(task, "config", None) and task.config.task)
    task_seed = _task_seed(seed, name)
    if labels is not None:
        return stratified_indices(labels, count, task_seed)
    return uniform_indices(total, count, task_seed)


def _task_seed(seed: int, name: str | None) -> int:
    # One seed per task, so adding a task to a run does not change another task's sample.
    digest = hashlib.sha256(f"{seed}\0{name or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def sample_fingerprint(indices: Sequence[int] | None) -> str | None:
    """A short hash of a sample's indices (part of the results-store key)."""
    if indices is None:
        return None
    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()[:16]
