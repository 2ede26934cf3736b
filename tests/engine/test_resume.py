"""Interrupted merges: ``mergemed merge`` killed half-way resumes from its finished shards when
run again, and gives the same tensors as a merge that was never interrupted; a partial folder
left by a different merge (changed recipe or changed inputs) is not reused.

The models here have 32 decoder layers and the output is cut into ~10 KB shards (one tensor
each, a few hundred shards, each flushed to disk), so a merge takes long enough to be killed
after its first shard is recorded in the journal and well before its last.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli_env, load_model_tensors, slerp_recipe
from safetensors.torch import load_file, save_file

from mergemed.engine import JOURNAL, merge
from mergemed.io.writer import file_digest
from mergemed.testing import make_random_model

pytestmark = pytest.mark.slow

LAYERS = 32
SHARD_SIZE = "10KB"


def merge_command(recipe: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mergemed.cli",
        "merge",
        str(recipe),
        "-o",
        str(output),
        "--max-shard-size",
        SHARD_SIZE,
    ]


def partial_folder(output: Path) -> Path:
    return output.parent / f".{output.name}.mergemed-partial"


def completed_shards(output: Path) -> dict[str, dict]:
    """The journal's finished shards, or {} while there is no readable journal."""
    try:
        state = json.loads((partial_folder(output) / JOURNAL).read_text())
    except (OSError, ValueError):
        return {}
    return state.get("completed", {}) if isinstance(state, dict) else {}


def start_and_kill(recipe: Path, output: Path, log: Path) -> dict[str, int]:
    """Run ``mergemed merge``, SIGKILL it as soon as one shard is finished, and return the
    journal's finished shards as the killed run left them."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            merge_command(recipe, output), stdout=stderr, stderr=stderr, env=cli_env()
        )
        deadline = time.monotonic() + 120
        try:
            while not completed_shards(output):
                if process.poll() is not None:
                    pytest.fail(
                        f"the merge ended (exit {process.returncode}) before it could be "
                        f"killed:\n{log.read_text()}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail("no shard was finished within 120 s")
                time.sleep(0.002)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists(), "the killed merge must not have produced its output"
    partial = partial_folder(output)
    completed = completed_shards(output)
    shard_files = sorted(p.name for p in partial.glob("*.safetensors"))
    assert 1 <= len(completed) < len(shard_files), "killed after the first shard, before the last"
    for name, record in completed.items():
        assert (partial / name).stat().st_size == record["bytes"]
        assert record["sha256"] == file_digest(partial / name)
    return completed


def rerun(recipe: Path, output: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = subprocess.run(
        merge_command(recipe, output),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not partial_folder(output).exists()
    return result, json.loads((output / "merge.json").read_text())


def assert_same_tensors(folder: Path, expected_folder: Path) -> None:
    got = load_model_tensors(folder)
    expected = load_model_tensors(expected_folder)
    assert got.keys() == expected.keys()
    assert len(got) == 9 * LAYERS + 3
    different = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert different == []


@pytest.fixture(scope="module")
def deep_pair(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path
) -> tuple[Path, Path]:
    """A 32-layer tiny Llama and a perturbed copy of it (about 5 MB each)."""
    root = tmp_path_factory.mktemp("deep")
    base = make_random_model(
        root / "base", "llama", seed=0, tokenizer_dir=tiny_tokenizer_dir, num_layers=LAYERS
    )
    other = make_random_model(root / "other", base_dir=base, seed=1, perturbation=0.5)
    return base, other


class Killed:
    """A merge killed after its first shard: its recipe, output and a copy of its partial."""

    def __init__(self, recipe: Path, output: Path, snapshot: Path, completed: dict[str, dict]):
        self.recipe = recipe
        self.output = output
        self.snapshot = snapshot
        self.completed = completed

    def restore(self, output: Path) -> None:
        """Put the killed run's partial folder back, as the partial of ``output``."""
        shutil.copytree(self.snapshot, partial_folder(output))


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, deep_pair: tuple[Path, Path]) -> Killed:
    base, other = deep_pair
    root = tmp_path_factory.mktemp("killed")
    recipe = slerp_recipe(root / "recipe.yaml", base, other, "[0.2, 0.9]")
    output = root / "merged"
    completed = start_and_kill(recipe, output, root / "killed.log")
    snapshot = root / "snapshot"
    shutil.copytree(partial_folder(output), snapshot)
    shutil.rmtree(partial_folder(output))
    return Killed(recipe, output, snapshot, completed)


def test_killed_merge_resumes_to_identical_tensors(killed: Killed, tmp_path: Path) -> None:
    killed.restore(killed.output)  # as the killed run left it
    result, report = rerun(killed.recipe, killed.output)  # the very same command again
    assert report["resumed_shards"] >= len(killed.completed) >= 1
    assert "resumed" in result.stderr
    shard_files = sorted(p.name for p in killed.output.glob("*.safetensors"))
    assert report["output"]["shards"] == shard_files
    assert len(report["output"]["shards"]) > report["resumed_shards"]

    uninterrupted = merge(killed.recipe, tmp_path / "uninterrupted", max_shard_size=SHARD_SIZE)
    assert uninterrupted.resumed_shards == 0
    assert report["output"]["shards"] == uninterrupted.report["output"]["shards"]
    assert_same_tensors(killed.output, uninterrupted.output)
    for name in report["output"]["shards"]:
        assert (killed.output / name).read_bytes() == (uninterrupted.output / name).read_bytes()


