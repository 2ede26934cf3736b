"""``mergemed train sft`` for real (trl's SFTTrainer, peft, tiny local Llama, PubMedQA records):
no loss on prompt tokens, NEFTune only while training, LoRA export equal to base + adapter, and
the pipeline train -> merge -> evaluate end to end."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from mergemed.engine import merge
from mergemed.errors import MergemedError
from mergemed.evaluate import evaluate
from mergemed.train.config import load_train_config
from mergemed.train.cpt import train_cpt
from mergemed.train.sft import prepare_sft, train_sft

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PUBMEDQA = REPO / "mergemed" / "evaluations" / "data" / "pubmedqa" / "train.jsonl"
GENERAL = REPO / "mergemed" / "data" / "devils_dictionary.txt"


def sft_config(model: Path, output: Path, lora: str = "{r: 8, alpha: 16}", **training) -> str:
    settings = {
        "max_steps": 6,
        "micro_batch_size": 2,
        "learning_rate": 1.0e-3,
        "eval_steps": 3,
        "save_steps": 3,
        "logging_steps": 3,
        **training,
    }
    return textwrap.dedent(
        f"""\
        kind: sft
        model: {{path: {model}}}
        data: {{path: {PUBMEDQA}, format: pubmedqa, sequence_length: 4096, held_out_fraction: 0.02}}
        training: {json.dumps(settings)}
        lora: {lora}
        output: {{dir: {output}}}
        """
    )


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
    train_cpt(
        load_train_config(
            textwrap.dedent(
                f"""\
                kind: cpt
                model: {{path: {base}}}
                data:
                  sources:
                    - {{name: general, path: {GENERAL}, weight: 9}}
                    - {{name: medical, path: {PUBMEDQA}, text_field: contexts, weight: 1}}
                  sequence_length: 256
                  held_out_fraction: 0
                training: {{max_steps: 4, micro_batch_size: 2, save_steps: 10}}
                output: {{dir: {clinical}}}
                """
            ),
            "cpt",
        ),
        progress=False,
    )
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
