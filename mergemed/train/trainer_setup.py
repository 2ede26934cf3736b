"""Setting a trainer up from a config: the tokenizer and model it names, loaded in its dtype,
and the transformers ``TrainingArguments`` its ``training`` section maps to. Shared by
continual pretraining and SFT."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mergemed.train.config import TrainConfig
from mergemed.train.session import TrainError


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


def training_arguments(
    config: TrainConfig,
    work: Path,
    has_eval: bool,
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
        eval_strategy="steps" if has_eval else "no",
        eval_steps=training.eval_steps,
        logging_steps=training.logging_steps,
        bf16=cuda and dtype == torch.bfloat16,
        neftune_noise_alpha=training.neftune_noise_alpha,
        report_to=[],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
    )
