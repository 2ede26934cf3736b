"""Output folders that are safe to write: one run at a time, and never over the inputs.

Every command that creates a folder (``merge``, ``train``, ``grid export``) holds an
:class:`OutputLock` for its whole run and checks :func:`check_replaceable` before it may
replace an existing folder. The lock is an OS file lock (``flock``) on a small file beside the
output: the kernel releases it when the process ends however it ends (``kill -9`` included), so
a lock file left behind by a dead run never blocks the next one. The holder's PID is written
into the file only to name it in the refusal.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from mergemed.errors import OutputError


def lock_path(output: Path) -> Path:
    """The lock file of ``output``: hidden, beside it (the output itself may not exist yet)."""
    output = Path(output).absolute()
    return output.parent / f".{output.name}.mergemed-lock"


class OutputLock:
    """An exclusive lock on an output folder for the length of a ``with`` block.

    Raises:
        OutputError: another live process holds the lock (naming its PID), or the lock file
            cannot be created.
    """

    def __init__(self, output: Path):
        self.output = Path(output).absolute()
        self.path = lock_path(self.output)
        self._descriptor: int | None = None

    def __enter__(self) -> OutputLock:
        while True:
            descriptor = self._lock_once()
            # The file may have been unlinked by the previous holder between our open and our
            # lock: then we hold a lock nobody else can see. Only a lock on the file that the
            # path names now counts.
            try:
                same = os.path.samestat(os.fstat(descriptor), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor
        return self

    def _lock_once(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise OutputError(
                f"{self.output}: cannot create the lock file {self.path}: {error.strerror}"
            ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{self.path}: cannot lock: {error.strerror}") from None
            who = f"process {holder}" if holder else "another process"
            raise OutputError(
                f"{self.output}: {who} is writing this output now; wait for it to finish "
                "(or stop it) and run the command again"
            ) from None
        return descriptor

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._descriptor is None:
            return
        # Unlink while still holding the lock, so that no waiting run locks a file about to
        # disappear; a run that opened it just before still finds it locked, then retries.
        self.path.unlink(missing_ok=True)
        os.close(self._descriptor)
        self._descriptor = None


def _read_holder(descriptor: int) -> int | None:
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def check_replaceable(output: Path, inputs: list[Path], *, option: str = "--overwrite") -> None:
    """Refuse to replace ``output`` when that would destroy an input or a home.

    ``output`` must not be, contain, or lie inside any input (paths resolved, symbolic links
    followed), and must not be the file-system root or the user's home folder.

    Raises:
        OutputError: naming the output, the input it would destroy and why.
    """
    target = Path(output).absolute().resolve()
    protected = {
        Path("/").resolve(): "the file-system root",
        Path.home().resolve(): "your home folder",
    }
    if target in protected:
        raise OutputError(f"{output}: refusing {option} of {protected[target]}")
    for source in inputs:
        resolved = Path(source).absolute().resolve()
        if target == resolved:
            relation = "is"
        elif resolved.is_relative_to(target):
            relation = "contains"
        elif target.is_relative_to(resolved):
            relation = "is inside"
        else:
            continue
        raise OutputError(
            f"{output}: refusing {option}: the output {relation} the input {source}; "
            "choose another output folder"
        )
