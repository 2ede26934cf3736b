"""Setting a trainer up from a config and running it: the tokenizer and model it names,
loaded in its dtype, the transformers ``TrainingArguments`` its ``training`` section maps to,
and the training itself on every worker. Shared by continual pretraining and SFT."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from mergemed.io.model_building import model_build_lock
from mergemed.train.config import TrainConfig, load_train_config
from mergemed.train.session import TrainError, TrainingSession, last_checkpoint


def _dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def _load_error(config: TrainConfig, error: Exception) -> TrainError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return TrainError(f"model {config.model.path!r}: cannot load: {first}")


def load_tokenizer(config: TrainConfig) -> tuple[Any, str]:
    """The tokenizer of the model to train, and the resolved folder it came from."""
    from transformers import AutoTokenizer

    from mergemed.io.hub import resolve_model_folder

    folder = resolve_model_folder(config.model.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, trust_remote_code=config.model.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise _load_error(config, error) from None
    return tokenizer, str(folder)


def load_model(config: TrainConfig, folder: str, **options: Any) -> Any:
    """The model to train, in the config's dtype (``options``: more ``from_pretrained``
    arguments, e.g. a quantization config)."""
    from transformers import AutoModelForCausalLM

    try:
        with model_build_lock():
            return AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=_dtype(config.model.dtype),
                trust_remote_code=config.model.trust_remote_code,
                **options,
            )
    except (OSError, ValueError) as error:
        raise _load_error(config, error) from None


def check_sequence_length(config: TrainConfig, model: Any) -> None:
    """Refuse a ``data.sequence_length`` above the model's maximum positions.

    Raises:
        TrainError: naming both lengths.
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.data.sequence_length > limit:
        raise TrainError(
            f"data.sequence_length: {config.data.sequence_length} is above the model's maximum "
            f"of {limit} positions"
        )


def checked_config(config: TrainConfig | str | Path, kind: str) -> TrainConfig:
    """The config (loaded from YAML unless it is one), checked for what a launch allows.

    Raises:
        TrainConfigError: the YAML does not validate.
        TrainError: as :func:`check_fsdp`.
    """
    if not isinstance(config, TrainConfig):
        config = load_train_config(config, kind)  # type: ignore[arg-type]
    check_fsdp(config)
    return config


def check_fsdp(config: TrainConfig) -> None:
    """Refuse an FSDP launch (``accelerate launch`` with an FSDP config) that would not be one.

    Raises:
        TrainError: FSDP without CUDA GPUs (accelerate turns FSDP on only for GPU-type
            devices: on the CPU the run would silently be plain DDP), or FSDP with LoRA (the
            adapter is merged from the live model, whose weights FSDP shards).
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true"):
        return
    if not torch.cuda.is_available():
        raise TrainError(
            "FSDP (the accelerate config) needs CUDA GPUs: accelerate enables it only for GPU "
            "devices, and on the CPU the run would be plain DDP; for several CPU processes use "
            "`torchrun --nproc_per_node N -m mergemed train ...` without an FSDP config"
        )
    if config.lora is not None:
        raise TrainError(
            "lora: LoRA with FSDP is not supported (the adapter is merged from whole weights, "
            "which FSDP shards); train LoRA with DDP: `accelerate launch --multi_gpu ...`"
        )


def training_arguments(
    config: TrainConfig,
    work: Path,
    progress: bool,
    arguments_class: Any = None,
    **extra: Any,
) -> Any:
    """transformers ``TrainingArguments`` (or a subclass such as trl's ``SFTConfig``, with
    ``extra`` settings of its own) for a config."""
    from transformers import TrainingArguments

    arguments_class = arguments_class or TrainingArguments
    training = config.training
    cuda = torch.cuda.is_available()
    dtype = _dtype(config.model.dtype)
    # Always explicit: trl's SFTConfig turns checkpointing on by default, which on these
    # settings costs a quarter of the step time for memory nobody asked to save.
    return arguments_class(
        activation_checkpointing=config.model.gradient_checkpointing,
        **extra,
        output_dir=str(work / "checkpoints"),
        max_steps=training.max_steps,
        per_device_train_batch_size=training.micro_batch_size,
        per_device_eval_batch_size=training.micro_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        warmup_steps=math.ceil(training.warmup_ratio * training.max_steps),
        lr_scheduler_type=training.lr_scheduler,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        seed=training.seed,
        data_seed=training.seed,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        eval_strategy="no",  # held-out losses: mergemed.train.held_out, the same on N workers
        logging_steps=training.logging_steps,
        bf16=cuda and dtype == torch.bfloat16,
        neftune_noise_alpha=training.neftune_noise_alpha,
        report_to=[],
        disable_tqdm=not progress,
        # Quiet means quiet: without progress, transformers' warnings are not shown either;
        # workers other than 0 show none at all (errors still reach their stderr).
        log_level="passive" if progress else "error",
        log_level_replica="error",
        # Every parameter these models train takes part in each forward pass: DDP need not
        # search the graph for unused ones (and warn about it) at every step.
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
    )


def quiet_trainer(trainer: Any, progress: bool) -> Any:
    """Without progress, drop the callback that prints every log entry (``{'loss': ...}``)
    when the progress bar is off. Returns ``trainer``."""
    from transformers.trainer_callback import PrinterCallback

    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer


def run_trainer(trainer: Any, session: TrainingSession) -> tuple[Any, float]:
    """Train on every worker from the session's checkpoint (if any) to ``max_steps``, then
    wait for all of them: the trainer's result and the seconds it took.

    Raises:
        WorkerLost: another worker's process ended; the message says how to go on.
    """

    def how_to_go_on() -> str:
        last = last_checkpoint(session.work)
        if last is None:
            return "no checkpoint was written: run the same command again to start over"
        return f"run the same command again to resume from {Path(last).name}"

    begin = time.time()
    workers = session.workers
    with workers.stop_if_one_is_lost(how_to_go_on):
        result = trainer.train(resume_from_checkpoint=session.resume_from)
        seconds = time.time() - begin
        # The Trainer's mean loss adds each worker's own losses since the last log: averaged
        # over the workers, it is the mean over every worker's batches.
        mean = workers.add_up(torch.tensor([result.training_loss], dtype=torch.float64))
        result = result._replace(training_loss=float(mean[0]) / workers.world_size)
        # Every worker's share of the last checkpoint is written before worker 0 goes on.
        workers.barrier()
    return result, seconds


def full_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The trained model's whole state dict when FSDP shards it across the workers (every
    worker must call this: the shards are gathered; worker 0 gets them), else None: the
    model each worker holds is whole."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    return trainer.accelerator.get_state_dict(trainer.model)
