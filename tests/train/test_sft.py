"""``mergemed train sft`` for real (trl's SFTTrainer, peft, tiny local Llama, PubMedQA records):
no loss on prompt tokens, NEFTune only while training, LoRA export equal to base + adapter, and
the pipeline train -> merge -> evaluate end to end."""

from __future__ import annotations

import pytest
import torch
from helpers import kill_when_written, load_model_tensors
from safetensors.torch import load_file
from train_configs import cpt_config, sft_config
from transformers import TrainerCallback

from mergemed.engine import merge
from mergemed.errors import MergemedError
from mergemed.evaluation import evaluate
from mergemed.train.config import load_train_config
from mergemed.train.cpt import train_cpt
from mergemed.train.sft import prepare_sft, train_sft

pytestmark = pytest.mark.slow


def test_prompt_tokens_carry_no_loss_in_a_training_batch(tiny_eval_models, tmp_path) -> None:
    run = prepare_sft(load_train_config(sft_config(tiny_eval_models[0], tmp_path / "o"), "sft"))
    batch = next(iter(run.trainer.get_train_dataloader()))
    tokenizer = run.tokenizer
    generation_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False
    ).split("x", 1)[1]
    for input_ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        learned = (labels != -100).nonzero().flatten()
        first = int(learned[0])
        assert bool((labels[:first] == -100).all())
        assert tokenizer.decode(input_ids[:first]).endswith(generation_prompt)
        answer = tokenizer.decode(labels[learned])
        assert answer.split(".", 1)[0] in ("yes", "no", "maybe"), answer
        assert bool((labels[learned] == input_ids[learned]).all())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_checkpointing_follows_the_config(tiny_eval_models, tmp_path, checkpointing):
    """trl's SFTConfig turns checkpointing on by default; mergemed's config decides."""
    config = load_train_config(sft_config(tiny_eval_models[0], tmp_path / "o"), "sft")
    config.model.gradient_checkpointing = checkpointing
    run = prepare_sft(config, progress=False)
    assert run.trainer.args.gradient_checkpointing is checkpointing


