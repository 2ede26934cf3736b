"""Held-out loss while training, the same whether one worker trains or N.

Every ``training.eval_steps`` steps the model scores each held-out set: the mean next-token
loss over all of its tokens that carry a label (padding and SFT prompts do not). Each worker
scores its own share of the sequences (worker r takes sequences r, r + N, ...), one at a time
and without padding, and the summed losses and token counts are added over the workers: no
sequence is scored twice, none is left out, and the figure does not depend on N. (The
Trainer's own evaluation weights each round of N sequences by its tokens and pads the last
round with repeats, so its held-out loss moves with the number of workers.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mergemed.train.workers import Workers

Example = Mapping[str, Sequence[int]]
"""One held-out sequence: ``input_ids``, ``labels`` (-100 where no loss) and, for packed
sequences, ``position_ids``."""


def held_out_loss(model: Any, examples: Sequence[Example], workers: Workers) -> float:
    """The mean next-token loss over every labelled token of ``examples`` (every worker must
    call this: the sums are added over the workers; each worker runs the same number of
    forward passes, as sharded models need)."""
    import numpy
    import torch

    device = next(model.parameters()).device
    sums = torch.zeros(2, dtype=torch.float64)
    rounds = math.ceil(len(examples) / workers.world_size)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for round_index in range(rounds):
                index = round_index * workers.world_size + workers.rank
                mine = index < len(examples)  # else: a pass whose result is not counted
                example = examples[index if mine else 0]
                batch = {
                    key: torch.as_tensor(numpy.asarray(ids), dtype=torch.long)[None].to(device)
                    for key, ids in example.items()
                }
                loss = model(**batch, use_cache=False).loss
                tokens = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels
                if mine and tokens:
                    sums += torch.tensor([float(loss) * tokens, tokens], dtype=torch.float64)
    finally:
        model.train(training)
    total, tokens = workers.add_up(sums).tolist()
    return total / tokens if tokens else float("nan")


def held_out_callback(
    trainer: Any, sets: Mapping[str, Sequence[Example]], workers: Workers, every: int
) -> Any:
    """A ``TrainerCallback`` that logs ``eval_<name>_loss`` for each held-out set every
    ``every`` steps, through ``trainer.log`` (so it lands in ``log_history``, checkpoints and
    the progress display). A set named ``""`` is logged as ``eval_loss``."""
    from transformers import TrainerCallback

    class HeldOutLosses(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not sets or state.global_step % every:
                return
            metrics = {
                f"eval_{name}_loss" if name else "eval_loss": held_out_loss(
                    trainer.model, examples, workers
                )
                for name, examples in sets.items()
            }
            due = control.should_log  # logging clears it: the training loss is due this step too
            trainer.log(metrics)
            control.should_log = due

    return HeldOutLosses()
