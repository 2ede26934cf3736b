"""``mergemed train cpt``: continual pretraining on raw text, mixed by weight and bin-packed.

Built on transformers' ``Trainer``: mergemed prepares the data (token-ratio mixing and
best-fit-decreasing packing, :mod:`mergemed.train.mixing` and :mod:`mergemed.train.packing`),
sets the schedule (linear warm-up then cosine), evaluates a held-out loss per source during
training, checkpoints into a hidden working folder beside the output
(:mod:`mergemed.train.session`), and only when training is complete writes the model folder
(with ``config.yaml`` and ``training.json``) and renames it into place.
"""

from __future__ import annotations

import time
from pathlib import Path

from mergemed.train.config import TrainConfig, load_train_config
from mergemed.train.export import TrainResult, write_trained_model
from mergemed.train.packing import build_cpt_data
from mergemed.train.session import TrainingSession, training_session
from mergemed.train.sources import Source
from mergemed.train.trainer_setup import (
    check_sequence_length,
    load_model,
    load_tokenizer,
    training_arguments,
)
from mergemed.train.training_report import loss_curves


def train_cpt(config: TrainConfig | str | Path, *, progress: bool = True) -> TrainResult:
    """Continually pretrain a model on a weighted mix of raw-text sources.

    A run killed after a checkpoint continues from it when started again with the same
    config (same data order, same loss trajectory); a different config is refused.

    Raises:
        MergemedError: bad config, data or model; nothing half-written is left as output.
    """
    started = time.time()
    if not isinstance(config, TrainConfig):
        config = load_train_config(config, "cpt")
    with training_session(config) as session:
        steps, report = _train(session, progress)
    return TrainResult(
        output=session.output, seconds=time.time() - started, steps=steps, report=report
    )


def _train(session: TrainingSession, progress: bool) -> tuple[int, dict]:
    """Prepare the data, train, and write the model: the steps taken and the report."""
    from transformers import Trainer, default_data_collator

    config = session.config
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
    check_sequence_length(config, model)
    held_out = {name: packed.to_dataset() for name, packed in data.held_out.items()}
    trainer = Trainer(
        model=model,
        args=training_arguments(config, session.work, bool(held_out), progress),
        train_dataset=data.train.to_dataset(),
        eval_dataset=held_out or None,
        data_collator=default_data_collator,
    )
    begin = time.time()
    result = trainer.train(resume_from_checkpoint=session.resume_from)
    seconds = time.time() - begin
    steps = int(result.global_step)
    trained_tokens = steps * tokens_per_step
    report = {
        "kind": "cpt",
        "base_model": config.model.path,
        "base_model_folder": base_folder,
        "steps": steps,
        "resumed_from": session.resume_from,
        "tokens_per_source": data.train.tokens_per_source,
        "repeats_per_source": data.train.repeats_per_source,
        "padding_waste": data.train.padding_waste,
        "sequence_length": config.data.sequence_length,
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(trained_tokens / seconds, 1) if seconds else None,
        "final_train_loss": result.training_loss,
        "loss_curves": loss_curves(trainer.state.log_history),
    }
    write_trained_model(session, trainer.save_model, tokenizer, report)
    return steps, report
