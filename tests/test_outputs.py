"""Output locks and the --overwrite safety check (issue 16), on real files and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mergemed.errors import OutputError
from mergemed.outputs import OutputLock, check_replaceable, lock_path

HOLD = textwrap.dedent(
    """
    import sys, time
    from mergemed.outputs import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def hold_lock(output: Path, seconds: float = 60) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(output), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


def test_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    output = tmp_path / "merged"
    holder = hold_lock(output)
    try:
        with pytest.raises(OutputError) as raised, OutputLock(output):
            pass
        assert str(raised.value) == (
            f"{output}: process {holder.pid} is writing this output now; wait for it to "
            "finish (or stop it) and run the command again"
        )
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_run_does_not_block(tmp_path: Path) -> None:
    output = tmp_path / "merged"
    holder = hold_lock(output)
    holder.kill()  # SIGKILL: no clean-up ran, the lock file stays behind
    holder.wait()
    assert lock_path(output).exists()
    with OutputLock(output):
        assert lock_path(output).read_text().strip() == str(os.getpid())
    assert not lock_path(output).exists()


def test_lock_is_released_on_error(tmp_path: Path) -> None:
    output = tmp_path / "merged"
    with pytest.raises(RuntimeError), OutputLock(output):
        raise RuntimeError("boom")
    with OutputLock(output):
        pass


@pytest.mark.parametrize("relation", ["is", "contains", "is inside"])
def test_overwrite_refuses_outputs_that_touch_an_input(tmp_path: Path, relation: str) -> None:
    model = tmp_path / "models" / "instruct"
    model.mkdir(parents=True)
    output = {"is": model, "contains": tmp_path / "models", "is inside": model / "sub"}[relation]
    with pytest.raises(OutputError, match=f"the output {relation} the input"):
        check_replaceable(output, [tmp_path / "other", model])


def test_overwrite_follows_symbolic_links(tmp_path: Path) -> None:
    model = tmp_path / "instruct"
    model.mkdir()
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(OutputError, match="the output is the input"):
        check_replaceable(link, [model])
    with pytest.raises(OutputError, match="the output contains the input"):
        check_replaceable(tmp_path, [link])


def test_overwrite_refuses_root_and_home(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="file-system root"):
        check_replaceable(Path("/"), [])
    with pytest.raises(OutputError, match="home folder"):
        check_replaceable(Path.home(), [])


def test_unrelated_output_is_replaceable(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    check_replaceable(tmp_path / "a-merged", [tmp_path / "a"])  # a name prefix is not "inside"
