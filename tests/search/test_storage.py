"""Run folders opened by several workers at once: every worker that starts a search on a
fresh folder finds no record, so writing it must succeed for all of them (one record, whole,
of this space) and a folder of another space must still be refused."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from test_study import write_space

from mergemed.search.space import SearchError
from mergemed.search.storage import RUN_FILE, open_run


def open_together(space: Path, folder: Path, workers: int) -> list[object]:
    """``open_run`` from ``workers`` threads released at the same instant: results or errors."""
    start = threading.Barrier(workers)
    outcomes: list[object] = [None] * workers

    def open_one(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = open_run(space, folder)
        except Exception as error:  # recorded, asserted below
            outcomes[index] = error

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_workers_starting_together_share_one_run_folder(tiny_eval_models, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    for round_ in range(20):
        folder = tmp_path / f"run-{round_}"
        outcomes = open_together(space, folder, workers=6)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert not errors, errors[0]
        assert len({o.study_name for o in outcomes}) == 1  # type: ignore[attr-defined]
        record = json.loads((folder / RUN_FILE).read_text())
        assert record["study"] == outcomes[0].study_name  # type: ignore[attr-defined]
        assert sorted(p.name for p in folder.iterdir()) == [RUN_FILE]  # no partial file left


def test_another_space_is_refused_even_when_its_record_was_written_concurrently(
    tiny_eval_models, tmp_path
) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    open_run(space, tmp_path / "run")
    other = tmp_path / "other"
    other.mkdir()
    other_space = write_space(other, instruct, clinical)
    other_space.write_text(other_space.read_text().replace("0.9]", "0.8]"))
    with pytest.raises(SearchError, match="holds a search of another space"):
        open_run(other_space, tmp_path / "run")
