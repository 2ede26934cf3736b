"""The command line's contract: every failure is one line on stderr with a known exit status,
and no secret from the environment is ever printed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergemed.cli import app as cli_app
from mergemed.cli import methods as methods_verb

REPO = Path(__file__).resolve().parents[2]

FAKE_TOKEN = "hf_FAKEfakeFAKEfakeFAKEfake1234"


def run(*args: str, env_token: bool = True, **kwargs) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_token:
        env["HF_TOKEN"] = FAKE_TOKEN
    return subprocess.run(
        [sys.executable, "-m", "mergemed", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("merge",), "Missing argument 'recipe'"),
        (("evaluate",), "Missing argument 'model'"),
        (("inspect", "a", "b", "--top", "x"), "Invalid value for '--top'"),
        (("merge", "r.yaml", "-o", "out", "--no-such-flag"), "No such option"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: tuple[str, ...], fragment: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "--help" in lines[0]


def test_help_and_version_of_a_verb_exit_0() -> None:
    result = run("merge", "--help")
    assert result.returncode == 0
    assert "--output" in result.stdout


def test_ctrl_c_says_how_to_resume(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "mergemed", "demo", "--workdir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until the demo is past its imports and working, then interrupt it.
    deadline = time.monotonic() + 120
    while not (tmp_path / "demo").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == ("interrupted: run the same command again to resume")
    assert "Traceback" not in stderr


def test_internal_error_is_one_line_and_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug (any exception that is not a MergemedError) ends with exit 1 and one line; the
    traceback only with MERGEMED_DEBUG=1, and the token from the environment never shows."""

    def broken() -> None:
        raise RuntimeError(f"request failed: Authorization: Bearer {FAKE_TOKEN}")

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    # The registered command is looked up through the module at call time: a seam, not a mock.
    original = methods_verb.methods
    for registered in cli_app.app.registered_commands:
        if registered.callback is original:
            monkeypatch.setattr(registered, "callback", broken)
            monkeypatch.setattr(registered, "name", "methods")
    for debug in ("", "1"):
        monkeypatch.setenv("MERGEMED_DEBUG", debug)
        with pytest.raises(SystemExit) as exited:
            cli_app.main(["methods"])
        assert exited.value.code == 1
        stderr = capsys.readouterr().err
        assert FAKE_TOKEN not in stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: internal error: RuntimeError: request failed")
        assert last.endswith("(set MERGEMED_DEBUG=1 for the traceback)")
        assert ("Traceback" in stderr) == bool(debug)


def test_bad_input_error_never_prints_the_token(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {FAKE_TOKEN}\n")
    result = run("merge", str(recipe), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert FAKE_TOKEN not in result.stderr + result.stdout


def test_user_text_is_printed_as_written(tmp_path: Path) -> None:
    """Rich would turn ``:abc:`` into an emoji and ``[b]`` into bold: user text stays text."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n")
    result = run("merge", str(recipe), "-o", str(tmp_path / "out"), "--device", "cuda:abc")
    assert result.returncode == 2
    assert "cuda:abc" in result.stderr


def test_help_version_validate_and_methods_load_no_heavy_library(tmp_path: Path) -> None:
    """``mergemed --help``, ``--version``, ``validate`` (a recipe and a training config) and
    ``methods`` answer without importing torch, transformers or lm-eval (they took 4-5 s to
    start before)."""
    recipe = REPO / "recipes" / "gatortron_llama.yaml"
    config = REPO / "configs" / "cpt_medical.yaml"
    code = (
        "import sys\n"
        "from mergemed.cli.app import main\n"
        f"for args in (['--help'], ['--version'], ['validate', {str(recipe)!r}],\n"
        f"             ['validate', {str(config)!r}], ['methods']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    from mergemed import __version__

    assert f"mergemed {__version__}" in result.stdout


LEAVE_SCRIPT = """
import atexit, sys
import mergemed.evaluation.backends as backends
from mergemed.cli import main

atexit.register(lambda: print("finalizers ran", flush=True))
backends._vllm_started = sys.argv[1] == "vllm"  # what building a vLLM lm-eval model sets
main(sys.argv[2:])
"""


@pytest.mark.parametrize("engine", ["vllm", "hf"])
@pytest.mark.parametrize("args", [("methods",), ("validate", "missing.yaml")])
def test_a_run_that_started_vllm_leaves_without_finalizers(
    tmp_path: Path, engine: str, args: tuple[str, ...]
) -> None:
    # vLLM can abort the interpreter's shutdown after the outputs are written: once an engine
    # ran, the command leaves at once with its own status (0, or 2 after an error line), its
    # output flushed; without one, exit hooks run as usual.
    result = subprocess.run(
        [sys.executable, "-c", LEAVE_SCRIPT, engine, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    expected = 0 if args == ("methods",) else 2
    assert result.returncode == expected, result.stderr
    assert ("slerp" in result.stdout) if expected == 0 else ("missing.yaml" in result.stderr)
    assert ("finalizers ran" in result.stdout) == (engine == "hf")
