"""Data for the text perplexity tasks ``general_ppl`` and ``pubmedqa_ppl``.

Each task reads one JSONL file of documents (one JSON object a line with a non-empty string
``text``; other fields are kept and ignored), first match wins:

1. ``<data_dir>/<task>/<task>.jsonl`` when the task metadata's ``data_dir`` is set (mergemed's
   ``--data-dir``, lm-eval's ``--metadata``, ``TaskManager(metadata=...)``) and the folder
   ``<data_dir>/<task>/`` exists;
2. the same under ``$MERGEMED_DATA_DIR`` when no ``data_dir`` is given;
3. ``<task>.jsonl`` beside this file (built by ``build.py``); never relative to the working
   directory.

A ``data_dir`` (or ``$MERGEMED_DATA_DIR``) that is not a folder is an error, and so is a task
folder without its file: both mean the data the user meant is not the data that would be used.

Standalone: standard library and ``datasets``, so the tasks also run with plain lm-eval.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "MERGEMED_DATA_DIR"
HERE = Path(__file__).resolve().parent
TASKS = ("general_ppl", "pubmedqa_ppl")


def data_file(local_name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The JSONL file ``local_name``'s documents are read from (see the module docstring).

    Raises:
        FileNotFoundError: the data folder is not a folder, or its ``<task>/`` folder lacks
            ``<task>.jsonl``.
    """
    if local_name not in TASKS:
        raise ValueError(f"unknown text perplexity task {local_name!r}; known: {TASKS}")
    origin = "data_dir" if data_dir else f"${DATA_DIR_ENV}"
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    if root:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{origin} is not a folder: {root}")
        folder = root / local_name
        if folder.is_dir():
            path = folder / f"{local_name}.jsonl"
            if not path.is_file():
                raise FileNotFoundError(f"{local_name}: {path} not found (from {origin})")
            return path
    return HERE / f"{local_name}.jsonl"


def read_documents(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The documents of one JSONL file, checked.

    Raises:
        ValueError: ``<file>: line N: ...`` for the first line that is not a JSON object with a
            non-empty string ``text``, or when the file has no documents.
    """
    path = Path(path)
    docs = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number}: {error.msg}") from None
            if not isinstance(doc, dict):
                raise ValueError(f"{path}: line {number}: not a JSON object")
            if not isinstance(doc.get("text"), str) or not doc["text"].strip():
                raise ValueError(f"{path}: line {number}: 'text' must be a non-empty string")
            docs.append(doc)
    if not docs:
        raise ValueError(f"{path}: no documents")
    return docs


def load(local_name: str, data_dir: str | None = None, **kwargs: Any):
    """``custom_dataset`` hook: a ``datasets.DatasetDict`` with the ``test`` split.

    lm-eval passes the task metadata and ``dataset_kwargs`` as keyword arguments: the YAML's
    ``local_name`` names the task, ``data_dir`` is the optional data folder; the rest is
    ignored.
    """
    import datasets

    docs = read_documents(data_file(local_name, data_dir))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
