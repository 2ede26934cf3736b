"""Held-out loss while training, the same whether one worker trains or N.

Every ``training.eval_steps`` steps the model scores each held-out set: the mean next-token
loss over all of its tokens that carry a label (padding and SFT prompts do not). The set is
cut into batches of ``micro_batch_size`` sequences, the same batches whatever the number of
workers; worker r scores batches r, r + N, ..., and the summed losses and token counts are
added over the workers: no sequence is scored twice, none is left out, and the figure does not
depend on N. (The Trainer's own evaluation weights each round of N batches by its tokens and
pads the last round with repeats, so its held-out loss moves with the number of workers.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mergemed.train.workers import Workers

Example = Mapping[str, Sequence[int]]
"""One held-out sequence: ``input_ids``, ``labels`` (-100 where no loss) and, for packed
sequences, ``position_ids``."""


def held_out_loss(
    model: Any, examples: Sequence[Example], workers: Workers, batch_size: int = 1
) -> float:
    """The mean next-token loss over every labelled token of ``examples``, scored in batches
    of ``batch_size`` (every worker must call this: the sums are added over the workers; each
    worker runs the same number of forward passes, as sharded models need)."""
    import torch

    device = next(model.parameters()).device
    batches = [
        examples[start : start + batch_size] for start in range(0, len(examples), batch_size)
    ]
    sums = torch.zeros(2, dtype=torch.float64)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for round_index in range(math.ceil(len(batches) / workers.world_size)):
                index = round_index * workers.world_size + workers.rank
                mine = index < len(batches)  # else: a pass whose result is not counted
                batch = {
                    k: v.to(device) for k, v in _collate(batches[index if mine else 0]).items()
                }
                loss = model(**batch, use_cache=False).loss
                tokens = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels
                if mine and tokens:
                    sums += torch.tensor([float(loss) * tokens, tokens], dtype=torch.float64)
    finally:
        model.train(training)
    total, tokens = workers.add_up(sums).tolist()
    return total / tokens if tokens else float("nan")


def _collate(examples: Sequence[Example]) -> dict[str, Any]:
    """Tensors of a batch. Sequences of one length (packed ones) go as they are: an attention
    mask would undo the attention within documents that restarting ``position_ids`` give.
    Others are padded on the right, masked, and carry no loss there."""
    import numpy
    import torch

    longest = max(len(example["input_ids"]) for example in examples)
    if all(len(example["input_ids"]) == longest for example in examples):
        return {
            key: torch.as_tensor(numpy.stack([numpy.asarray(e[key]) for e in examples]))
            for key in examples[0]
        }
    batch: dict[str, Any] = {"input_ids": [], "labels": [], "attention_mask": []}
    for example in examples:
        padding = longest - len(example["input_ids"])
        batch["input_ids"].append(list(example["input_ids"]) + [0] * padding)
        batch["labels"].append(list(example["labels"]) + [-100] * padding)
        batch["attention_mask"].append([1] * len(example["input_ids"]) + [0] * padding)
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


def held_out_callback(
    trainer: Any,
    sets: Mapping[str, Sequence[Example]],
    workers: Workers,
    every: int,
    batch_size: int,
) -> Any:
    """A ``TrainerCallback`` that logs ``eval_<name>_loss`` for each held-out set every
    ``every`` steps (scored in batches of ``batch_size``), through ``trainer.log`` (so it
    lands in ``log_history``, checkpoints and the progress display). A set named ``""`` is
    logged as ``eval_loss``."""
    from transformers import TrainerCallback

    class HeldOutLosses(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not sets or state.global_step % every:
                return
            metrics = {
                f"eval_{name}_loss" if name else "eval_loss": held_out_loss(
                    trainer.model, examples, workers, batch_size
                )
                for name, examples in sets.items()
            }
            due = control.should_log  # logging clears it: the training loss is due this step too
            trainer.log(metrics)
            control.should_log = due

    return HeldOutLosses()
