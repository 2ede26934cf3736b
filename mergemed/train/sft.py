"""``mergemed train sft``: instruction tuning on chat records, loss on completions only.

Built on trl's ``SFTTrainer``: mergemed reads the records (chat ``messages``, medical-o1
question/reasoning/answer, prompt/completion, or PubMedQA), renders them with the tokenizer's
chat template and marks the completion tokens (:func:`mergemed.train.sft_records.tokenize_sft`); trl
trains with its completion-only loss, NEFTune noise (``training.neftune_noise_alpha``) and
LoRA adapters through peft, which are merged into full weights when the model is written.
Launched as N workers, each trains on its own share of every global batch and worker 0 writes
the one output (:mod:`mergemed.train.workers`).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergemed.train.config import TrainConfig
from mergemed.train.export import TrainResult, write_trained_model
from mergemed.train.held_out import held_out_callback
from mergemed.train.mixing import split_held_out
from mergemed.train.session import (
    TrainError,
    TrainingSession,
    checkpoint_step,
    output_folder,
    prepare_working_folder,
    training_session,
)
from mergemed.train.sft_records import (
    SFTData,
    pubmedqa_sft_records,
    read_sft_records,
    tokenize_sft,
)
from mergemed.train.trainer_setup import (
    check_sequence_length,
    checked_config,
    full_state_dict,
    load_model,
    load_tokenizer,
    quiet_trainer,
    run_trainer,
    training_arguments,
)
from mergemed.train.training_report import loss_curves
from mergemed.train.workers import data_digest, join_workers


def read_records(config: TrainConfig) -> list[Any]:
    """The conversations of ``data.path`` in the config's ``data.format`` (``auto``: each
    record's format told by its keys; any other: every record must be of that format)."""
    path = config.data.path or ""
    if config.data.format == "pubmedqa":
        return pubmedqa_sft_records(path)
    return read_sft_records(path, config.data.format)


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

    session: TrainingSession
    trainer: Any
    tokenizer: Any
    train: SFTData
    held_out: SFTData
    records: int
    base_folder: str

    @property
    def config(self) -> TrainConfig:
        """The run's config."""
        return self.session.config


def prepare_sft(
    config: TrainConfig | str | Path,
    *,
    progress: bool = True,
    session: TrainingSession | None = None,
) -> SFTRun:
    """Read and tokenize the records, load the model and build trl's ``SFTTrainer``.

    Args:
        config: the config, or its YAML file (with ``session``: the session's config).
        progress: show a progress bar while training.
        session: the run's hold on its output (:func:`mergemed.train.session.training_session`,
            as :func:`train_sft` opens it). Without one the working folder is prepared but the
            output is not locked: enough to inspect the trainer, not to train into the output
            while another run might.

    Raises:
        MergemedError: bad config, records, model or LoRA targets.
    """
    if session is not None:
        config = session.config
    else:
        config = checked_config(config, "sft")
        output = output_folder(config)
        session = TrainingSession(config, output, *prepare_working_folder(config, output))
    workers = session.workers
    data = workers.agree(lambda: _read_data(config))
    workers.check_same("data", data_digest(data.train.examples, data.held_out.examples))
    trainer = workers.agree(lambda: _trainer(session, data, progress))
    return SFTRun(
        session, trainer, data.tokenizer, data.train, data.held_out, data.records, data.base_folder
    )


@dataclass
class _Data:
    tokenizer: Any
    base_folder: str
    train: SFTData
    held_out: SFTData
    records: int


def _read_data(config: TrainConfig) -> _Data:
    """The tokenizer, and the records split and tokenized."""
    _check_quantization(config)
    tokenizer, base_folder = load_tokenizer(config)
    records = read_records(config)
    seed = config.training.seed
    train_records, held_records = split_held_out(records, config.data.held_out_fraction, seed)
    length = config.data.sequence_length
    train = tokenize_sft(train_records, tokenizer, length, name=str(config.data.path))
    held = tokenize_sft(held_records, tokenizer, length, name=str(config.data.path))
    if not train.examples:
        raise TrainError(f"{config.data.path}: no training record fits data.sequence_length")
    return _Data(tokenizer, base_folder, train, held, len(records))


def _trainer(session: TrainingSession, data: _Data, progress: bool) -> Any:
    """The model loaded and trl's trainer built on the data."""
    from trl import SFTConfig, SFTTrainer

    config = session.config
    model = load_model(config, data.base_folder, **_check_quantization(config))
    check_sequence_length(config, model)
    arguments = training_arguments(
        config,
        session.work,
        progress,
        SFTConfig,
        completion_only_loss=True,
        max_length=config.data.sequence_length,
        packing=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    try:
        trainer = SFTTrainer(
            model=model,
            args=arguments,
            train_dataset=data.train.to_dataset(),  # labels: -100 on every prompt token
            processing_class=data.tokenizer,
            peft_config=lora_config(config),
        )
    except ValueError as error:
        if "target" in str(error).lower() and config.lora is not None:
            raise TrainError(
                f"lora.target_modules: {config.lora.target_modules!r} match no module of "
                f"{config.model.path!r}"
            ) from None
        raise
    held_out = {"": data.held_out.examples} if data.held_out.examples else {}
    training = config.training
    trainer.add_callback(
        held_out_callback(
            trainer, held_out, session.workers, training.eval_steps, training.micro_batch_size
        )
    )
    return quiet_trainer(trainer, progress)


def _tokens_seen(trainer: Any, resumed_from: str | None) -> float:
    """Tokens trl counted in this run, on every worker (prompt and completion, no padding).
    trl counts from 0 in each run, resumed or not: entries logged before the checkpoint the
    run resumed from are another run's."""
    start = checkpoint_step(resumed_from)
    counts = [
        e["num_tokens"]
        for e in trainer.state.log_history
        if "num_tokens" in e and e.get("step", 0) > start
    ]
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
    with join_workers() as workers:
        checked = workers.agree(lambda: checked_config(config, "sft"))
        with training_session(checked, workers) as session:
            run = prepare_sft(checked, progress=progress, session=session)
            steps, report = _train(run)
    return TrainResult(
        output=session.output, seconds=time.time() - started, steps=steps, report=report
    )


def _train(run: SFTRun) -> tuple[int, dict[str, Any]]:
    """Train, merge LoRA in, and write the model: the steps taken and the report."""
    config, trainer, session = run.config, run.trainer, run.session
    result, seconds = run_trainer(trainer, session)
    state_dict = full_state_dict(trainer)
    steps = int(result.global_step)
    tokens = _tokens_seen(trainer, session.resume_from)
    report = {
        "kind": "sft",
        "base_model": config.model.path,
        "base_model_folder": run.base_folder,
        "steps": steps,
        "world_size": session.workers.world_size,
        "resumed_from": session.resume_from,
        "records": run.records,
        "train_examples": len(run.train.examples),
        "held_out_examples": len(run.held_out.examples),
        "dropped_too_long": len(run.train.dropped) + len(run.held_out.dropped),
        "completion_tokens": run.train.completion_tokens,
        "neftune_noise_alpha": config.training.neftune_noise_alpha,
        "lora": config.lora.model_dump() if config.lora else None,
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "final_train_loss": result.training_loss,
        "loss_curves": loss_curves(trainer.state.log_history),
    }

    def save_weights(folder: Path) -> None:
        trained = trainer.model
        if config.lora is not None:
            trained.save_pretrained(str(folder / "adapter"))  # before merging, which unloads it
            trained = trained.merge_and_unload()
        trained.save_pretrained(str(folder), state_dict=state_dict)

    write_trained_model(session, save_weights, run.tokenizer, report)
    return steps, report