def test_resumed_library_merge_reports_done_bytes(killed: Killed, tmp_path: Path) -> None:
    """``on_start`` is told how much a resumed run had already done; progress covers the rest."""
    output = tmp_path / "merged"
    killed.restore(output)
    starts: list[tuple[int, int]] = []
    written: list[int] = []
    result = merge(
        killed.recipe,
        output,
        max_shard_size=SHARD_SIZE,
        on_start=lambda total, done: starts.append((total, done)),
        progress=lambda count, _name: written.append(count),
    )
    assert result.resumed_shards >= len(killed.completed)
    [(total, done)] = starts
    assert total == result.output_bytes
    assert done >= sum(r["bytes"] for r in killed.completed.values()) > 0
    assert done + sum(written) == total
    assert not partial_folder(output).exists()
    fresh = merge(killed.recipe, tmp_path / "fresh")
    assert_same_tensors(output, fresh.output)


def test_changed_recipe_does_not_reuse_stale_partial(
    killed: Killed, tmp_path: Path, deep_pair: tuple[Path, Path]
) -> None:
    base, other = deep_pair
    output = tmp_path / "merged"
    killed.restore(output)
    # The first shard (the embeddings, at t = the first anchor) differs between the recipes.
    changed = slerp_recipe(tmp_path / "changed.yaml", base, other, "[0.7, 0.2]")
    result = merge(changed, output, max_shard_size=SHARD_SIZE)
    assert result.resumed_shards == 0
    assert not partial_folder(output).exists()
    fresh = merge(changed, tmp_path / "fresh")
    assert_same_tensors(output, fresh.output)


def test_changed_input_weights_do_not_reuse_stale_partial(
    tmp_path: Path, deep_pair: tuple[Path, Path]
) -> None:
    """Same recipe, same tensor names and shapes, but the other model's weights were replaced
    (re-trained or re-downloaded in place) between the killed run and the rerun."""
    base, shared_other = deep_pair
    other = Path(shutil.copytree(shared_other, tmp_path / "other"))
    recipe = slerp_recipe(tmp_path / "recipe.yaml", base, other, "[0.5, 0.5]")
    output = tmp_path / "merged"
    start_and_kill(recipe, output, tmp_path / "killed.log")

    weights = other / "model.safetensors"
    tensors = {name: tensor * 2 for name, tensor in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    result = merge(recipe, output, max_shard_size=SHARD_SIZE)

    fresh = merge(recipe, tmp_path / "fresh")
    assert_same_tensors(output, fresh.output)
    assert result.resumed_shards == 0


def test_tampered_finished_shard_is_written_again(killed: Killed, tmp_path: Path) -> None:
    """A finished shard changed in the partial folder at the same size (its last 4 bytes
    flipped) fails its recorded digest: the rerun writes it again, and only it."""
    output = tmp_path / "merged"
    killed.restore(output)
    tampered = sorted(killed.completed)[0]
    path = partial_folder(output) / tampered
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    path.write_bytes(bytes(data))
    result = merge(killed.recipe, output, max_shard_size=SHARD_SIZE)
    assert result.resumed_shards == len(killed.completed) - 1
    fresh = merge(killed.recipe, tmp_path / "fresh", max_shard_size=SHARD_SIZE)
    assert (output / tampered).read_bytes() == (fresh.output / tampered).read_bytes()
    assert_same_tensors(output, fresh.output)


def test_second_merge_on_the_same_output_is_refused(
    tmp_path: Path, deep_pair: tuple[Path, Path]
) -> None:
    """Two merges into one output: the second refuses in one line naming the first's PID,
    touches nothing, and the first finishes with the output an uninterrupted merge gives."""
    base, other = deep_pair
    recipe = slerp_recipe(tmp_path / "recipe.yaml", base, other, "[0.3, 0.6]")
    output = tmp_path / "merged"
    log = tmp_path / "first.log"
    with log.open("w") as stderr:
        first = subprocess.Popen(
            merge_command(recipe, output), stdout=stderr, stderr=stderr, env=cli_env()
        )
        try:
            deadline = time.monotonic() + 120
            while not completed_shards(output):
                assert first.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.002)
            # Hold the first merge mid-run (it keeps its lock) while the second one tries.
            first.send_signal(signal.SIGSTOP)
            second = subprocess.run(
                merge_command(recipe, output),
                capture_output=True,
                text=True,
                env=cli_env(),
                timeout=300,
            )
        finally:
            first.send_signal(signal.SIGCONT)
            first.wait(timeout=300)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: {output}: process {first.pid} is writing this output now; wait for it to "
        "finish (or stop it) and run the command again"
    )
    assert first.returncode == 0, log.read_text()
    uninterrupted = merge(recipe, tmp_path / "uninterrupted", max_shard_size=SHARD_SIZE)
    assert_same_tensors(output, uninterrupted.output)
    assert not partial_folder(output).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if "mergemed" in p.name) == []
