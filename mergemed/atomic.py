"""Putting a finished folder in place of an old one, so that the destination always holds a
whole folder: the old one until the new one has been renamed in, never neither or a mix.

Every command that writes a model folder (``merge``, ``train``) builds it in a hidden partial
folder beside the destination and hands it to :func:`replace_folder`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mergemed.errors import OutputError


def partial_path(destination: Path) -> Path:
    """Where a folder bound for ``destination`` is built until it is complete: hidden, beside
    it (so that the final rename stays within one file system)."""
    destination = Path(destination)
    return destination.parent / f".{destination.name}.mergemed-partial"


def retired_path(destination: Path) -> Path:
    """Where :func:`replace_folder` keeps the old ``destination`` while the new one moves in:
    hidden, beside it (a rename within one folder never copies)."""
    destination = Path(destination)
    return destination.parent / f".{destination.name}.mergemed-old"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def replace_folder(
    new: Path, destination: Path, *, overwrite: bool = True, option: str = "--overwrite"
) -> None:
    """Rename ``new`` to ``destination``, replacing what is there.

    An existing destination is first renamed aside (to :func:`retired_path`), then ``new`` is
    renamed in, then the old one is deleted. If renaming ``new`` in fails, the old one is put
    back, so ``destination`` never goes missing. Both renames stay within one folder, so each
    is atomic. A retired folder that an earlier, interrupted replacement left behind is
    deleted once ``new`` is in place.

    Args:
        new: the finished folder (beside ``destination``, on the same file system).
        destination: where it belongs.
        overwrite: whether an existing ``destination`` may be replaced.
        option: how the user allows replacing, for the message (``--overwrite``).

    Raises:
        OutputError: ``destination`` exists and ``overwrite`` is false, or a rename fails
            (naming the path and the reason); ``new`` is left where it was.
    """
    new, destination = Path(new), Path(destination)
    retired = retired_path(destination)
    if not (destination.exists() or destination.is_symlink()):
        _rename(new, destination)
        _remove(retired)
        return
    if not overwrite:
        raise OutputError(f"{destination}: output folder exists; pass {option} to replace it")
    _remove(retired)
    _rename(destination, retired)
    try:
        _rename(new, destination)
    except OutputError:
        os.replace(retired, destination)  # put the old one back
        raise
    _remove(retired)


def _rename(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as error:
        raise OutputError(
            f"{target}: cannot move {source} into place: {error.strerror or error}"
        ) from None
