"""Data loading and prompts for the ``medical`` lm-eval tasks of mergemed.

Standalone on purpose (standard library, ``datasets`` and nothing else), so that the task
folder also works with plain ``lm_eval --include_path evaluations``.

Every task YAML here names ``custom_dataset: !function utils.load``; lm-eval calls it with the
task's ``metadata`` and ``dataset_kwargs`` as keyword arguments and evaluates the
``datasets.DatasetDict`` it returns. Where the data comes from, first match wins:

1. the file in the task's metadata key ``data_file`` (used as the evaluated split);
2. ``<data_dir>/<local_name>/`` when the metadata key ``data_dir`` is set (mergemed passes
   ``--data-dir`` that way) and that folder exists;
3. ``$MERGEMED_DATA_DIR/<local_name>/`` when the environment variable is set and that folder
   exists (for plain ``lm_eval`` runs);
4. the default: the Hugging Face Hub dataset ``hub_path``/``hub_name`` when the task names one,
   else the copy shipped in ``evaluations/data/<local_name>/``.

``<local_name>`` is lm-eval's own name of the task (``pubmedqa``, ``medqa_4options``,
``medmcqa``, ``mmlu_anatomy``...). A local folder holds one file per split, ``<split>.jsonl``,
``<split>.json`` or ``<split>.parquet``; the evaluated split must be there, the few-shot splits
may be absent (they are then empty). Local records are checked against the fields the task's
prompt reads (``SCHEMAS``); a bad file raises ``ValueError`` naming the file and the line (JSONL)
or record number (JSON, Parquet, counted from 1) of the first bad record; a missing one raises
``FileNotFoundError``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets

DATA_DIR_ENV = "MERGEMED_DATA_DIR"
"""Environment variable naming a folder with one sub-folder of local data per task."""

SHIPPED_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
"""``evaluations/data``: the data shipped with the repository (PubMedQA)."""

EXTENSIONS = (".jsonl", ".json", ".parquet")
"""Local file formats, in the order they are looked for."""

PUBMEDQA_ANSWERS = ("yes", "no", "maybe")

log = logging.getLogger("mergemed.evaluations.medical")


# --------------------------------------------------------------------------- prompts
# Each builds exactly the text that lm-eval's own task builds for the same record (the tests
# compare them with lm-eval's functions).


def pubmedqa_doc_to_text(doc: dict) -> str:
    """PubMedQA prompt: the abstract's sections one per line, then the question."""
    abstract = "\n".join(doc["contexts"])
    return f"Abstract: {abstract}\nQuestion: {doc['question']}\nAnswer:"


def medqa_doc_to_text(doc: dict) -> str:
    """MedQA (4 options, ``GBaker/MedQA-USMLE-4-options-hf`` fields) prompt."""
    options = "".join(f"{letter}. {doc[f'ending{i}']}\n" for i, letter in enumerate("ABCD"))
    return f"Question: {doc['sent1']}\n{options}Answer:"


def medmcqa_doc_to_text(doc: dict) -> str:
    """MedMCQA (``openlifescienceai/medmcqa`` fields) prompt."""
    options = "".join(
        f"{letter}. {doc[key]}\n"
        for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd"), strict=True)
    )
    return f"Question: {doc['question']}\nChoices:\n{options}Answer:"


# --------------------------------------------------------------------------- record checks


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _texts(count: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "must be a list of strings"
        if count is not None and len(value) != count:
            return f"must hold {count} strings, not {len(value)}"
        return None

    return check


def _index(count: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            return f"must be an integer from 0 to {count - 1}, not {value!r}"
        return None

    return check


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {list(allowed)}, not {value!r}"

    return check


SCHEMAS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "pubmedqa": {
        "question": _text,
        "contexts": _texts(),
        "final_decision": _one_of(*PUBMEDQA_ANSWERS),
    },
    "medqa": {
        "sent1": _text,
        "ending0": _text,
        "ending1": _text,
        "ending2": _text,
        "ending3": _text,
        "label": _index(4),
    },
    "medmcqa": {
        "question": _text,
        "opa": _text,
        "opb": _text,
        "opc": _text,
        "opd": _text,
        "cop": _index(4),
    },
    "mmlu": {"question": _text, "choices": _texts(4), "answer": _index(4)},
}
"""Fields each local record must have (the ones the prompt and target read), by schema."""


def check_record(record: Any, schema: str) -> str | None:
    """What is wrong with ``record`` for ``schema``, or ``None`` when it is usable."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for field, check in SCHEMAS[schema].items():
        if field not in record:
            return f"missing field {field!r}"
        problem = check(record[field])
        if problem:
            return f"field {field!r} {problem}"
    return None


# --------------------------------------------------------------------------- local files


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number}: invalid JSON ({err})") from None


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    if isinstance(data, dict):  # id -> record, as in PubMedQA's ori_pqal.json
        items = [
            {"id": key, **value} if isinstance(value, dict) else value
            for key, value in data.items()
        ]
    elif isinstance(data, list):
        items = data
    else:
        raise ValueError(f"{path}: expected a JSON list of records or an object of id -> record")
    for number, record in enumerate(items, start=1):
        yield f"record {number}", record


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        table = datasets.Dataset.from_parquet(str(path))
    except Exception as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    for number, record in enumerate(table, start=1):
        yield f"record {number}", record


def read_records(path: str | Path, schema: str) -> list[dict]:
    """The records of one local file, checked against ``SCHEMAS[schema]``.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the file and
    the first bad line/record when it cannot be parsed or a record lacks a field.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"local data file not found: {path}")
    if path.suffix == ".jsonl":
        reader = _jsonl_records
    elif path.suffix == ".json":
        reader = _json_records
    elif path.suffix == ".parquet":
        reader = _parquet_records
    else:
        raise ValueError(f"{path}: unsupported file type (use {', '.join(EXTENSIONS)})")
    records = []
    for where, record in reader(path):
        problem = check_record(record, schema)
        if problem:
            raise ValueError(f"{path}: {where}: {problem}")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _split_file(folder: Path, split: str) -> Path | None:
    for extension in EXTENSIONS:
        candidate = folder / f"{split}{extension}"
        if candidate.is_file():
            return candidate
    return None


