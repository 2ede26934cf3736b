"""What continual pretraining and SFT share: the working folder and resume rules, loading the
model, the ``TrainingArguments`` a config maps to, and writing the finished model folder."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergemed.errors import MergemedError
from mergemed.train.config import TrainConfig
from mergemed.train.report import write_report


class TrainError(MergemedError):
    """Training cannot start or continue (output exists, checkpoint of another config...)."""


@dataclass
class TrainResult:
    """What a finished training run produced."""

    output: Path
    seconds: float
    steps: int
    report: dict[str, Any]


def _working_folder(output: Path) -> Path:
    return output.parent / f".{output.name}.mergemed-training"


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else f"{path}: {old!r} in the checkpoint, {new!r} now"


def prepare_working_folder(config: TrainConfig, output: Path) -> tuple[Path, str | None]:
    """The hidden folder holding checkpoints, and the checkpoint to resume from (if any).

    Raises:
        TrainError: the output exists (without ``output.overwrite``), or the folder holds
            checkpoints of a different config (naming the first key that differs).
    """
    if output.exists() and not config.output.overwrite:
        raise TrainError(f"{output}: output folder exists; set output.overwrite: true")
    work = _working_folder(output)
    key_file = work / "resume_key.json"
    key = config.resume_key()
    if key_file.is_file():
        stored = json.loads(key_file.read_text())
        difference = _first_difference(stored, key)
        if difference:
            raise TrainError(
                f"{work}: holds checkpoints of another config ({difference}); "
                "delete that folder to start over"
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        key_file.write_text(json.dumps(key, indent=2))
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = work / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    return work, last


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


def finish(
    trainer: Any,
    tokenizer: Any,
    config: TrainConfig,
    output: Path,
    work: Path,
    report: dict,
    model: Any = None,
    adapter_folder: Path | None = None,
) -> None:
    """Write the trained model (``model`` if given, e.g. LoRA merged into full weights; else
    the trainer's), the LoRA adapter (``adapter_folder``, as ``adapter/``), its config and
    report into a partial folder, rename it into place, and remove the working folder."""
    partial = output.parent / f".{output.name}.mergemed-partial"
    shutil.rmtree(partial, ignore_errors=True)
    if model is not None:
        model.save_pretrained(str(partial))
    else:
        trainer.save_model(str(partial))
    (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; config.yaml says it all
    if adapter_folder is not None:
        shutil.copytree(adapter_folder, partial / "adapter")  # the LoRA weights, for reference
    tokenizer.save_pretrained(str(partial))
    (partial / "config.yaml").write_text(config.to_yaml())
    write_report(partial, report)
    if output.exists():
        shutil.rmtree(output)
    os.replace(partial, output)
    shutil.rmtree(work, ignore_errors=True)
