"""``mergemed train cpt``: continual pretraining on raw text, mixed by weight and bin-packed.

Built on transformers' ``Trainer``: mergemed prepares the data (token-ratio mixing and
best-fit-decreasing packing, :mod:`mergemed.train.data`), sets the schedule (linear warm-up
then cosine), evaluates a held-out loss per source during training, checkpoints into a hidden
working folder beside the output, and only when training is complete writes the model folder
(with ``config.yaml`` and ``training.json``) and renames it into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergemed.errors import MergemedError
from mergemed.train.config import TrainConfig, load_train_config
from mergemed.train.data import Source, build_cpt_data
from mergemed.train.report import loss_curves, write_report


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

    from mergemed.checkpoint import resolve_model_folder

    folder = resolve_model_folder(config.model.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, trust_remote_code=config.model.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise _load_error(config, error) from None
    return tokenizer, str(folder)


def load_model(config: TrainConfig, folder: str) -> Any:
    """The model to train, in the config's dtype."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=_dtype(config.model.dtype),
            trust_remote_code=config.model.trust_remote_code,
        )
    except (OSError, ValueError) as error:
        raise _load_error(config, error) from None


def _check_sequence_length(config: TrainConfig, model: Any) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.data.sequence_length > limit:
        raise TrainError(
            f"data.sequence_length: {config.data.sequence_length} is above the model's maximum "
            f"of {limit} positions"
        )


def training_arguments(config: TrainConfig, work: Path, has_eval: bool, progress: bool) -> Any:
    """transformers ``TrainingArguments`` for a config (shared by cpt and sft)."""
    from transformers import TrainingArguments

    training = config.training
    cuda = torch.cuda.is_available()
    dtype = _dtype(config.model.dtype)
    optional: dict[str, Any] = {}
    if config.model.gradient_checkpointing:
        optional["gradient_checkpointing"] = True
    return TrainingArguments(
        **optional,
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
    trainer: Any, tokenizer: Any, config: TrainConfig, output: Path, work: Path, report: dict
) -> None:
    """Write the trained model, its config and report into a partial folder, rename it into
    place, and remove the working folder."""
    partial = output.parent / f".{output.name}.mergemed-partial"
    shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))
    (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; config.yaml says it all
    tokenizer.save_pretrained(str(partial))
    (partial / "config.yaml").write_text(config.to_yaml())
    write_report(partial, report)
    if output.exists():
        shutil.rmtree(output)
    os.replace(partial, output)
    shutil.rmtree(work, ignore_errors=True)


def train_cpt(config: TrainConfig | str | Path, *, progress: bool = True) -> TrainResult:
    """Continually pretrain a model on a weighted mix of raw-text sources.

    A run killed after a checkpoint continues from it when started again with the same
    config (same data order, same loss trajectory); a different config is refused.

    Raises:
        MergemedError: bad config, data or model; nothing half-written is left as output.
    """
    from transformers import Trainer, default_data_collator

    started = time.time()
    if not isinstance(config, TrainConfig):
        config = load_train_config(config, "cpt")
    output = Path(config.output.dir).expanduser().absolute()
    work, resume_from = prepare_working_folder(config, output)
    # Data first: a bad source fails in seconds, before the model is loaded.
    tokenizer, base_folder = load_tokenizer(config)
    training = config.training
    tokens_per_step = (
        training.micro_batch_size
        * training.gradient_accumulation_steps
        * config.data.sequence_length
    )
    total_tokens = config.data.total_tokens or training.max_steps * tokens_per_step
    sources = [
        Source(name=s.name, path=s.path, text_field=s.text_field, weight=s.weight)
        for s in config.data.sources or []
    ]
    data = build_cpt_data(
        sources,
        tokenizer,
        config.data.sequence_length,
        total_tokens=total_tokens,
        held_out_fraction=config.data.held_out_fraction,
        seed=training.seed,
    )
    model = load_model(config, base_folder)
    _check_sequence_length(config, model)
    held_out = {name: packed.to_dataset() for name, packed in data.held_out.items()}
    trainer = Trainer(
        model=model,
        args=training_arguments(config, work, bool(held_out), progress),
        train_dataset=data.train.to_dataset(),
        eval_dataset=held_out or None,
        data_collator=default_data_collator,
    )
    begin = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.time() - begin
    steps = int(result.global_step)
    trained_tokens = steps * tokens_per_step
    report = {
        "kind": "cpt",
        "base_model": config.model.path,
        "base_model_folder": base_folder,
        "steps": steps,
        "resumed_from": resume_from,
        "tokens_per_source": data.train.tokens_per_source,
        "repeats_per_source": data.train.repeats_per_source,
        "padding_waste": data.train.padding_waste,
        "sequence_length": config.data.sequence_length,
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(trained_tokens / seconds, 1) if seconds else None,
        "final_train_loss": result.training_loss,
        "loss_curves": loss_curves(trainer.state.log_history),
    }
    finish(trainer, tokenizer, config, output, work, report)
    return TrainResult(output=output, seconds=time.time() - started, steps=steps, report=report)
