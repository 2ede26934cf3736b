"""The results store on its own: SQLite rows keyed by weights, task, task version and settings."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from mergemed.errors import MergemedError
from mergemed.evaluation.store import ResultKey, ResultsStore, default_store_path, settings_hash

BLOCK = {"results": {"acc,none": 0.5, "acc_stderr,none": 0.1}, "n-samples": {"effective": 4}}


def _key(**changes: str) -> ResultKey:
    fields = {"model_hash": "m", "task": "t", "task_version": "1.0-abc", "settings_hash": "s"}
    return ResultKey(**{**fields, **changes})


def test_a_stored_result_reads_back_exactly(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    assert store.get(_key()) is None and len(store) == 0
    store.put(_key(), BLOCK, model_label="merged", settings={"limit": 4}, seconds=1.5)
    assert store.get(_key()) == BLOCK and len(store) == 1
    reopened = ResultsStore(tmp_path / "r.sqlite")
    assert reopened.get(_key()) == BLOCK


def test_a_stored_result_keeps_how_long_it_took(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    assert store.lookup(_key()) is None
    store.put(_key(), BLOCK, model_label="merged", settings={}, seconds=1.5)
    store.put(_key(task="untimed"), BLOCK, model_label="merged", settings={})
    timed = ResultsStore(tmp_path / "r.sqlite").lookup(_key())
    assert timed is not None and timed.result == BLOCK and timed.seconds == 1.5
    untimed = store.lookup(_key(task="untimed"))
    assert untimed is not None and untimed.seconds is None


@pytest.mark.parametrize("field", ["model_hash", "task", "task_version", "settings_hash"])
def test_each_part_of_the_key_tells_results_apart(tmp_path: Path, field: str) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.put(_key(), BLOCK, model_label="a", settings={})
    assert store.get(_key(**{field: "other"})) is None


def test_putting_the_same_key_replaces_the_row(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.put(_key(), BLOCK, model_label="a", settings={})
    newer = {"results": {"acc,none": 0.75}}
    store.put(_key(), newer, model_label="a", settings={})
    assert store.get(_key()) == newer and len(store) == 1


def test_rows_keep_the_settings_they_were_made_with(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultsStore(path).put(_key(), BLOCK, model_label="a", settings={"limit": 4, "dtype": "auto"})
    with sqlite3.connect(path) as connection:
        label, settings = connection.execute("SELECT model_label, settings FROM results").fetchone()
    assert label == "a" and json.loads(settings) == {"dtype": "auto", "limit": 4}


def test_settings_hash_ignores_key_order_and_sees_every_value() -> None:
    assert settings_hash({"a": 1, "b": {"c": 2}}) == settings_hash({"b": {"c": 2}, "a": 1})
    assert settings_hash({"a": 1, "b": {"c": 2}}) != settings_hash({"a": 1, "b": {"c": 3}})
    assert settings_hash({"a": None}) != settings_hash({})


def test_a_file_that_is_not_a_store_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"these are not the results you are looking for" * 100)
    with pytest.raises(MergemedError) as caught:
        ResultsStore(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes().startswith(b"these are not")  # the input is left as it was


def test_default_path_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MERGEMED_RESULTS", raising=False)
    monkeypatch.setenv("MERGEMED_CACHE", str(tmp_path / "cache"))
    assert default_store_path() == tmp_path / "cache" / "results.sqlite"
    monkeypatch.setenv("MERGEMED_RESULTS", str(tmp_path / "mine.sqlite"))
    assert default_store_path() == tmp_path / "mine.sqlite"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultsStore(path)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            store = ResultsStore(path)
            for index in range(25):
                store.put(_key(task=f"{worker}-{index}"), BLOCK, model_label="x", settings={})
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(ResultsStore(path)) == 100
