"""Searches with real Optuna, real lm-eval and tiny local models: every stored score equals
merging that candidate to disk and evaluating it; a killed search resumes to the same table;
two workers (SQLite, and a throw-away PostgreSQL cluster) never run a candidate twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file

pytest.importorskip("optuna")
pytest.importorskip("lm_eval")

from mergemed.engine import merge
from mergemed.evaluation import evaluate
from mergemed.search.export import ranked_trials
from mergemed.search.study import leaderboard, reopen_run, run_search

pytestmark = pytest.mark.slow

TASKS = ["mm_pubmedqa", "ifeval_med"]
LIMIT = 6
SETTINGS = {"gen_kwargs": "max_gen_toks=8"}


def write_space(folder: Path, instruct: Path, clinical: Path) -> Path:
    path = folder / "space.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            recipe:
              merge_method: slerp
              base_model: {instruct}
              models:
                - model: {instruct}
                - model: {clinical}
              parameters:
                t:
                  - filter: self_attn
                    value: 0.5
                  - value: 0.5
            vary:
              attn: {{path: parameters.t.0.value, values: [0.1, 0.9]}}
              rest: {{path: parameters.t.1.value, low: 0.2, high: 0.8, step: 0.6}}
            score:
              tasks: {TASKS}
              limit: {LIMIT}
              clinical: {clinical}
              instruct: {instruct}
              settings: {{gen_kwargs: "max_gen_toks=8"}}
            """
        )
    )
    return path


def table(run) -> dict:
    """choice -> (domain gain, forgetting), for comparing two runs."""
    return {
        tuple(sorted(row["choice"].items())): (row["domain_gain"], row["forgetting"])
        for row in leaderboard(run)["trials"]
    }


