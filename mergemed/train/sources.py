"""Reading training documents and records: ``.txt``, ``.jsonl``, ``.json`` and ``.parquet``
files, and ``hub:owner/name`` datasets.

:func:`read_documents` reads one :class:`Source` into a list of document strings (continual
pretraining); :func:`iter_records` yields the JSON objects or rows of a file with where each
stands (``file:line``), which the SFT readers in :mod:`mergemed.train.sft_records` build on.
Every problem with the user's data raises :class:`DataError`, one line naming the file, the
line (or row) and what was expected.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError

__all__ = [
    "HUB_PREFIX",
    "SUFFIXES",
    "DataError",
    "Source",
    "as_text",
    "existing_file",
    "iter_records",
    "read_documents",
]

HUB_PREFIX = "hub:"
"""``Source.path`` that starts with this names a Hugging Face Hub dataset: ``hub:owner/name``."""

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
"""File types :func:`read_documents` reads."""


class DataError(MergemedError):
    """Training data that cannot be used: names the file, the line or row, and the field."""


@dataclass(frozen=True)
class Source:
    """One training data source.

    Attributes:
        name: unique label, used in reports, per-sequence counts and held-out sets.
        path: a local file or ``hub:owner/name`` (a Hub dataset's ``train`` split). By suffix:

            * ``.txt``: one document per paragraph block. A block is a maximal run of
              non-blank lines; blank (empty or whitespace-only) lines separate blocks. Lines
              are kept verbatim (indentation included) and joined with ``"\\n"``.
            * ``.jsonl``: one JSON object per line (blank lines skipped); the document is
              ``text_field``.
            * ``.json``: a JSON array of objects, or an object mapping ids to objects.
            * ``.parquet``: one document per row, column ``text_field``.

        text_field: the field (or column) holding the text, for every type but ``.txt``. A
            list of strings there is joined with ``"\\n"`` (PubMedQA's ``contexts``).
        weight: share of the training tokens, relative to the other sources' weights
            (``>= 0``; see :func:`check_weights`).

    Documents whose text is empty or only whitespace are skipped.
    """

    name: str
    path: str | os.PathLike[str]
    text_field: str = "text"
    weight: float = 1.0


def read_documents(source: Source) -> list[str]:
    """The documents of ``source``, in file order (see :class:`Source` for each file type).

    Raises:
        DataError: the file is missing or not a file, has an unsupported suffix, holds no
            documents, a line is not a JSON object, a record lacks ``text_field`` or holds
            something other than a string or a list of strings there, or a Hub dataset cannot
            be loaded (offline, unknown, no such column).
    """
    path_text = os.fspath(source.path)
    if path_text.startswith(HUB_PREFIX):
        documents = _read_hub_documents(source, path_text[len(HUB_PREFIX) :])
        where = f"source {source.name!r} ({path_text})"
    else:
        path = existing_file(path_text, SUFFIXES)
        if path.suffix == ".txt":
            documents = _txt_documents(path)
        elif path.suffix == ".parquet":
            documents = _parquet_documents(path, source.text_field)
        else:
            documents = [
                text
                for at, record in iter_records(path)
                if (text := _document_text(record, source.text_field, at))
            ]
        where = str(path)
    if not documents:
        raise DataError(f"{where}: no documents (empty, or every text is blank)")
    return documents


def existing_file(path_text: str, suffixes: Sequence[str]) -> Path:
    """``path_text`` as a path (``~`` expanded), checked to be a file with one of ``suffixes``.

    Raises:
        DataError: the file is missing, not a file, or of another type.
    """
    path = Path(path_text).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.suffix not in suffixes:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}: "
            f"expected {', '.join(suffixes)}"
        )
    return path


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None


def _txt_documents(path: Path) -> list[str]:
    documents: list[str] = []
    block: list[str] = []
    for line in _read_text(path).splitlines():
        if line.strip():
            block.append(line)
        elif block:
            documents.append("\n".join(block))
            block = []
    if block:
        documents.append("\n".join(block))
    return documents


def iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each record of a ``.jsonl``, ``.json`` or ``.parquet`` file.

    ``where`` is ``file:line`` (jsonl), ``file: item i`` (json) or ``file: row i`` (parquet).

    Raises:
        DataError: the file cannot be read, is not UTF-8, or a line or item is not a JSON
            object (naming the line).
    """
    if path.suffix == ".jsonl":
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record
    elif path.suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(data, (dict, list)):
            raise DataError(f"{path}: expected a JSON array of objects")
        items = data.items() if isinstance(data, dict) else enumerate(data, start=1)
        for key, record in items:
            where = f"{path}: item {key}"
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record
    else:
        table = _read_parquet(path, None)
        for number, record in enumerate(table.to_pylist(), start=1):
            yield f"{path}: row {number}", record


def _read_parquet(path: Path, column: str | None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if column is not None and column not in schema.names:
            raise DataError(
                f"{path}: no column {column!r} (columns: {', '.join(schema.names) or 'none'})"
            )
        return pq.read_table(path, columns=None if column is None else [column])
    except (pa.ArrowException, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable parquet file: {first_line}") from None


def _parquet_documents(path: Path, column: str) -> list[str]:
    values = _read_parquet(path, column).column(column).to_pylist()
    return [
        text
        for number, value in enumerate(values, start=1)
        if (text := as_text(value, column, f"{path}: row {number}"))
    ]


def _document_text(record: Mapping[str, Any], text_field: str, where: str) -> str:
    if text_field not in record:
        raise DataError(
            f"{where}: no field {text_field!r} (fields: {', '.join(map(str, record)) or 'none'})"
        )
    return as_text(record[text_field], text_field, where)


def as_text(value: Any, text_field: str, where: str) -> str:
    """A string, or a list of strings joined with newlines; blank text becomes ``""``.

    Args:
        value: the field's value.
        text_field: the field's name, for the message.
        where: ``file:line`` (or row) of the record, for the message.

    Raises:
        DataError: ``value`` is neither a string nor a list of strings.
    """
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = "\n".join(value)
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {text_field!r} must be a string or a list of strings, "
            f"got {type(value).__name__}"
        )
    return value if value.strip() else ""


def _hub_offline() -> bool:
    return any(
        os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _read_hub_documents(source: Source, repo_id: str) -> list[str]:
    where = f"source {source.name!r} ({HUB_PREFIX}{repo_id})"
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise DataError(f"{where}: expected {HUB_PREFIX}owner/name")
    import datasets

    try:
        dataset = datasets.load_dataset(repo_id, split="train")
    except Exception as error:  # datasets raises many types; one line is what the user needs
        if _hub_offline():
            raise DataError(
                f"{where}: Hub dataset not in the local cache and HF_HUB_OFFLINE is set; "
                "download it first or give a local file"
            ) from None
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{where}: cannot load from the Hub (unreachable?): {first_line}") from None
    if source.text_field not in dataset.column_names:
        raise DataError(
            f"{where}: no column {source.text_field!r} (columns: {', '.join(dataset.column_names)})"
        )
    return [
        text
        for number, value in enumerate(dataset[source.text_field], start=1)
        if (text := as_text(value, source.text_field, f"{where}: row {number}"))
    ]