def _dataset(records: list[dict], path: Path) -> datasets.Dataset:
    try:
        return datasets.Dataset.from_list(records)
    except Exception as err:  # e.g. a field holding different types in different records
        raise ValueError(f"{path}: records do not form a table ({err})") from None


def load_local(
    *,
    schema: str,
    eval_split: str,
    fewshot_splits: list[str] | tuple[str, ...] = (),
    folder: str | Path | None = None,
    data_file: str | Path | None = None,
) -> datasets.DatasetDict:
    """A ``DatasetDict`` from a folder of ``<split>.<ext>`` files or from one file.

    ``eval_split`` must be present (the folder's file or ``data_file``); each of
    ``fewshot_splits`` is read from the folder when its file is there and is empty otherwise.
    """
    if data_file is not None:
        path = Path(data_file).expanduser()
        evaluated = _dataset(read_records(path, schema), path)
        found: dict[str, Path] = {}
    else:
        if folder is None:
            raise TypeError("load_local needs a folder or a data_file")
        folder = Path(folder).expanduser()
        path = _split_file(folder, eval_split)
        if path is None:
            names = ", ".join(f"{eval_split}{ext}" for ext in EXTENSIONS)
            raise FileNotFoundError(
                f"no local data file for split {eval_split!r}: none of {names} in {folder}"
            )
        evaluated = _dataset(read_records(path, schema), path)
        found = {s: p for s in fewshot_splits if s != eval_split and (p := _split_file(folder, s))}
    splits = {eval_split: evaluated}
    for split in fewshot_splits:
        if split == eval_split:
            continue
        if split in found:
            splits[split] = _dataset(read_records(found[split], schema), found[split])
        else:
            splits[split] = evaluated.select([])
    return datasets.DatasetDict(splits)


# --------------------------------------------------------------------------- entry point


def _task_folder(root: str | Path, local_name: str, origin: str) -> Path | None:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{origin} is not a folder: {root}")
    folder = root / local_name
    return folder if folder.is_dir() else None


def load(
    *,
    local_name: str,
    schema: str,
    eval_split: str,
    fewshot_splits: list[str] | tuple[str, ...] = (),
    hub_path: str | None = None,
    hub_name: str | None = None,
    data_file: str | None = None,
    data_dir: str | None = None,
    **_ignored: Any,
) -> datasets.DatasetDict:
    """``custom_dataset`` of every task here; see the module docstring for the search order.

    ``local_name``, ``schema``, ``eval_split``, ``fewshot_splits``, ``hub_path`` and
    ``hub_name`` come from the task's ``dataset_kwargs``; ``data_file`` and ``data_dir`` from its
    ``metadata`` (a YAML's ``metadata:`` or lm-eval's ``--metadata``/``TaskManager(metadata=)``,
    which applies to every task); other metadata (``version``...) is ignored.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r} for {local_name} (known: {sorted(SCHEMAS)})")
    splits = {"schema": schema, "eval_split": eval_split, "fewshot_splits": fewshot_splits}

    if data_file:
        log.info("%s: local data from %s", local_name, data_file)
        return load_local(data_file=data_file, **splits)
    roots = [(data_dir, "metadata data_dir"), (os.environ.get(DATA_DIR_ENV), f"${DATA_DIR_ENV}")]
    for root, origin in roots:
        if root:
            folder = _task_folder(root, local_name, origin)
            if folder is not None:
                log.info("%s: local data from %s", local_name, folder)
                return load_local(folder=folder, **splits)

    if hub_path is None:
        folder = SHIPPED_DATA_DIR / local_name
        log.info("%s: shipped data from %s", local_name, folder)
        return load_local(folder=folder, **splits)

    source = hub_path if hub_name is None else f"{hub_path} ({hub_name})"
    hint = (
        f"to use a local copy instead, put {eval_split}.jsonl (or .json/.parquet) in "
        f"${DATA_DIR_ENV}/{local_name}/ (see evaluations/README.md)"
    )
    try:
        log.info("%s: data from the Hugging Face Hub: %s", local_name, source)
        return datasets.load_dataset(hub_path, hub_name)
    except ConnectionError as err:
        raise ConnectionError(
            f"{local_name}: cannot load {source} from the Hugging Face Hub ({err}); {hint}"
        ) from err
    except Exception as err:
        if hasattr(err, "add_note"):
            err.add_note(f"{local_name}: loading {source} from the Hugging Face Hub failed; {hint}")
        raise
