"""The results store: one SQLite row per (model weights, task, task version, settings).

An unchanged model/task pair is never evaluated twice: before running a task, the evaluator
looks its key up here. The key holds a hash of the weights (see :mod:`identity`), never a
path, so a folder overwritten by a new merge is a new model. Rows keep lm-eval's own per-task
result block, so a cached result reads exactly as a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    model_hash TEXT NOT NULL,
    task TEXT NOT NULL,
    task_version TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    model_label TEXT NOT NULL,
    settings TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    seconds REAL,
    PRIMARY KEY (model_hash, task, task_version, settings_hash)
)
"""


def default_store_path() -> Path:
    """``$MERGEMED_RESULTS`` if set, else ``$MERGEMED_CACHE/results.sqlite`` (default cache
    folder ``~/.cache/mergemed``)."""
    if os.environ.get("MERGEMED_RESULTS"):
        return Path(os.environ["MERGEMED_RESULTS"]).expanduser()
    cache = Path(os.environ.get("MERGEMED_CACHE", "~/.cache/mergemed")).expanduser()
    return cache / "results.sqlite"


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A stable hash of evaluation settings (a JSON-able mapping)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ResultKey:
    """What makes two evaluations the same evaluation."""

    model_hash: str
    task: str
    task_version: str
    settings_hash: str


@dataclass(frozen=True)
class StoredResult:
    """A row of the store: lm-eval's result block, and the seconds its computation took
    (None for rows written without a timing)."""

    result: dict[str, Any]
    seconds: float | None


class ResultsStore:
    """A SQLite file of task results, keyed by :class:`ResultKey`.

    Raises:
        MergemedError: the file cannot be opened or is not a results store.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as connection:
                connection.execute(SCHEMA)
        except (OSError, sqlite3.DatabaseError) as error:
            raise MergemedError(f"{self.path}: cannot use as a results store: {error}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as connection, connection:
            yield connection

    def get(self, key: ResultKey) -> dict[str, Any] | None:
        """The stored result for ``key``, or None."""
        stored = self.lookup(key)
        return stored.result if stored is not None else None

    def lookup(self, key: ResultKey) -> StoredResult | None:
        """The stored result for ``key`` with how long it took to compute, or None."""
        with self._connect() as connection:
            row = connection.execute(
                "SELECT result, seconds FROM results WHERE model_hash=? AND task=? "
                "AND task_version=? AND settings_hash=?",
                (key.model_hash, key.task, key.task_version, key.settings_hash),
            ).fetchone()
        return StoredResult(json.loads(row[0]), row[1]) if row else None

    def put(
        self,
        key: ResultKey,
        result: Mapping[str, Any],
        *,
        model_label: str,
        settings: Mapping[str, Any],
        seconds: float | None = None,
    ) -> None:
        """Store (or replace) the result for ``key``."""
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.model_hash,
                    key.task,
                    key.task_version,
                    key.settings_hash,
                    model_label,
                    json.dumps(settings, sort_keys=True, default=str),
                    json.dumps(result, default=str),
                    time.time(),
                    seconds,
                ),
            )

    def __len__(self) -> int:
        with self._connect() as connection:
            return connection.execute("SELECT COUNT(*) FROM results").fetchone()[0]
