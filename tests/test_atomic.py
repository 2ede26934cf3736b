"""replace_folder: the destination always holds a whole folder, the old one or the new one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mergemed.atomic import replace_folder, retired_path
from mergemed.errors import OutputError


def folder(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_a_new_destination_is_renamed_into_place(tmp_path: Path) -> None:
    new = folder(tmp_path / ".out.partial", weights="new")
    replace_folder(new, tmp_path / "out", overwrite=False)
    assert contents(tmp_path / "out") == {"weights": "new"} and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_existing_destination_is_replaced_and_the_old_one_deleted(tmp_path: Path) -> None:
    old = folder(tmp_path / "out", weights="old", extra="only in the old one")
    new = folder(tmp_path / ".out.partial", weights="new")
    replace_folder(new, old)
    assert contents(old) == {"weights": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing retired left over


def test_without_overwrite_an_existing_destination_is_kept(tmp_path: Path) -> None:
    old = folder(tmp_path / "out", weights="old")
    new = folder(tmp_path / ".out.partial", weights="new")
    with pytest.raises(OutputError, match=r"out: output folder exists; pass --force to replace"):
        replace_folder(new, old, overwrite=False, option="--force")
    assert contents(old) == {"weights": "old"} and contents(new) == {"weights": "new"}


def test_a_failed_move_puts_the_old_folder_back(tmp_path: Path) -> None:
    old = folder(tmp_path / "out", weights="old")
    missing = tmp_path / ".out.partial"  # renaming it fails, after the old one went aside
    with pytest.raises(OutputError) as raised:
        replace_folder(missing, old)
    message = str(raised.value)
    assert message.startswith(f"{old}: cannot move {missing} into place") and "\n" not in message
    assert contents(old) == {"weights": "old"}
    assert not retired_path(old).exists()


def test_a_folder_left_aside_by_an_interrupted_replacement_is_cleaned_up(tmp_path: Path) -> None:
    # Interrupted between its two renames: the old output aside, no output.
    stale = folder(retired_path(tmp_path / "out"), weights="older")
    replace_folder(folder(tmp_path / ".a", weights="a"), tmp_path / "out")
    assert contents(tmp_path / "out") == {"weights": "a"} and not stale.exists()
    # Interrupted after them: a new output in place and the old one still aside.
    folder(stale, weights="older")
    replace_folder(folder(tmp_path / ".b", weights="b"), tmp_path / "out")
    assert contents(tmp_path / "out") == {"weights": "b"} and not stale.exists()


def test_a_file_or_a_link_in_the_way_is_replaced_not_followed(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    replace_folder(folder(tmp_path / ".a", weights="a"), tmp_path / "out")
    assert contents(tmp_path / "out") == {"weights": "a"}

    target = folder(tmp_path / "elsewhere", weights="keep")
    os.symlink(target, tmp_path / "link")
    replace_folder(folder(tmp_path / ".b", weights="b"), tmp_path / "link")
    assert not (tmp_path / "link").is_symlink() and contents(tmp_path / "link") == {"weights": "b"}
    assert contents(target) == {"weights": "keep"}  # the link went, not what it pointed to
