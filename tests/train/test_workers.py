"""``mergemed train`` launched for real as 2 workers (``python -m torch.distributed.run``, gloo
on the CPU) against one process as the oracle: a global batch of 2 workers x micro batch b
must train exactly like one worker with micro batch b and gradient accumulation 2 (the same
per-step losses and final weights, to 1e-4), for CPT and for SFT with LoRA; one output, written
by worker 0; a killed worker, a bad config, a missing data file and Ctrl-C end in one line
from worker 0 and leave nothing behind; a killed run resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import cli_env, load_model_tensors, run_cli
from train_configs import MEDICAL, cpt_config, sft_config

from mergemed.errors import MergemedError
from mergemed.train.config import load_train_config
from mergemed.train.cpt import train_cpt
from mergemed.train.trainer_setup import check_fsdp
from mergemed.train.workers import (
    Workers,
    is_lost_worker_error,
    single_process_launch_note,
)

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
CPT_STEPS = {
    "max_steps": 6,
    "micro_batch_size": 2,
    "save_steps": 3,
    "eval_steps": 3,
    "logging_steps": 1,
}
SFT_STEPS = {
    "max_steps": 4,
    "micro_batch_size": 2,
    "save_steps": 4,
    "eval_steps": 2,
    "logging_steps": 1,
}
LORA = "{r: 8, alpha: 16, dropout: 0.0}"  # no dropout: its noise differs between 1 and 2 workers


@dataclass
class Launch:
    """A finished (or stopped) 2-worker launch: the launcher's result and each worker's
    output (the launcher writes them to files: ``--redirects 3``)."""

    result: subprocess.CompletedProcess[str]
    logs: Path

    def output(self, rank: int) -> tuple[str, str]:
        """(stdout, stderr) of worker ``rank``."""
        (folder,) = self.logs.glob(f"*/attempt_0/{rank}")
        return (folder / "stdout.log").read_text(), (folder / "stderr.log").read_text()

    def lines(self, rank: int) -> list[str]:
        """Every non-empty line worker ``rank`` printed."""
        return [line for text in self.output(rank) for line in text.splitlines() if line.strip()]


def launch_command(logs: Path, *args: object) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port: other test runs on this machine may launch too
        "--nproc_per_node=2",
        f"--log-dir={logs}",
        "--redirects=3",
        "-m",
        "mergemed",
        *(str(a) for a in args),
    ]


def worker_env() -> dict[str, str]:
    """One thread per worker (as torchrun sets it); lines not wrapped, to count them."""
    return cli_env({"OMP_NUM_THREADS": "1", "COLUMNS": "400"})


def launch(logs: Path, *args: object) -> Launch:
    """Run ``mergemed ARGS`` as 2 workers to the end."""
    result = subprocess.run(
        launch_command(logs, *args), capture_output=True, text=True, env=worker_env(), timeout=600
    )
    return Launch(result, logs)


def worker_pid(launcher: subprocess.Popen[str], rank: int) -> int:
    """The process id of worker ``rank`` among the launcher's children."""
    for entry in Path("/proc").iterdir():
        try:
            parent = (entry / "stat").read_text().split(")")[-1].split()[1]
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if parent == str(launcher.pid) and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    raise AssertionError(f"no worker {rank} under the launcher")


def launch_and_stop(logs: Path, marker: Path, stop, *args: object) -> Launch:
    """Run ``mergemed ARGS`` as 2 workers; once ``marker`` exists, ``stop(launcher)``."""
    launcher = subprocess.Popen(
        launch_command(logs, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )
    deadline = time.time() + 300
    while not marker.exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert launcher.poll() is None, "the run ended before it could be stopped"
    stop(launcher)
    stdout, stderr = launcher.communicate(timeout=120)
    return Launch(
        subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr), logs
    )


def curve(folder: Path, name: str = "train") -> dict[int, float]:
    return dict(json.loads((folder / "training.json").read_text())["loss_curves"][name])


def assert_same_training(one: Path, two: Path, curves: tuple[str, ...]) -> str:
    """Per-step losses and final weights of two trained folders agree to :data:`TOLERANCE`;
    says by how much."""
    worst = 0.0
    for name in curves:
        first, second = curve(one, name), curve(two, name)
        assert first.keys() == second.keys() and first, name
        worst = max(worst, *(abs(first[s] - second[s]) for s in first))
    assert worst < TOLERANCE, worst
    said = [f"losses {worst:.1e}"]
    for sub in ("", "adapter"):
        if (one / sub).is_dir() and any((one / sub).glob("*.safetensors")):
            a, b = load_model_tensors(one / sub), load_model_tensors(two / sub)
            assert a.keys() == b.keys()
            difference = max(float((a[n] - b[n]).abs().max()) for n in a)
            assert difference < TOLERANCE, (sub, difference)
            said.append(f"{sub or 'weights'} {difference:.1e}")
    return ", ".join(said)