class _NoiseProbe(TrainerCallback):
    """At each step end, compares the embedding layer's output with a plain lookup, in train
    mode and in eval mode."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        embedding = model.get_input_embeddings()
        ids = torch.arange(16).unsqueeze(0)
        plain = torch.nn.functional.embedding(ids, embedding.weight)
        noisy_in_training = not torch.equal(embedding(ids), plain)
        model.eval()
        noisy_in_eval = not torch.equal(embedding(ids), plain)
        model.train()
        self.seen.append((noisy_in_training, noisy_in_eval))


def test_neftune_noise_is_on_in_training_and_off_in_eval(tiny_eval_models, tmp_path) -> None:
    config = sft_config(
        tiny_eval_models[0], tmp_path / "o", lora="null", neftune_noise_alpha=5, max_steps=2
    )
    run = prepare_sft(load_train_config(config, "sft"), progress=False)
    probe = _NoiseProbe()
    run.trainer.add_callback(probe)
    run.trainer.train()
    assert probe.seen == [(True, False), (True, False)]
    embedding = run.trainer.model.get_input_embeddings()
    ids = torch.arange(16).unsqueeze(0)
    assert torch.equal(embedding(ids), torch.nn.functional.embedding(ids, embedding.weight))


def test_lora_export_equals_base_plus_adapter(tiny_eval_models, tmp_path) -> None:
    base = tiny_eval_models[0]
    output = tmp_path / "instruct"
    train_sft(load_train_config(sft_config(base, output), "sft"), progress=False)
    merged = load_file(output / "model.safetensors")
    adapter = load_file(output / "adapter" / "adapter_model.safetensors")
    original = load_file(base / "model.safetensors")
    scale = 16 / 8
    checked = 0
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        name = key.split("base_model.model.", 1)[1].replace(".lora_A.weight", ".weight")
        expected = original[name] + scale * (b @ a)
        assert torch.allclose(merged[name], expected, atol=1e-5), name
        checked += 1
    assert checked >= 14  # q, k, v, o, gate, up, down in each of the 2 layers
    untouched = "model.layers.0.input_layernorm.weight"
    assert torch.equal(merged[untouched], original[untouched])


def test_bad_lora_targets_and_qlora_without_gpu_are_one_line(tiny_eval_models, tmp_path):
    model = tiny_eval_models[0]
    config = sft_config(model, tmp_path / "o", lora="{target_modules: [no_such_proj]}")
    with pytest.raises(MergemedError, match=r"lora\.target_modules: \['no_such_proj'\] match no"):
        prepare_sft(load_train_config(config, "sft"), progress=False)
    if not torch.cuda.is_available():
        config = sft_config(model, tmp_path / "o2", lora="{quantize_4bit: true}")
        with pytest.raises(MergemedError, match="QLoRA needs a CUDA GPU"):
            prepare_sft(load_train_config(config, "sft"), progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_train_merge_evaluate_end_to_end(tiny_eval_models, tmp_path) -> None:
    base = tiny_eval_models[0]
    clinical = tmp_path / "clinical"
    cpt = cpt_config(
        base, clinical, held_out_fraction=0, max_steps=4, micro_batch_size=2, save_steps=10
    )
    train_cpt(load_train_config(cpt, "cpt"), progress=False)
    instruct = tmp_path / "instruct"
    train_sft(load_train_config(sft_config(base, instruct, max_steps=4), "sft"), progress=False)
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {instruct}\nmodels:\n  - model: {instruct}\n"
        f"  - model: {clinical}\nparameters:\n  t: [0.2, 0.8]\n"
    )
    merged = merge(recipe, tmp_path / "merged").output
    report = evaluate(
        merged,
        against={"clinical": clinical, "instruct": instruct},
        tasks=["mm_pubmedqa"],
        limit=6,
        store=False,
    )
    assert [m.role for m in report.models] == ["merged", "clinical", "instruct"]
    assert report.trade_off.domain_gain is not None
    assert all(0 <= m.score("mm_pubmedqa").value <= 1 for m in report.models)

    # Task arithmetic finds the base both were trained from in their training.json.
    models = (
        f"models:\n  - {{model: {clinical}, parameters: {{weight: 0.6}}}}\n"
        f"  - {{model: {instruct}, parameters: {{weight: 0.4}}}}\n"
    )
    implicit = tmp_path / "implicit.yaml"
    implicit.write_text("merge_method: task_arithmetic\n" + models)
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\n" + models)
    found = merge(implicit, tmp_path / "implicit").output
    given = merge(explicit, tmp_path / "explicit").output
    found_tensors, given_tensors = load_model_tensors(found), load_model_tensors(given)
    assert all(torch.equal(found_tensors[n], given_tensors[n]) for n in given_tensors)
    assert f"base_model: {base}" in (found / "recipe.yaml").read_text()


def test_task_arithmetic_without_a_recorded_base_says_so(tiny_eval_models, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"merge_method: ties\nmodels:\n  - {{model: {clinical}, parameters: {{weight: 1}}}}\n"
        f"  - {{model: {instruct}, parameters: {{weight: 1}}}}\n"
    )
    with pytest.raises(MergemedError, match="ties needs a base_model: set base_model"):
        merge(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_killed_sft_run_resumes_to_the_same_losses(tiny_eval_models, tmp_path) -> None:
    """SIGKILL after the first checkpoint, run again: same final loss and weights (LoRA)."""
    base = tiny_eval_models[0]
    settings = {"max_steps": 8, "save_steps": 4, "eval_steps": 4, "logging_steps": 1}
    whole = train_sft(
        load_train_config(sft_config(base, tmp_path / "whole", **settings), "sft"),
        progress=False,
    )
    config_path = tmp_path / "killed.yaml"
    output = tmp_path / "killed"
    config_path.write_text(sft_config(base, output, **settings))
    checkpoint = tmp_path / ".killed.mergemed-training" / "checkpoints" / "checkpoint-4"
    kill_when_written(checkpoint / "trainer_state.json", "train", "sft", config_path, "-q")
    assert checkpoint.is_dir() and not output.exists(), "killed after its first checkpoint"

    resumed = train_sft(config_path, progress=False)
    assert resumed.report["resumed_from"].endswith("checkpoint-4")
    first = dict(whole.report["loss_curves"]["train"])
    second = dict(resumed.report["loss_curves"]["train"])
    assert second[8] == pytest.approx(first[8], abs=1e-4)
    one, two = load_model_tensors(tmp_path / "whole"), load_model_tensors(output)
    assert max(float((one[n] - two[n]).abs().max()) for n in one) < 1e-4
