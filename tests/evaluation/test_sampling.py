"""Fair --limit subsets: stratified by label, seeded, the same for every model."""

from __future__ import annotations

import collections

import pytest

from mergemed.evaluation.sampling import (
    draw_sample,
    sample_size,
    stratified_indices,
    task_labels,
    uniform_indices,
)
from mergemed.evaluation.suites import task_manager

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def pubmedqa():
    return task_manager(names=None).load(["mm_pubmedqa"])["tasks"]["mm_pubmedqa"]


@pytest.mark.parametrize("limit", [10, 30, 100, 0.1, 277])
def test_pubmedqa_subsets_hold_every_label_in_proportion(pubmedqa, limit) -> None:
    labels = task_labels(pubmedqa)
    counts = collections.Counter(labels)
    assert counts == {"yes": 276, "no": 169, "maybe": 55}  # the shipped file's labels
    indices = draw_sample(pubmedqa, limit)
    n = sample_size(limit, len(labels))
    assert len(indices) == n == len(set(indices))
    drawn = collections.Counter(labels[i] for i in indices)
    for label, total in counts.items():
        assert abs(drawn[label] - n * total / len(labels)) <= 1, (label, drawn)


def test_the_first_n_documents_would_be_yes_only(pubmedqa) -> None:
    # Why lm-eval's own limit is not used: the shipped file is sorted by label.
    labels = task_labels(pubmedqa)
    assert set(labels[:276]) == {"yes"}


def test_a_sample_depends_on_seed_and_task_only(pubmedqa) -> None:
    first = draw_sample(pubmedqa, 30)
    assert draw_sample(pubmedqa, 30) == first
    assert draw_sample(pubmedqa, 30, seed=99) != first
    assert draw_sample(pubmedqa, 500) is None  # the whole task: no sample


def test_stratified_and_uniform_closed_cases() -> None:
    labels = ["a"] * 6 + ["b"] * 3 + ["c"]
    chosen = stratified_indices(labels, 5, seed=0)
    counts = collections.Counter(labels[i] for i in chosen)
    assert counts == {"a": 3, "b": 1, "c": 1} or counts == {"a": 3, "b": 2}
    assert chosen == sorted(chosen)
    assert stratified_indices(labels, 10, seed=0) == list(range(10))
    assert uniform_indices(10, 4, seed=1) == uniform_indices(10, 4, seed=1)
    assert len(set(uniform_indices(1000, 50, seed=2))) == 50


def test_generation_tasks_are_not_classification() -> None:
    task = task_manager(names=None).load(["ifeval_med"])["tasks"]["ifeval_med"]
    assert task_labels(task) is None
    indices = draw_sample(task, 20)
    assert len(indices) == 20 and max(indices) < len(task.eval_docs)
