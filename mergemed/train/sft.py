"""``mergemed train sft``: instruction tuning on chat records, loss on completions only.

Built on trl's ``SFTTrainer``: mergemed reads the records (chat ``messages``, medical-o1
question/reasoning/answer, prompt/completion, or PubMedQA), renders them with the tokenizer's
chat template and marks the completion tokens (:func:`mergemed.train.data.tokenize_sft`); trl
trains with its completion-only loss, NEFTune noise (``training.neftune_noise_alpha``) and
LoRA adapters through peft, which are merged into full weights when the model is written.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergemed.train.common import (
    TrainError,
    TrainResult,
    check_sequence_length,
    finish,
    load_model,
    load_tokenizer,
    prepare_working_folder,
    training_arguments,
)
from mergemed.train.config import TrainConfig, load_train_config
from mergemed.train.data import (
    SFTData,
    pubmedqa_sft_records,
    read_sft_records,
    split_held_out,
    tokenize_sft,
)
from mergemed.train.report import loss_curves


def read_records(config: TrainConfig) -> list[Any]:
    """The conversations of ``data.path`` in the config's ``data.format``."""
    path = config.data.path or ""
    if config.data.format == "pubmedqa":
        return pubmedqa_sft_records(path)
    return read_sft_records(path)


def lora_config(config: TrainConfig) -> Any:
    """peft's ``LoraConfig`` for the config's ``lora`` section (None without one)."""
    if config.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def _check_quantization(config: TrainConfig) -> dict[str, Any]:
    if config.lora is None or not config.lora.quantize_4bit:
        return {}
    if not torch.cuda.is_available():
        raise TrainError("lora.quantize_4bit: QLoRA needs a CUDA GPU; this machine has none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError("lora.quantize_4bit: QLoRA needs bitsandbytes (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    }


@dataclass
class SFTRun:
    """A prepared SFT run: the trl trainer and what it was built from."""

    config: TrainConfig
    trainer: Any
    tokenizer: Any
    train: SFTData
    held_out: SFTData
    records: int
    output: Path
    work: Path
    resume_from: str | None
    base_folder: str


def prepare_sft(config: TrainConfig | str | Path, *, progress: bool = True) -> SFTRun:
    """Read and tokenize the records, load the model and build trl's ``SFTTrainer``.

    Raises:
        MergemedError: bad config, records, model or LoRA targets.
    """
    from trl import SFTConfig, SFTTrainer

    if not isinstance(config, TrainConfig):
        config = load_train_config(config, "sft")
    output = Path(config.output.dir).expanduser().absolute()
    quantization = _check_quantization(config)
    work, resume_from = prepare_working_folder(config, output)
    tokenizer, base_folder = load_tokenizer(config)
    records = read_records(config)
    seed = config.training.seed
    train_records, held_records = split_held_out(records, config.data.held_out_fraction, seed)
    length = config.data.sequence_length
    train = tokenize_sft(train_records, tokenizer, length, name=str(config.data.path))
    held = tokenize_sft(held_records, tokenizer, length, name=str(config.data.path))
    if not train.examples:
        raise TrainError(f"{config.data.path}: no training record fits data.sequence_length")

    model = load_model(config, base_folder, **quantization)
    check_sequence_length(config, model)
    arguments = training_arguments(
        config,
        work,
        bool(held.examples),
        progress,
        SFTConfig,
        completion_only_loss=True,
        max_length=length,
        packing=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    try:
        trainer = SFTTrainer(
            model=model,
            args=arguments,
            train_dataset=train.to_dataset(),  # labels: -100 on every prompt token
            eval_dataset=held.to_dataset() if held.examples else None,
            processing_class=tokenizer,
            peft_config=lora_config(config),
        )
    except ValueError as error:
        if "target" in str(error).lower() and config.lora is not None:
            raise TrainError(
                f"lora.target_modules: {config.lora.target_modules!r} match no module of "
                f"{config.model.path!r}"
            ) from None
        raise
    return SFTRun(
        config,
        trainer,
        tokenizer,
        train,
        held,
        len(records),
        output,
        work,
        resume_from,
        base_folder,
    )


def _tokens_seen(trainer: Any) -> float:
    """Tokens trl counted through training (prompt and completion, no padding)."""
    counts = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    return float(counts[-1]) if counts else 0.0


def train_sft(config: TrainConfig | str | Path, *, progress: bool = True) -> TrainResult:
    """Instruction-tune a model; the output is a full model folder (LoRA merged in, the
    adapter kept in ``adapter/``).

    A run killed after a checkpoint continues from it when started again with the same config;
    a different config is refused.

    Raises:
        MergemedError: bad config, records, model or LoRA targets; nothing half-written is
            left as output.
    """
    started = time.time()
    run = prepare_sft(config, progress=progress)
    config, trainer = run.config, run.trainer
    begin = time.time()
    result = trainer.train(resume_from_checkpoint=run.resume_from)
    seconds = time.time() - begin
    steps = int(result.global_step)
    trained = trainer.model
    adapter_folder = None
    if config.lora is not None:
        adapter_folder = run.work / "adapter"
        trained.save_pretrained(str(adapter_folder))  # before merging, which unloads it
        trained = trained.merge_and_unload()
    report = {
        "kind": "sft",
        "base_model": config.model.path,
        "base_model_folder": run.base_folder,
        "steps": steps,
        "resumed_from": run.resume_from,
        "records": run.records,
        "train_examples": len(run.train.examples),
        "held_out_examples": len(run.held_out.examples),
        "dropped_too_long": len(run.train.dropped) + len(run.held_out.dropped),
        "completion_tokens": run.train.completion_tokens,
        "neftune_noise_alpha": config.training.neftune_noise_alpha,
        "lora": config.lora.model_dump() if config.lora else None,
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(_tokens_seen(trainer) / seconds, 1) if seconds else None,
        "final_train_loss": result.training_loss,
        "loss_curves": loss_curves(trainer.state.log_history),
    }
    finish(
        trainer,
        run.tokenizer,
        config,
        run.output,
        run.work,
        report,
        model=trained,
        adapter_folder=adapter_folder,
    )
    return TrainResult(output=run.output, seconds=time.time() - started, steps=steps, report=report)
