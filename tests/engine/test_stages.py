"""Tests of the staged-thread machinery under the merge pipeline: order, bounded memory,
errors raised in the caller from whichever stage met them, and every thread stopped."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from mergemed.engine import compute_threads, run_stages
from mergemed.engine.stages import QUEUE_SIZE
from mergemed.errors import OutputError


def test_items_flow_in_order_through_all_three_threads() -> None:
    threads: dict[str, set[str]] = {"produce": set(), "transform": set(), "consume": set()}
    consumed = []

    def produce():
        for number in range(50):
            threads["produce"].add(threading.current_thread().name)
            yield number

    def transform(number: int):
        threads["transform"].add(threading.current_thread().name)
        return None if number % 5 == 0 else number * 2

    def consume(number: int) -> None:
        threads["consume"].add(threading.current_thread().name)
        consumed.append(number)

    run_stages(produce(), transform, consume, names=("test-reader", "test-writer"))
    assert consumed == [n * 2 for n in range(50) if n % 5]
    assert threads == {
        "produce": {"test-reader"},
        "transform": {threading.current_thread().name},
        "consume": {"test-writer"},
    }


def test_without_a_consumer_results_are_dropped() -> None:
    seen = []
    run_stages(iter(range(7)), seen.append)
    assert seen == list(range(7))


def test_the_producer_runs_at_most_a_few_items_ahead() -> None:
    produced = []
    ahead = []

    def produce():
        for number in range(30):
            produced.append(number)
            yield number

    def transform(number: int) -> None:
        time.sleep(0.002)
        ahead.append(len(produced) - number - 1)

    run_stages(produce(), transform)
    # The queue, plus the item the producer holds while waiting to put it.
    assert max(ahead) <= QUEUE_SIZE + 1


def stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("failing-")]


@pytest.mark.parametrize("where", ["produce", "transform", "consume"])
def test_an_error_in_any_stage_is_raised_here_and_stops_every_thread(where: str) -> None:
    consumed = []

    def produce():
        for number in range(1000):
            if where == "produce" and number == 20:
                raise ValueError("bad read")
            yield number

    def transform(number: int) -> int:
        if where == "transform" and number == 20:
            raise ValueError("bad math")
        return number

    def consume(number: int) -> None:
        if where == "consume" and number == 20:
            raise ValueError("bad write")
        consumed.append(number)

    with pytest.raises(ValueError, match="bad"):
        run_stages(produce(), transform, consume, names=("failing-reader", "failing-writer"))
    assert len(consumed) < 1000
    assert stage_threads() == []


def test_a_consumer_mergemed_error_wins_over_the_callers_error() -> None:
    failed = threading.Event()

    def consume(number: int) -> None:
        failed.set()
        raise OutputError("disk full while writing")

    def transform(number: int) -> int:
        if number > 0:
            # Fails only once the consumer has failed: the caller's error is the echo.
            assert failed.wait(5)
            time.sleep(0.2)
            raise RuntimeError("echo of the full disk")
        return number

    with pytest.raises(OutputError, match="disk full"):
        run_stages(iter(range(100)), transform, consume)


def test_compute_threads_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with compute_threads():
        assert 1 <= torch.get_num_threads() <= 4
    assert torch.get_num_threads() == before
