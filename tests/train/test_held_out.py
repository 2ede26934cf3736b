"""Held-out loss while training: the mean next-token loss over every labelled token, checked
against cross-entropy computed here from the model's logits (the 1-vs-2-worker equality is in
test_workers.py)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from mergemed.train.held_out import held_out_loss
from mergemed.train.workers import Workers


def test_held_out_loss_is_the_mean_over_every_labelled_token(tiny_eval_models) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_eval_models[0]).train()
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length, prompt in ((40, 10), (17, 0), (64, 50)):  # lengths and unlabelled prefixes
        ids = torch.randint(3, 500, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})

    token_losses = []
    with torch.no_grad():
        for example in examples:
            logits = model.eval()(torch.tensor([example["input_ids"]]), use_cache=False).logits
            labels = torch.tensor(example["labels"][1:])
            losses = functional.cross_entropy(logits[0, :-1], labels, reduction="none")
            token_losses.append(losses[labels != -100])
    expected = float(torch.cat(token_losses).mean())  # tokens weigh alike, not sequences
    per_sequence = sum(float(t.mean()) for t in token_losses) / len(token_losses)
    assert abs(expected - per_sequence) > 1e-4  # the two means differ here

    model.train()
    for batch_size in (1, 2, 3):  # one at a time, or padded to the longest of a batch
        loss = held_out_loss(model, examples, Workers(), batch_size)
        assert loss == pytest.approx(expected, abs=1e-5), batch_size
    assert model.training  # left as it was found
