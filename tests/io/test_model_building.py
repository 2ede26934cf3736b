"""Concurrent model builds in one process: transformers' ``from_pretrained`` patches
process-wide state (default dtype, ``PreTrainedModel.tie_weights``, ``torch.nn.init``) and two
threads restoring each other's patches leave it broken, so every later load of a tied model gets
an uninitialised ``lm_head``. mergemed's builds hold :func:`model_build_lock`; after many rounds
of two threads building bfloat16 models for evaluation, the process state is as it was."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from mergemed.evaluation.backends import make_lm
from mergemed.evaluation.settings import BackendSettings


def process_state() -> tuple:
    from transformers import PreTrainedModel

    return (
        torch.get_default_dtype(),
        PreTrainedModel.tie_weights,
        PreTrainedModel.init_weights,
        torch.nn.init.normal_,
    )


def test_concurrent_evaluation_builds_leave_transformers_state_intact(
    tiny_eval_models: tuple[Path, Path, Path],
) -> None:
    before = process_state()
    settings = BackendSettings(backend="hf", device="cpu", dtype="bfloat16")
    built: list[torch.dtype] = []
    for _ in range(8):
        threads = [
            threading.Thread(
                target=lambda f=folder: built.append(
                    next(make_lm(settings, folder=f).model.parameters()).dtype
                )
            )
            for folder in tiny_eval_models[:2]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert process_state() == before
    assert built == [torch.bfloat16] * 16
