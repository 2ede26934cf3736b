"""Where a merge is written, and how a killed merge resumes.

Output goes to a hidden folder beside the destination, renamed into place only when complete.
Each finished shard is recorded in a journal there, so a merge that was killed resumes from its
finished shards when run again with the same recipe and inputs (same fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mergemed import __version__
from mergemed.atomic import partial_path
from mergemed.engine.prepare import MergeJob
from mergemed.errors import OutputError
from mergemed.io.writer import Shard, file_digest
from mergemed.units import human_bytes

JOURNAL = ".mergemed-journal.json"
"""The journal's file name in the partial folder."""


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an output that exists (without ``overwrite``) or cannot be written; create its
    parent folder.

    Raises:
        OutputError: the output exists, is a file, or its parent is not writable.
    """
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: output folder exists; pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder")
    parent = output.parent
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True)
        except OSError as error:
            raise OutputError(f"{parent}: cannot create folder: {error.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{parent}: folder is not writable")


def partial_folder(output: Path) -> Path:
    """The hidden folder a merge into ``output`` is written in until it is complete."""
    return partial_path(output)


def fingerprint(job: MergeJob, shards: list[Shard], chunk_elements: int) -> str:
    """What must be unchanged for a partial output to be resumed: the recipe, every input
    file (size, inode, modification time, header digest), the output layout, the slicing and
    mergemed's version."""
    digest = hashlib.sha256()
    digest.update(job.recipe.model_dump_json().encode())
    for reference, checkpoint in sorted(job.checkpoints.items()):
        digest.update(reference.encode())
        for name, header_digest in sorted(checkpoint.header_digests.items()):
            # Size, inode and modification time catch weights rewritten in place.
            facts = (checkpoint.folder / name).stat()
            digest.update(
                f"{name}:{facts.st_size}:{facts.st_ino}:{facts.st_mtime_ns}:{header_digest}".encode()
            )
    for shard in shards:
        digest.update(shard.header)
    digest.update(f"{chunk_elements}:{__version__}".encode())
    return digest.hexdigest()


def prepare_partial(partial: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Reuse a partial folder left by an interrupted run of the same merge, else start anew.

    A shard the journal records as finished is reused only if its file still has the recorded
    size and SHA-256 digest: a shard changed after it was written (even at the same size) is
    written again.

    Returns:
        The verified finished shards: file name -> journal record (``bytes``, ``sha256``).
    """
    journal = partial / JOURNAL
    if journal.is_file():
        try:
            state = json.loads(journal.read_text())
        except ValueError:
            state = {}
        if isinstance(state, dict) and state.get("fingerprint") == fingerprint:
            recorded = state.get("completed")
            return {
                name: record
                for name, record in (recorded.items() if isinstance(recorded, dict) else ())
                if _shard_intact(partial, name, record)
            }
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_journal(partial, fingerprint, {})
    return {}


def _shard_intact(partial: Path, name: Any, record: Any) -> bool:
    if not (isinstance(name, str) and isinstance(record, dict)) or "/" in name:
        return False
    path = partial / name
    if not path.is_file() or path.is_symlink() or path.stat().st_size != record.get("bytes"):
        return False
    return record.get("sha256") == file_digest(path)


def write_journal(partial: Path, fingerprint: str, completed: dict[str, dict[str, Any]]) -> None:
    """Record the finished shards (file name -> ``{"bytes", "sha256"}``), replacing the journal
    atomically."""
    temporary = partial / (JOURNAL + ".tmp")
    temporary.write_text(json.dumps({"fingerprint": fingerprint, "completed": completed}))
    os.replace(temporary, partial / JOURNAL)


def check_free_space(partial: Path, shards: list[Shard], completed: Collection[str]) -> None:
    """Refuse to start when the shards still to write do not fit on the disk.

    Raises:
        OutputError: not enough free space.
    """
    needed = sum(s.file_bytes for s in shards if s.filename not in completed)
    free = shutil.disk_usage(partial).free
    if needed > free:
        raise OutputError(
            f"{partial.parent}: not enough free space: the merge needs {human_bytes(needed)}, "
            f"{human_bytes(free)} is free"
        )
