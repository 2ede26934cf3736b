"""The entry point (:func:`mergemed.compare.inspect_models`): opening the models, refusing bad
input before reading, the vocabulary comparison and the progress callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from compare_models import SMALL_CHUNK, Models, edited_copy, grow_vocabulary

from mergemed.cli.inspect_render import render_report
from mergemed.compare import inspect_models
from mergemed.errors import CheckpointError, InspectError, OutputError


def test_refusals_in_the_library(models: Models, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"^base: model .*folder not found"):
        inspect_models(models.parent, models.first, base=tmp_path / "absent")
    with pytest.raises(OutputError, match=r"--json .* does not exist"):
        inspect_models(models.parent, models.first, json_path=tmp_path / "no" / "r.json")
    with pytest.raises(OutputError, match=r"--plot .* is a folder"):
        inspect_models(models.parent, models.first, plot_path=tmp_path)
    with pytest.raises(InspectError, match="chunk_elements: expected at least 1, got 0"):
        inspect_models(models.parent, models.first, chunk_elements=0)
    assert list(tmp_path.iterdir()) == []


def test_progress_adds_up_to_the_announced_total(models: Models) -> None:
    announced: list[int] = []
    progressed: list[int] = []
    report = inspect_models(
        models.first,
        models.second,
        base=models.parent,
        chunk_elements=SMALL_CHUNK,
        on_start=announced.append,
        progress=lambda size, tensor: progressed.append(size),
    )
    assert announced == [report.bytes_read]
    assert sum(progressed) == report.bytes_read
    assert max(progressed) <= SMALL_CHUNK * 4  # float32 slices


def test_vocabulary_compared_token_by_token(models: Models, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    clinical = edited_copy(models.parent, tmp_path / "clinical", grow_vocabulary)
    tokenizer = AutoTokenizer.from_pretrained(clinical)
    added = ["myocardial", "troponin", "<|note|>", "stenosis", "<|dx|>", "apnea", "sepsis", "ecg"]
    tokenizer.add_tokens(added)
    tokenizer.save_pretrained(clinical)
    report = inspect_models(clinical, models.parent)
    vocabulary = report.vocabulary
    assert vocabulary["extra_tokens"]["A"] == {"count": 8, "tokens": added}
    assert vocabulary["missing_tokens"]["A"] == {"count": 0, "tokens": []}
    assert vocabulary["tokens"] == {"A": 520, "B": 512}
    assert not report.plain_merge_possible
    from rich.console import Console

    console = Console(width=160, record=True, color_system=None)
    for renderable in render_report(report):
        console.print(renderable)
    text = console.export_text()
    assert "tokens only in" in text and "8: 'myocardial', 'troponin'" in text
    same = inspect_models(models.parent, models.parent)
    assert same.vocabulary["identical"] and same.plain_merge_possible
