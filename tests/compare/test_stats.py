"""Float64 sums and the metrics made from them (:mod:`mergemed.compare.stats`): closed forms,
and blocked summation against one pass over whole vectors."""

from __future__ import annotations

import math

import pytest
import torch

from mergemed.compare.stats import BlockAccumulator, Sums, accumulate


def sums_of(a: list[float], b: list[float], c: list[float] | None = None) -> Sums:
    """The sums of A, B (and C) given as plain lists, in one pass."""
    sums = Sums()
    tensors = [torch.tensor(values, dtype=torch.float64) for values in (a, b)]
    base = None if c is None else torch.tensor(c, dtype=torch.float64)
    accumulate(sums, *tensors, base)
    return sums


def test_cosine_of_a_vector_with_itself_is_1() -> None:
    metrics = sums_of([0.3, -1.7, 2.5, 1e-3], [0.3, -1.7, 2.5, 1e-3]).metrics(with_base=False)
    assert metrics["cosine"] == 1.0
    assert metrics["relative_change"] == 0.0
    assert metrics["elements"] == 4


def test_cosine_of_orthogonal_vectors_is_0() -> None:
    assert sums_of([1.0, 2.0, 0.0], [-2.0, 1.0, 5.0]).metrics(False)["cosine"] == 0.0


def test_cosine_of_opposite_vectors_is_minus_1() -> None:
    assert sums_of([1.0, -3.0], [-2.0, 6.0]).metrics(False)["cosine"] == pytest.approx(-1.0)


def test_relative_change_of_x_against_2x_is_one_half() -> None:
    x = [0.5, -1.25, 3.0, 7.0]
    metrics = sums_of(x, [2 * v for v in x]).metrics(False)
    assert metrics["relative_change"] == pytest.approx(0.5, rel=1e-15)
    assert metrics["cosine"] == pytest.approx(1.0, rel=1e-15)


def test_task_angle_of_opposite_task_vectors_is_180_degrees() -> None:
    base = [1.0, 2.0, -1.0]
    delta = [0.25, -0.5, 1.0]
    a = [c + d for c, d in zip(base, delta, strict=True)]
    b = [c - d for c, d in zip(base, delta, strict=True)]
    metrics = sums_of(a, b, base).metrics(with_base=True)
    assert metrics["task_cosine"] == pytest.approx(-1.0)
    assert metrics["task_angle"] == pytest.approx(180.0)
    size = math.sqrt(sum(d * d for d in delta) / sum(c * c for c in base))
    assert metrics["task_change_a"] == pytest.approx(size)
    assert metrics["task_change_b"] == pytest.approx(size)


def test_orthogonal_task_vectors_are_90_degrees_apart() -> None:
    metrics = sums_of([2.0, 1.0], [1.0, 2.0], [1.0, 1.0]).metrics(with_base=True)
    assert metrics["task_angle"] == pytest.approx(90.0)


def test_undefined_metrics_are_none() -> None:
    zero = sums_of([0.0, 0.0], [1.0, 2.0]).metrics(with_base=True)
    assert zero["cosine"] is None and zero["relative_change"] == pytest.approx(1.0)
    assert zero["task_angle"] is None and zero["task_change_a"] is None  # no base elements
    poisoned = sums_of([math.nan, 1.0], [1.0, 1.0])
    assert not poisoned.finite
    assert poisoned.metrics(False) == {"elements": 2, "cosine": None, "relative_change": None}


def test_sums_add_up_to_the_sums_of_the_concatenation() -> None:
    first, second = sums_of([1.0, 2.0], [3.0, -1.0]), sums_of([0.5], [0.25])
    first.add(second)
    assert first == sums_of([1.0, 2.0, 0.5], [3.0, -1.0, 0.25])


@pytest.mark.parametrize("block", [1, 7, 1000])
def test_blocked_float32_sums_match_one_pass_in_float64(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(500, generator=generator) for _ in range(3))
    with_base = 300  # only the first 300 elements have a base value
    # Not a mock: a smaller block size, so the blocked float64 summation path is exercised.
    monkeypatch.setattr("mergemed.compare.stats.COMPUTE_BLOCK_ELEMENTS", block)
    accumulator = BlockAccumulator(chunk_elements=500)
    assert len(accumulator.scratch["a"]) == min(block, 500)
    blocked = Sums()
    accumulator.fold(blocked, a, b, c, count=500, with_base=with_base)

    expected = Sums()
    a64, b64, c64 = a.double(), b.double(), c.double()
    accumulate(expected, a64[:with_base].clone(), b64[:with_base].clone(), c64[:with_base])
    accumulate(expected, a64[with_base:].clone(), b64[with_base:].clone(), None)
    assert blocked.elements == 500 and blocked.base_elements == with_base
    for name, value in vars(expected).items():
        assert getattr(blocked, name) == pytest.approx(value, rel=1e-12), name
    assert torch.equal(a, a64.float()), "fold must not modify its inputs"
