"""``mergemed train cpt``: continual pretraining on raw text, mixed by weight and bin-packed.

Built on transformers' ``Trainer``: mergemed prepares the data (token-ratio mixing and
best-fit-decreasing packing, :mod:`mergemed.train.mixing` and :mod:`mergemed.train.packing`),
sets the schedule (linear warm-up then cosine), evaluates a held-out loss per source during
training, checkpoints into a hidden working folder beside the output
(:mod:`mergemed.train.session`), and only when training is complete writes the model folder
(with ``config.yaml`` and ``training.json``) and renames it into place. Under ``torchrun`` or
``accelerate launch`` every worker builds the same data and trains on its own share of each
global batch; worker 0 writes the one output (:mod:`mergemed.train.workers`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.train.config import TrainConfig
from mergemed.train.export import TrainResult, write_trained_model
from mergemed.train.held_out import held_out_callback
from mergemed.train.packing import CPTData, build_cpt_data
from mergemed.train.session import TrainingSession, checkpoint_step, training_session
from mergemed.train.sources import Source
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


def train_cpt(config: TrainConfig | str | Path, *, progress: bool = True) -> TrainResult:
    """Continually pretrain a model on a weighted mix of raw-text sources.

    A run killed after a checkpoint continues from it when started again with the same
    config (same data order, same loss trajectory); a different config is refused. Launched
    as N workers (``torchrun``, ``accelerate launch``), each trains on its share of every
    global batch of ``N * micro_batch_size * gradient_accumulation_steps`` sequences, and
    worker 0 writes the output.

    Raises:
        MergemedError: bad config, data or model; nothing half-written is left as output.
    """
    started = time.time()
    with join_workers() as workers:
        checked = workers.agree(lambda: checked_config(config, "cpt"))
        with training_session(checked, workers) as session:
            steps, report = _train(session, progress)
    return TrainResult(
        output=session.output, seconds=time.time() - started, steps=steps, report=report
    )


@dataclass
class _Prepared:
    tokenizer: Any
    base_folder: str
    data: CPTData
    tokens_per_step: int


def _prepare_data(config: TrainConfig, world_size: int) -> _Prepared:
    """The tokenizer and the packed data: what one global batch of all the workers takes."""
    tokenizer, base_folder = load_tokenizer(config)
    training = config.training
    tokens_per_step = (  # one global batch: every worker's micro-batches, accumulated
        world_size
        * training.micro_batch_size
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
    return _Prepared(tokenizer, base_folder, data, tokens_per_step)


def _trainer(session: TrainingSession, prepared: _Prepared, progress: bool) -> Any:
    from transformers import Trainer, default_data_collator

    config, data = session.config, prepared.data
    model = load_model(config, prepared.base_folder)
    check_sequence_length(config, model)
    trainer = Trainer(
        model=model,
        args=training_arguments(config, session.work, progress),
        train_dataset=data.train.to_dataset(),
        data_collator=default_data_collator,
    )
    held_out = {
        name: [
            {"input_ids": ids, "labels": labels, "position_ids": positions}
            for ids, labels, positions in zip(
                packed.input_ids, packed.labels, packed.position_ids, strict=True
            )
        ]
        for name, packed in data.held_out.items()
    }
    training = config.training
    trainer.add_callback(
        held_out_callback(
            trainer, held_out, session.workers, training.eval_steps, training.micro_batch_size
        )
    )
    return quiet_trainer(trainer, progress)


def _train(session: TrainingSession, progress: bool) -> tuple[int, dict]:
    """Prepare the data, train, and write the model: the steps taken and the report."""
    config, workers = session.config, session.workers
    # Data first: a bad source fails in seconds, before the model is loaded.
    prepared = workers.agree(lambda: _prepare_data(config, workers.world_size))
    data, tokens_per_step = prepared.data, prepared.tokens_per_step
    packed = [data.train, *data.held_out.values()]
    workers.check_same("data", data_digest(*(a for p in packed for a in (p.input_ids, p.labels))))
    trainer = workers.agree(lambda: _trainer(session, prepared, progress))
    result, seconds = run_trainer(trainer, session)
    state_dict = full_state_dict(trainer)
    steps = int(result.global_step)
    trained_tokens = (steps - checkpoint_step(session.resume_from)) * tokens_per_step
    report = {
        "kind": "cpt",
        "base_model": config.model.path,
        "base_model_folder": prepared.base_folder,
        "steps": steps,
        "world_size": workers.world_size,
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

    def save_weights(folder: Path) -> None:
        trainer.model.save_pretrained(str(folder), state_dict=state_dict)

    write_trained_model(session, save_weights, prepared.tokenizer, report)
    return steps, report
