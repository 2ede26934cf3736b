"""Staged threads: a producer thread, the calling thread, a consumer thread, bounded queues.

:func:`run_stages` is the machinery under the merge pipeline (read -> merge -> write), made
generic so that anything that streams tensors through the same three steps (``mergemed
inspect``'s reader and its sums, say) runs on the same, tested code: short queues keep memory
at a few items, the first error of any stage stops all of them and is raised in the caller,
and :func:`compute_threads` leaves the I/O threads a core.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from mergemed.errors import MergeError, MergemedError

QUEUE_SIZE = 2
"""Items waiting between two stages: enough to overlap them, few enough to bound memory."""

POLL_SECONDS = 0.1
"""How often a blocked stage looks for a stop or a failed neighbour."""

_DONE = object()


class Stage(threading.Thread):
    """A daemon thread that records the first exception it meets in :attr:`error`.

    Args:
        target: what the thread runs.
        name: the thread's name (shown by debuggers and ``py-spy``).
    """

    def __init__(self, target: Callable[[], None], name: str):
        super().__init__(name=name, daemon=True)
        self._target_function = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_function()
        except BaseException as error:
            self.error = error


@contextlib.contextmanager
def compute_threads() -> Iterator[None]:
    """Leave a core to the reader and writer threads while the merge runs.

    torch's OpenMP workers spin-wait at every barrier; competing with the I/O threads for the
    same cores slows elementwise kernels about tenfold on a 2-core machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_stages(
    produce: Iterable[Any],
    transform: Callable[[Any], Any],
    consume: Callable[[Any], None] | None = None,
    *,
    names: tuple[str, str] = ("mergemed-reader", "mergemed-writer"),
) -> None:
    """Run ``produce`` in a thread, ``transform`` here, and ``consume`` in a second thread.

    Items flow through queues of :data:`QUEUE_SIZE`: the producer thread iterates ``produce``
    (the work of producing an item, a read say, happens in that thread), the calling thread
    passes each item to ``transform``, and each result that is not None goes to ``consume``
    in the consumer thread. Without ``consume`` the results are dropped and no second thread
    starts.

    When any stage fails, every stage stops (the queues are drained and the threads joined)
    and the error is raised here. A :class:`MergemedError` of the consumer wins over the
    error the calling thread met meanwhile: a full disk is the news, not its echo.

    Args:
        produce: the items, produced in the producer thread.
        transform: called in the calling thread with each item.
        consume: called in the consumer thread with each result of ``transform``.
        names: the producer's and the consumer's thread names.

    Raises:
        BaseException: the first error of any stage.
    """
    stop = threading.Event()
    inbound: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    outbound: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)

    def produce_all() -> None:
        items = iter(produce)
        while not stop.is_set():
            try:
                item = next(items)
            except StopIteration:
                _put(inbound, _DONE, stop)
                return
            _put(inbound, item, stop)

    def consume_all() -> None:
        while True:
            try:
                entry = outbound.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if entry is _DONE or stop.is_set():
                return
            consume(entry)

    producer = Stage(produce_all, names[0])
    consumer = Stage(consume_all, names[1]) if consume is not None else None
    producer.start()
    if consumer is not None:
        consumer.start()
    try:
        while True:
            entry = _get(inbound, producer)
            if entry is _DONE:
                break
            result = transform(entry)
            if consumer is not None and result is not None:
                _put(outbound, result, stop, watch=consumer)
        if consumer is not None:
            _put(outbound, _DONE, stop, watch=consumer)
            consumer.join()
            if consumer.error:
                raise consumer.error
    except BaseException:
        stop.set()
        _drain(inbound)
        _drain(outbound)
        producer.join(timeout=10)
        if consumer is not None:
            consumer.join(timeout=10)
            if isinstance(consumer.error, MergemedError):
                raise consumer.error from None
        raise
    if producer.error:
        raise producer.error


def _put(target: queue.Queue, entry: Any, stop: threading.Event, watch: Stage | None = None):
    while not stop.is_set():
        if watch is not None and watch.error is not None:
            raise watch.error
        try:
            target.put(entry, timeout=POLL_SECONDS)
            return
        except queue.Full:
            continue


def _get(source: queue.Queue, producer: Stage) -> Any:
    while True:
        try:
            return source.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if producer.error is not None:
                raise producer.error from None
            if not producer.is_alive() and source.empty():
                raise MergeError("internal error: the reader stopped early") from None


def _drain(target: queue.Queue) -> None:
    try:
        while True:
            target.get_nowait()
    except queue.Empty:
        pass
