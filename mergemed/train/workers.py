"""The processes of one training run: one, or N started by ``torchrun`` or ``accelerate launch``.

A launcher starts the same ``mergemed train`` command N times, with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each one's environment. Every worker
loads the config and builds the same data from the same seed (a digest is compared,
:meth:`Workers.check_same`), and the Trainer gives each its own share of every global batch.
Worker 0 alone owns the output: it takes the lock, prepares the working folder, picks the
checkpoint to resume from and, once every worker has finished, writes the model folder.

Two rules keep a failure to one line and no worker waiting forever:

* a step every worker runs (loading the config, building the data, the model) is
  :meth:`Workers.agree`-d: if it fails on any worker, it fails on all, and worker 0 reports
  the first problem; a step only worker 0 runs is :meth:`Workers.decide`-d: the others learn
  its outcome;
* a worker other than 0 that stops on such an error says nothing and waits for worker 0 to
  leave (:func:`outlive_worker_zero`): a launcher stops every worker as soon as one exits,
  and worker 0 must first report and clean up.

Nothing here imports torch at module level: the command line asks :func:`launched_rank`
before anything heavy is loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from mergemed.errors import MergemedError

T = TypeVar("T")

COLLECTIVE_TIMEOUT = timedelta(minutes=30)
"""How long a worker waits for the others at a barrier (transformers' ``ddp_timeout``)."""

LEAVING_TIMEOUT = timedelta(minutes=2)
"""How long a stopped worker waits for worker 0 to report and leave."""

_LOST_PEER_SIGNS = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "gloo/transport",
    "NCCL communicator was aborted",
)
"""Words in the ``RuntimeError`` that gloo and NCCL raise when another worker's process ended."""

_joined: list[Workers] = []
"""The workers :func:`join_workers` joined in this process (for :func:`outlive_worker_zero`)."""


class FollowerStopped(MergemedError):
    """Raised on workers other than 0 when a step failed: worker 0 reports the problem, the
    others stop without a word (the command line prints nothing for them)."""


class WorkerLost(MergemedError):
    """Another worker's process ended (killed, crashed) while this one waited for it.

    Worker 0 reports it; so does worker 1 of a two-worker run, which then knows that the
    lost worker is worker 0 (``reported_here``)."""

    def __init__(self, message: str, *, reported_here: bool = False):
        super().__init__(message)
        self.reported_here = reported_here


