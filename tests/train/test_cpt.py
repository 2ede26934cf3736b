"""``mergemed train cpt`` for real (transformers Trainer, tiny local Llama, PubMedQA abstracts
mixed 9:1 with public-domain general text): the mix holds in tokens, packing wastes little,
held-out medical loss falls, a killed run resumes to the same losses, and the output merges."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import kill_when_written, load_model_tensors, run_cli
from train_configs import MEDICAL, cpt_config

from mergemed.engine import merge
from mergemed.errors import MergemedError, OutputError
from mergemed.outputs import OutputLock
from mergemed.train.config import load_train_config
from mergemed.train.cpt import train_cpt

pytestmark = pytest.mark.slow


def logged(report: dict, curve: str) -> dict[int, float]:
    return dict(report["loss_curves"][curve])


def test_cpt_mixes_packs_and_learns(tiny_eval_models, tmp_path: Path) -> None:
    base = tiny_eval_models[0]
    output = tmp_path / "clinical"
    result = train_cpt(load_train_config(cpt_config(base, output), "cpt"), progress=False)
    report = json.loads((output / "training.json").read_text())
    tokens = report["tokens_per_source"]
    assert tokens["general"] / (tokens["general"] + tokens["medical"]) == pytest.approx(
        0.9, abs=0.02
    )
    assert report["padding_waste"] <= 0.02
    umask = os.umask(0)
    os.umask(umask)
    assert (output / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    medical = logged(report, "held_out/medical")
    assert medical[30] < medical[10], medical  # the model learns the medical source
    assert result.steps == 30 and report["base_model"] == str(base)
    assert (output / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_train_config(output / "config.yaml") == load_train_config(
        cpt_config(base, output), "cpt"
    )
    assert not (output / "training_args.bin").exists()  # no pickles in the output
    assert not (tmp_path / ".clinical.mergemed-training").exists()

    # The output is an ordinary model folder: it merges with its parent.
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n"
        f"  - model: {output}\nparameters:\n  t: 0.5\n"
    )
    merged = merge(recipe, tmp_path / "merged").output
    assert load_model_tensors(merged).keys() == load_model_tensors(output).keys()


def test_killed_run_resumes_to_the_same_losses(tiny_eval_models, tmp_path: Path) -> None:
    base = tiny_eval_models[0]
    whole = train_cpt(
        load_train_config(cpt_config(base, tmp_path / "whole", max_steps=20), "cpt"),
        progress=False,
    )
    config_path = tmp_path / "killed.yaml"
    output = tmp_path / "killed"
    config_path.write_text(cpt_config(base, output, max_steps=20))
    checkpoint = tmp_path / ".killed.mergemed-training" / "checkpoints" / "checkpoint-10"
    kill_when_written(checkpoint / "trainer_state.json", "train", "cpt", config_path, "-q")
    assert checkpoint.is_dir() and not output.exists(), "killed after its first checkpoint"

    resumed = train_cpt(config_path, progress=False)
    assert resumed.report["resumed_from"].endswith("checkpoint-10")
    first, second = whole.report, resumed.report
    assert logged(second, "train")[20] == pytest.approx(logged(first, "train")[20], abs=1e-4)
    for source in ("general", "medical"):
        curve = f"held_out/{source}"
        assert logged(second, curve)[20] == pytest.approx(logged(first, curve)[20], abs=1e-4)
    one, two = load_model_tensors(tmp_path / "whole"), load_model_tensors(output)
    assert max(float((one[n] - two[n]).abs().max()) for n in one) < 1e-4


def test_resuming_with_another_config_is_refused(tiny_eval_models, tmp_path: Path) -> None:
    base = tiny_eval_models[0]
    output = tmp_path / "out"
    working = tmp_path / ".out.mergemed-training"
    (working / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (working / "checkpoints" / "checkpoint-10" / "trainer_state.json").write_text("{}")
    first = load_train_config(cpt_config(base, output), "cpt")
    (working / "resume_key.json").write_text(json.dumps(first.resume_key()))
    changed = load_train_config(cpt_config(base, output, learning_rate=5e-4), "cpt")
    with pytest.raises(MergemedError, match=r"training\.learning_rate: 0\.001 in the checkpoint"):
        train_cpt(changed, progress=False)
    assert (working / "checkpoints" / "checkpoint-10").is_dir()  # another config's: kept


def test_cli_bad_data_is_one_line(tiny_eval_models, tmp_path: Path) -> None:
    config = tmp_path / "cpt.yaml"
    config.write_text(
        cpt_config(tiny_eval_models[0], tmp_path / "out").replace(
            str(MEDICAL), str(tmp_path / "missing.jsonl")
        )
    )
    result = run_cli("train", "cpt", config)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing.jsonl" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.mergemed-training").exists()  # failed before a checkpoint


def test_a_failed_run_does_not_block_the_fixed_config(tiny_eval_models, tmp_path) -> None:
    """A run that fails before its first checkpoint leaves nothing that refuses the next one;
    a working folder left with only a resume key (as older versions left it) is ignored."""
    base, output = tiny_eval_models[0], tmp_path / "out"
    good = cpt_config(base, output, max_steps=2, save_steps=10, eval_steps=10)
    bad = good.replace(str(MEDICAL), str(tmp_path / "missing.jsonl"))
    with pytest.raises(MergemedError, match=r"missing\.jsonl: file not found"):
        train_cpt(load_train_config(bad, "cpt"), progress=False)
    working = tmp_path / ".out.mergemed-training"
    assert not working.exists()

    working.mkdir()
    stale = load_train_config(bad, "cpt").resume_key()
    (working / "resume_key.json").write_text(json.dumps(stale))
    result = train_cpt(load_train_config(good, "cpt"), progress=False)
    assert result.steps == 2 and result.report["resumed_from"] is None
    assert (output / "model.safetensors").is_file() and not working.exists()


def test_the_output_is_locked_and_never_an_input(tiny_eval_models, tmp_path) -> None:
    base = tiny_eval_models[0]
    output = tmp_path / "out"
    config = load_train_config(cpt_config(base, output), "cpt")
    with OutputLock(output), pytest.raises(OutputError, match="is writing this output now"):
        train_cpt(config, progress=False)
    assert not output.exists() and not (tmp_path / ".out.mergemed-training").exists()

    # Copies, so that a failure here destroys nothing shared.
    model = Path(shutil.copytree(base, tmp_path / "model"))
    data = tmp_path / "data"
    data.mkdir()
    medical = Path(shutil.copy(MEDICAL, data / "medical.jsonl"))
    before = sorted(p.name for p in model.iterdir())

    def overwriting(output: Path) -> str:
        text = cpt_config(model, output).replace(str(MEDICAL), str(medical))
        return text.replace("output: {dir:", "output: {overwrite: true, dir:")

    with pytest.raises(OutputError, match=r"refusing output\.overwrite: the output is the input"):
        train_cpt(load_train_config(overwriting(model), "cpt"), progress=False)
    with pytest.raises(OutputError, match="the output contains the input"):
        train_cpt(load_train_config(overwriting(data), "cpt"), progress=False)
    assert sorted(p.name for p in model.iterdir()) == before and medical.is_file()


def test_sequence_length_above_the_model_maximum_is_refused(tiny_eval_models, tmp_path) -> None:
    text = cpt_config(tiny_eval_models[0], tmp_path / "out").replace(
        "sequence_length: 256", "sequence_length: 8192"
    )
    with pytest.raises(MergemedError, match="8192 is above the model's maximum of 4096"):
        train_cpt(load_train_config(text, "cpt"), progress=False)
    assert not (tmp_path / "out").exists()