def test_stored_scores_equal_merging_each_candidate_to_disk(tiny_eval_models, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    run = run_search(space, tmp_path / "run")
    board = leaderboard(run)
    assert len(board["trials"]) == 4
    assert len({tuple(sorted(r["choice"].items())) for r in board["trials"]}) == 4
    check_store = tmp_path / "check.sqlite"  # the parents scored once; each merge is new
    for row in board["trials"]:
        recipe = tmp_path / f"candidate-{row['trial']}.yaml"
        recipe.write_text(row["recipe"])
        folder = tmp_path / f"merged-{row['trial']}"
        merge(recipe, folder)
        report = evaluate(
            folder,
            tasks=TASKS,
            limit=LIMIT,
            against={"clinical": clinical, "instruct": instruct},
            store=check_store,
            **SETTINGS,
        )
        assert report.models[0].cached == []
        summary = report.trade_off.as_dict()
        assert row["domain_gain"] == summary["domain_gain"]
        assert row["forgetting"] == summary["forgetting"]
        stored = reopen_run(run.folder)
        assert stored.study_name == run.study_name
    # nothing but the run folder was written: no candidate weights
    assert not list((tmp_path / "run").rglob("*.safetensors"))
    # show works from the folder alone and writes the front
    result = run_cli("grid", "show", str(run.folder))
    assert result.returncode == 0, result.stderr
    assert (run.folder / "pareto.png").stat().st_size > 0
    assert (run.folder / "pareto.json").is_file()
    # export: the two best by rank, merged through the engine, equal those candidates merged
    # to disk above, each with its recipe
    best = tmp_path / "best"
    result = run_cli("grid", "export", str(run.folder), "--top", "2", "-o", str(best))
    assert result.returncode == 0, result.stderr
    listing = json.loads((best / "export.json").read_text())["exported"]
    assert [e["trial"] for e in listing] == [r["trial"] for r in ranked_trials(board)[:2]]
    for entry in listing:
        folder = Path(entry["folder"])
        assert folder == best / f"trial-{entry['trial']}"
        assert weights(folder).keys() == weights(tmp_path / f"merged-{entry['trial']}").keys()
        for name, tensor in weights(folder).items():
            assert torch.equal(tensor, weights(tmp_path / f"merged-{entry['trial']}")[name])
        assert (folder / "recipe.yaml").is_file()
    again = run_cli("grid", "export", str(run.folder), "--top", "0", "-o", str(tmp_path / "x"))
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "--top 0" in again.stderr and not (tmp_path / "x").exists()


def weights(folder: Path) -> dict:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


WORKER = """
import os, signal, sys
from mergemed.search import storage
from mergemed.search.study import run_search
# a short heartbeat, so a test need not wait a minute for a dead worker's trial to go stale
storage.HEARTBEAT_SECONDS = int(os.environ.get("HEARTBEAT", storage.HEARTBEAT_SECONDS))
storage.GRACE_SECONDS = int(os.environ.get("GRACE", storage.GRACE_SECONDS))
kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
seen = []
def on_trial(record):
    seen.append(record)
    if kill_after and len(seen) >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
run_search(sys.argv[1], sys.argv[2], storage=os.environ.get("STORAGE") or None, on_trial=on_trial)
"""


def worker(space: Path, folder: Path, *extra: str, storage: str | None = None, **env_extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STORAGE": storage or "", **env_extra}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(space), str(folder), *extra], env=env
    )


def test_a_killed_search_resumes_to_the_uninterrupted_table(tiny_eval_models, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    killed = worker(space, tmp_path / "killed", "2")
    assert killed.wait(timeout=600) == -signal.SIGKILL
    partial = reopen_run(tmp_path / "killed")
    assert len(leaderboard(partial)["trials"]) == 2
    resumed = worker(space, tmp_path / "killed")
    assert resumed.wait(timeout=600) == 0
    whole = run_search(space, tmp_path / "whole")
    assert table(reopen_run(tmp_path / "killed")) == table(whole)
    assert len(table(whole)) == 4


def test_a_trial_whose_worker_died_is_retried_once(tiny_eval_models, tmp_path) -> None:
    import time

    import optuna
    from optuna.trial import TrialState

    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    run = tmp_path / "run"
    beat = {"HEARTBEAT": "1", "GRACE": "2"}
    first = worker(space, run, **beat)
    deadline, killed = time.time() + 300, None
    while killed is None and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
        if not (run / "search.json").is_file() or not (run / "study.sqlite").is_file():
            continue
        try:
            study = optuna.load_study(
                study_name=reopen_run(run).study_name, storage=f"sqlite:///{run / 'study.sqlite'}"
            )
            trials = study.get_trials(deepcopy=False)
        except Exception:  # the schema is still being created
            continue
        for trial in trials:
            if trial.state == TrialState.RUNNING and "merge_seconds" in trial.user_attrs:
                first.send_signal(signal.SIGKILL)  # mid-trial: merged, being scored
                killed = trial
                break
    assert killed is not None, "no trial was caught running"
    assert first.wait(timeout=60) == -signal.SIGKILL
    time.sleep(3)  # longer than the grace period
    second = worker(space, run, **beat)
    assert second.wait(timeout=600) == 0
    study = optuna.load_study(
        study_name=reopen_run(run).study_name, storage=f"sqlite:///{run / 'study.sqlite'}"
    )
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4


def test_another_space_in_the_same_run_folder_is_refused(tiny_eval_models, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    from mergemed.search.study import open_run

    open_run(space, tmp_path / "run")
    space.write_text(space.read_text().replace("0.9]", "0.8]"))
    result = run_cli("grid", str(space), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "holds a search of another space" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_two_workers_on_sqlite_run_each_candidate_once(tiny_eval_models, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    workers = [worker(space, tmp_path / "run") for _ in range(2)]
    # grid show works while the search runs: once a trial has finished, it shows it
    import time

    shown = None
    while shown is None and any(w.poll() is None for w in workers):
        time.sleep(0.5)
        try:
            if leaderboard(reopen_run(tmp_path / "run"))["trials"]:
                shown = run_cli("grid", "show", str(tmp_path / "run"))
        except Exception:  # the run folder or its schema is still being created
            continue
    assert [w.wait(timeout=900) for w in workers] == [0, 0]
    assert shown is not None, "the search finished before any trial could be shown"
    assert shown.returncode == 0, shown.stderr
    assert "search mergemed-" in shown.stdout
    rows = leaderboard(reopen_run(tmp_path / "run"))["trials"]
    choices = [tuple(sorted(r["choice"].items())) for r in rows]
    assert len(choices) == 4 and len(set(choices)) == 4


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL 15 cluster on a Unix socket, stopped at the end."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("PostgreSQL is not installed")
    pytest.importorskip("psycopg2")
    folder = Path(tempfile.mkdtemp(prefix="mergemed-pg-"))
    folder.chmod(0o777)
    # initdb and postgres refuse to run as root
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run(
        [*as_user, "initdb", "-D", str(data), "-A", "trust", "-U", "mergemed", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses='' -k {folder} -p {port}"
    subprocess.run(
        [
            *as_user,
            "pg_ctl",
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-l",
            str(folder / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://mergemed@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run(
            [*as_user, "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_postgresql_run_each_candidate_once(
    tiny_eval_models, tmp_path, postgres
) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    # each machine has its own run folder; the storage is what they share
    workers = [worker(space, tmp_path / f"machine-{i}", storage=postgres) for i in range(2)]
    assert [w.wait(timeout=900) for w in workers] == [0, 0]
    rows = leaderboard(reopen_run(tmp_path / "machine-0"))["trials"]
    choices = [tuple(sorted(r["choice"].items())) for r in rows]
    assert len(choices) == 4 and len(set(choices)) == 4


def test_an_unreachable_storage_is_one_line_with_the_password_masked(
    tiny_eval_models, tmp_path
) -> None:
    instruct, clinical, _ = tiny_eval_models
    space = write_space(tmp_path, instruct, clinical)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg2://user:s3cret-pass@127.0.0.1:{port}/db"
    result = run_cli("grid", str(space), "--run-dir", str(tmp_path / "run"), "--storage", url)
    assert result.returncode == 2, result.stderr
    assert "cannot be used" in result.stderr and "s3cret-pass" not in result.stderr
    assert "s3cret-pass" not in (tmp_path / "run" / "search.json").read_text()