class WorkersDisagree(MergemedError):
    """The workers built different training data from the same config."""


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 when not launched as a worker)."""
    return int(os.environ.get("RANK", "0") or 0)


def launched_world_size() -> int:
    """How many workers the launcher started (``WORLD_SIZE``; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def single_process_launch_note() -> str | None:
    """A note when ``accelerate launch --cpu --num_processes N`` (or a ``MULTI_CPU`` config
    without mpirun) started this one process where N were probably meant, else None."""
    accelerate_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    if accelerate_cpu and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        return (
            "accelerate launch --cpu starts one process whatever --num_processes says; for N "
            "processes on the CPU use `torchrun --nproc_per_node N -m mergemed train ...` or "
            "`accelerate launch --multi_gpu --num_processes N -m mergemed train ...`"
        )
    return None


@dataclass(frozen=True)
class Workers:
    """This process's place among the run's workers.

    Attributes:
        rank: 0 for the worker that owns the output.
        world_size: how many workers train together.
        control: the process group (gloo, on the CPU) that carries mergemed's own messages;
            None for the default group.
    """

    rank: int = 0
    world_size: int = 1
    control: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this is worker 0, which owns the output."""
        return self.rank == 0

    def agree(self, step: Callable[[], T]) -> T:
        """Run ``step`` on every worker; if it fails on any (a :class:`MergemedError`), fail
        on all. ``step`` must not wait for the other workers itself.

        Raises:
            MergemedError: on worker 0, its own error, or the first other worker's (named);
                :class:`FollowerStopped` on the others.
        """
        if self.world_size == 1:
            return step()
        failure: MergemedError | None = None
        try:
            value = step()
        except MergemedError as error:
            failure = error
        problems = self._gather(None if failure is None else str(failure))
        failed = [(rank, problem) for rank, problem in enumerate(problems) if problem is not None]
        if not failed:
            return value
        if not self.is_main:
            raise FollowerStopped(f"stopped with worker 0 ({failed[0][1]})")
        if failure is not None:
            raise failure
        rank, problem = failed[0]
        raise FollowerStopped(f"worker {rank}: {problem}")

    def decide(self, step: Callable[[], T]) -> T:
        """Run ``step`` on worker 0 only and hand its result (or its failure) to every worker.

        Raises:
            FollowerStopped: on the other workers, when ``step`` failed on worker 0 (which
                raises its own error).
        """
        if self.world_size == 1:
            return step()
        if self.is_main:
            try:
                value = step()
            except BaseException as error:
                with suppress(WorkerLost):  # the others are gone: this error is what counts
                    self._broadcast(("failed", f"{type(error).__name__}: {error}"))
                raise
            self._broadcast(("done", value))
            return value
        status, value = self._broadcast(None)
        if status == "failed":
            raise FollowerStopped(f"stopped with worker 0 ({value})")
        return value

    def _broadcast(self, outcome: tuple[str, Any] | None) -> tuple[str, Any]:
        import torch.distributed as distributed

        box = [outcome]
        with self._together():
            distributed.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def _gather(self, item: Any) -> list[Any]:
        import torch.distributed as distributed

        items: list[Any] = [None] * self.world_size
        with self._together():
            distributed.all_gather_object(items, item, group=self.control)
        return items

    def _together(self) -> Any:
        """Where every worker waits for the others: a lost one becomes :class:`WorkerLost`."""
        return self.stop_if_one_is_lost(lambda: "run the same command again")

    def barrier(self) -> None:
        """Wait until every worker has reached this point."""
        if self.world_size > 1:
            import torch.distributed as distributed

            with self._together():
                distributed.barrier(group=self.control)

    def add_up(self, values: Any) -> Any:
        """``values`` (a CPU tensor) summed over the workers."""
        if self.world_size == 1:
            return values
        import torch.distributed as distributed

        values = values.clone()
        with self._together():
            distributed.all_reduce(values, group=self.control)
        return values

    def check_same(self, what: str, digest: str) -> None:
        """Refuse to train unless every worker built the same ``what`` (compared by digest).

        Raises:
            WorkersDisagree: naming the workers whose digest differs from worker 0's.
        """
        if self.world_size == 1:
            return
        digests = self._gather(digest)
        differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
        if differing:
            raise WorkersDisagree(
                f"{what}: workers {differing} built different data from worker 0 from the same "
                "config and seed; every worker must read the same files"
            )

    @contextmanager
    def stop_if_one_is_lost(self, where: Callable[[], str]) -> Iterator[None]:
        """Turn the error a worker gets when another worker's process ends into
        :class:`WorkerLost`; ``where`` says how to go on (called only then)."""
        try:
            yield
        except RuntimeError as error:
            if self.world_size == 1 or not is_lost_worker_error(error):
                raise
            pair = self.world_size == 2
            lost = f"worker {1 - self.rank}'s" if pair else "another worker's"
            raise WorkerLost(
                f"training stopped: {lost} process ended (killed or crashed); {where()}",
                reported_here=pair and not self.is_main,
            ) from None


def is_lost_worker_error(error: BaseException) -> bool:
    """Whether ``error`` is what gloo or NCCL raise when another worker's process ended."""
    from torch.distributed import DistNetworkError

    if isinstance(error, DistNetworkError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(sign in text for sign in _LOST_PEER_SIGNS)


@contextmanager
def join_workers() -> Iterator[Workers]:
    """This process's :class:`Workers` for the length of a ``with`` block, joining the
    launcher's process group when there are several (gloo on the CPU; NCCL on CUDA GPUs, with
    a gloo group beside it for mergemed's own messages). transformers' Trainer uses the same
    group. A group joined here is closed when the block ends well; after a failure it is left
    to the process's exit, since closing it would wait for workers that may be gone."""
    if launched_world_size() == 1:
        yield Workers()
        return
    import torch
    import torch.distributed as distributed

    joined = not distributed.is_initialized()
    if joined:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if cuda else "gloo"
        distributed.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    control = None
    if distributed.get_backend() != "gloo":
        control = distributed.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    workers = Workers(distributed.get_rank(), distributed.get_world_size(), control)
    _joined[:] = [workers]
    yield workers
    _joined.clear()
    if joined:
        distributed.destroy_process_group()


def outlive_worker_zero() -> None:
    """On a worker other than 0 that is stopping: wait (at most :data:`LEAVING_TIMEOUT`) until
    worker 0's process has ended, so that it reports and cleans up before the launcher, seeing
    this worker exit, stops it. Returns at once outside a multi-worker run."""
    if not _joined or _joined[0].is_main:
        return
    import torch
    import torch.distributed as distributed

    with suppress(Exception):  # worker 0 left (the wait fails then), or the wait timed out
        waiting = distributed.irecv(torch.zeros(1), src=0, group=_joined[0].control)
        waiting.wait(timeout=LEAVING_TIMEOUT)


def data_digest(*parts: Any) -> str:
    """A digest of token arrays (numpy) and lists of token ids, to compare across workers."""
    digest = hashlib.sha256()
    for part in parts:
        if hasattr(part, "tobytes"):
            digest.update(str(part.shape).encode())
            digest.update(part.tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()