def leftovers(folder: Path) -> list[str]:
    """What a run left in ``folder`` besides its configs and launch logs."""
    return sorted(
        p.name for p in folder.iterdir() if p.suffix != ".yaml" and not p.name.startswith("logs")
    )


@dataclass
class CPTRuns:
    """The same global batches trained by 1 worker (``one``, the oracle) and by 2 (``two``)."""

    root: Path
    one: Path
    two: Path
    config: Path
    launch: Launch


@pytest.fixture(scope="module")
def cpt_runs(tiny_eval_models, tmp_path_factory) -> CPTRuns:
    root = tmp_path_factory.mktemp("cpt-workers")
    base = tiny_eval_models[0]
    oracle = cpt_config(base, root / "one", gradient_accumulation_steps=2, **CPT_STEPS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker has; on a busy machine 2 threads cost 20-40x
    try:
        train_cpt(load_train_config(oracle, "cpt"), progress=False)  # in this process
    finally:
        torch.set_num_threads(threads)
    config = root / "two.yaml"
    config.write_text(cpt_config(base, root / "two", **CPT_STEPS))
    two = launch(root / "logs", "train", "cpt", config, "-q")
    return CPTRuns(root, root / "one", root / "two", config, two)


def test_two_workers_train_cpt_like_one_with_accumulation(cpt_runs: CPTRuns) -> None:
    two = cpt_runs.launch
    assert two.result.returncode == 0, two.output(0)
    worst = assert_same_training(
        cpt_runs.one, cpt_runs.two, ("train", "held_out/general", "held_out/medical")
    )
    one_report = json.loads((cpt_runs.one / "training.json").read_text())
    report = json.loads((cpt_runs.two / "training.json").read_text())
    assert report["world_size"] == 2 and one_report["world_size"] == 1
    # The mix is drawn once, for both workers' batches: the same tokens as the one worker's.
    assert report["tokens_per_source"] == one_report["tokens_per_source"]
    assert report["repeats_per_source"] == one_report["repeats_per_source"]
    assert report["steps"] == 6 and report["tokens_per_second"] > 0
    # Quiet means quiet: worker 0 prints the summary and nothing else, worker 1 nothing.
    (summary,) = two.lines(0)
    assert summary.startswith("trained 6 steps on 2 workers") and two.lines(1) == []
    # One output, complete; no lock, working or partial folder left.
    assert leftovers(cpt_runs.root) == ["one", "two"]
    print(f"1 vs 2 workers, CPT, largest differences: {worst}")


def test_a_killed_worker_stops_the_run_in_one_line_and_it_resumes(cpt_runs: CPTRuns) -> None:
    root, killed = cpt_runs.root, cpt_runs.root / "killed"
    config = root / "killed.yaml"
    config.write_text(cpt_runs.config.read_text().replace(str(cpt_runs.two), str(killed)))
    checkpoint = root / ".killed.mergemed-training" / "checkpoints" / "checkpoint-3"

    def kill_worker_1(launcher: subprocess.Popen[str]) -> None:
        while not (checkpoint / "rng_state_1.pth").exists():  # worker 1's share, too
            time.sleep(0.01)
        os.kill(worker_pid(launcher, 1), signal.SIGKILL)

    marker = checkpoint / "trainer_state.json"
    args = ("train", "cpt", config, "-q")
    stopped = launch_and_stop(root / "killed-logs", marker, kill_worker_1, *args)
    assert stopped.result.returncode != 0
    (line,) = stopped.lines(0)  # one line, from worker 0; the killed worker says nothing
    assert line in (
        "error: training stopped: worker 1's process ended (killed or crashed); run the same "
        "command again to resume from checkpoint-3",
        "interrupted: run the same command again to resume",  # the launcher's stop came first
    ), line
    assert stopped.lines(1) == [] and not killed.exists()

    resumed = launch(root / "resumed-logs", *args)
    assert resumed.result.returncode == 0, resumed.output(0)
    report = json.loads((killed / "training.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-3")
    assert_same_training(cpt_runs.two, killed, ("train", "held_out/general"))
    assert not (root / ".killed.mergemed-training").exists()


def test_two_workers_train_sft_lora_like_one(tiny_eval_models, tmp_path) -> None:
    base = tiny_eval_models[0]
    one = tmp_path / "one.yaml"
    one.write_text(
        sft_config(base, tmp_path / "one", lora=LORA, gradient_accumulation_steps=2, **SFT_STEPS)
    )
    single = run_cli("train", "sft", one, "-q", env={"OMP_NUM_THREADS": "1", "COLUMNS": "400"})
    assert single.returncode == 0, single.stderr
    # Quiet, one process: the summary line, no progress bar, metric dict or warning.
    assert single.stdout == "" and len(single.stderr.strip().splitlines()) == 1, single.stderr
    assert single.stderr.startswith("trained 4 steps in ")

    two = tmp_path / "two.yaml"
    two.write_text(sft_config(base, tmp_path / "two", lora=LORA, **SFT_STEPS))
    workers = launch(tmp_path / "logs", "train", "sft", two, "-q")
    assert workers.result.returncode == 0, workers.output(0)
    worst = assert_same_training(tmp_path / "one", tmp_path / "two", ("train", "held_out"))
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()
    reports = [json.loads((tmp_path / n / "training.json").read_text()) for n in ("one", "two")]
    assert [r["world_size"] for r in reports] == [1, 2]
    assert reports[0]["completion_tokens"] == reports[1]["completion_tokens"]
    print(f"1 vs 2 workers, SFT LoRA, largest differences: {worst}")


def test_bad_input_with_two_workers_is_one_line_from_worker_0(tiny_eval_models, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {max_steps: 0}\n")
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        cpt_config(tiny_eval_models[0], tmp_path / "out", **CPT_STEPS).replace(
            str(MEDICAL), str(tmp_path / "missing.jsonl")
        )
    )
    for config, expected in ((bad, "bad.yaml:1: model: required key"), (missing, "missing.jsonl")):
        failed = launch(tmp_path / f"logs-{config.stem}", "train", "cpt", config)
        assert failed.result.returncode != 0
        (line,) = failed.lines(0)
        assert line.startswith("error: ") and expected in line, line
        assert failed.lines(1) == []
        # Both workers exit 2 (the launcher's report lists each exit code).
        assert failed.result.stderr.count("exitcode  : 2 ") == 2, failed.result.stderr
        assert leftovers(tmp_path) == []


def test_ctrl_c_with_two_workers_is_one_line_and_leaves_nothing(tiny_eval_models, tmp_path) -> None:
    config = tmp_path / "cpt.yaml"
    config.write_text(cpt_config(tiny_eval_models[0], tmp_path / "out", max_steps=50))
    working = tmp_path / ".out.mergemed-training"
    stopped = launch_and_stop(
        tmp_path / "logs",
        working,
        lambda launcher: launcher.send_signal(signal.SIGINT),
        "train",
        "cpt",
        config,
        "-q",
    )
    assert stopped.result.returncode != 0
    assert stopped.lines(0) == ["interrupted: run the same command again to resume"]
    assert stopped.lines(1) == []
    assert leftovers(tmp_path) == []  # before the first checkpoint: nothing to resume


FSDP_ON_CPU = (
    "FSDP runs only on CUDA GPUs here: torch's fully_shard itself works on the CPU with gloo "
    "(checked with torch 2.13), but transformers' Trainer shards through accelerate, whose "
    "AcceleratorState turns FSDP on only for GPU-type devices (never for MULTI_CPU), so on "
    "the CPU an FSDP launch would silently train plain DDP (mergemed refuses it: "
    "test_fsdp_on_the_cpu_is_refused); this test needs 2 CUDA GPUs"
)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=FSDP_ON_CPU)
def test_fsdp_trains_like_one_worker(
    cpt_runs: CPTRuns, tmp_path: Path
) -> None:  # pragma: no cover - GPUs
    accelerate_config = tmp_path / "fsdp.yaml"
    accelerate_config.write_text(
        "distributed_type: FSDP\nnum_processes: 2\nnum_machines: 1\nmixed_precision: 'no'\n"
        "fsdp_config:\n  fsdp_version: 2\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
        "  fsdp_state_dict_type: SHARDED_STATE_DICT\n  fsdp_reshard_after_forward: true\n"
    )
    config = tmp_path / "fsdp-cpt.yaml"
    config.write_text(
        cpt_runs.config.read_text().replace(str(cpt_runs.two), str(tmp_path / "fsdp"))
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(accelerate_config),
            "-m",
            "mergemed",
            "train",
            "cpt",
            str(config),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert_same_training(cpt_runs.one, tmp_path / "fsdp", ("train",))


def test_fsdp_on_the_cpu_is_refused(tiny_eval_models, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for FSDP
    config = load_train_config(cpt_config(tiny_eval_models[0], tmp_path / "out"), "cpt")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: FSDP is allowed")
    with pytest.raises(MergemedError, match=r"FSDP \(the accelerate config\) needs CUDA GPUs"):
        check_fsdp(config)
    with pytest.raises(MergemedError, match=r"FSDP \(the accelerate config\) needs CUDA GPUs"):
        train_cpt(config, progress=False)
    assert leftovers(tmp_path) == []


def test_one_process_is_its_own_worker_0(monkeypatch) -> None:
    alone = Workers()
    assert alone.is_main and alone.world_size == 1
    assert alone.decide(lambda: 3) == 3 and alone.agree(lambda: 4) == 4
    alone.check_same("data", "any digest")  # nothing to compare with
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    assert is_lost_worker_error(gloo) and not is_lost_worker_error(RuntimeError("shape mismatch"))
    # `accelerate launch --cpu --num_processes 2` starts one process: the command says so.
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert "torchrun --nproc_per_node N" in (single_process_launch_note() or "")
    monkeypatch.delenv("MASTER_ADDR")
    assert single_process_launch_note() is None
