"""Read planning and streaming (:mod:`mergemed.compare.reads`): which tensors pair up, and
reading each once in bounded slices. Every number is checked against torch on the whole
tensors, in float64."""

from __future__ import annotations

import itertools
import math
import os
import threading
from pathlib import Path

import pytest
import torch
from compare_models import SMALL_CHUNK, Models, assert_close, edited_copy, reference_metrics
from helpers import load_model_tensors

import mergemed.compare.stats
from mergemed.compare import inspect_models
from mergemed.errors import CheckpointError
from mergemed.io.checkpoint import Checkpoint

# --------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize("chunk_elements", [257, SMALL_CHUNK, 1 << 22])
def test_model_against_itself_is_exact(models: Models, chunk_elements: int) -> None:
    report = inspect_models(
        models.first, models.first, base=models.parent, chunk_elements=chunk_elements
    )
    assert report.tensors
    for tensor in report.tensors:
        metrics = tensor.sums.metrics(with_base=True)
        assert metrics["cosine"] == 1.0, tensor.name
        assert metrics["relative_change"] == 0.0, tensor.name
        assert metrics["task_angle"] == 0.0, tensor.name
    assert report.overall()["cosine"] == 1.0
    assert report.overall()["relative_change"] == 0.0


def test_numbers_match_torch_on_whole_tensors(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = inspect_models(
        models.first, models.second, base=models.parent, chunk_elements=SMALL_CHUNK
    )
    first, second, parent = (
        load_model_tensors(m) for m in (models.first, models.second, models.parent)
    )
    assert {t.name for t in report.tensors} == set(parent)
    for tensor in report.tensors:
        name = tensor.name
        assert_close(
            tensor.sums.metrics(with_base=True),
            reference_metrics(first[name], second[name], parent[name]),
        )
    # A cell is its tensors concatenated; the whole model, every tensor.
    names = [n for n in parent if n.startswith("model.layers.1.self_attn.q_proj")]
    joined = [torch.cat([m[n].reshape(-1) for n in names]) for m in (first, second, parent)]
    assert_close(report.cell(1, "q"), reference_metrics(*joined))
    every = [torch.cat([m[n].reshape(-1) for n in sorted(parent)]) for m in (first, second, parent)]
    assert_close(report.overall(), reference_metrics(*every))

    whole = inspect_models(models.first, models.second, base=models.parent)
    # Not a mock: a smaller block size, so the blocked float64 summation path is exercised.
    monkeypatch.setattr(mergemed.compare.stats, "COMPUTE_BLOCK_ELEMENTS", 97)
    blocks = inspect_models(
        models.first, models.second, base=models.parent, chunk_elements=SMALL_CHUNK
    )
    for sliced, unsliced, blocked in zip(
        report.tensors, whole.tensors, blocks.tensors, strict=True
    ):
        assert_close(sliced.sums.metrics(True), unsliced.sums.metrics(True))
        assert_close(blocked.sums.metrics(True), unsliced.sums.metrics(True))


def test_each_tensor_is_read_once_in_bounded_slices(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[Path, str, int, int]] = []
    original = Checkpoint.read

    def recording_read(self, name, start=0, count=None):
        values = original(self, name, start, count)
        reads.append((self.folder, name, start, values.numel()))
        return values

    # A spy, not a mock: the real read runs and its arguments are recorded.
    monkeypatch.setattr(Checkpoint, "read", recording_read)
    report = inspect_models(
        models.first, models.second, base=models.parent, chunk_elements=SMALL_CHUNK
    )
    assert max(count for *_, count in reads) <= SMALL_CHUNK
    covered: dict[tuple[Path, str], list[tuple[int, int]]] = {}
    for folder, name, start, count in reads:
        covered.setdefault((folder, name), []).append((start, count))
    sizes = {name: math.prod(t.shape) for name, t in load_model_tensors(models.parent).items()}
    assert len(covered) == 3 * len(sizes)
    for (_, name), spans in covered.items():
        spans.sort()
        assert spans[0][0] == 0 and sum(count for _, count in spans) == sizes[name], name
        assert all(s + c == n for (s, c), (n, _) in itertools.pairwise(spans)), name
    assert report.bytes_read == 3 * sum(sizes.values()) * 4  # float32


# --------------------------------------------------------------------------------------------
# The reader thread's contract


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mergemed-inspect-reader"]


def test_a_read_failure_in_the_reader_reaches_the_caller(models: Models, tmp_path: Path) -> None:
    """The weights file of B is cut short once streaming has begun: the reader thread's
    CheckpointError is raised by inspect_models, and the reader is gone."""
    shortened = edited_copy(models.parent, tmp_path / "shortened")
    weights = shortened / "model.safetensors"
    keep = weights.stat().st_size // 8

    def cut_short(size: int, tensor: str) -> None:
        if weights.stat().st_size > keep:
            os.truncate(weights, keep)

    with pytest.raises(CheckpointError, match="truncated while reading tensor"):
        inspect_models(models.first, shortened, chunk_elements=257, progress=cut_short)
    assert reader_threads() == []


def test_an_error_on_the_calling_thread_stops_the_reader(models: Models) -> None:
    class Stop(Exception):
        pass

    def stop_at_once(size: int, tensor: str) -> None:
        raise Stop

    with pytest.raises(Stop):
        inspect_models(models.first, models.second, chunk_elements=257, progress=stop_at_once)
    assert reader_threads() == []


# --------------------------------------------------------------------------------------------
# Layout differences


def test_tied_lm_head(models: Models) -> None:
    both = inspect_models(models.tied, models.tied)
    assert "lm_head" not in both.outside_components
    assert any("reported once" in note for note in both.notes)

    duplicate = inspect_models(models.tied_with_copy, models.tied)
    assert "lm_head" not in duplicate.outside_components
    assert any("lm_head.weight of A skipped" in note for note in duplicate.notes)

    mixed = inspect_models(models.tied, models.first, chunk_elements=SMALL_CHUNK)
    lm_head = next(t for t in mixed.tensors if t.component == "lm_head")
    assert (lm_head.source_a, lm_head.source_b) == ("model.embed_tokens.weight", "lm_head.weight")
    tied, first = load_model_tensors(models.tied), load_model_tensors(models.first)
    assert_close(
        lm_head.sums.metrics(False),
        reference_metrics(tied["model.embed_tokens.weight"], first["lm_head.weight"]),
    )
    assert any("model A ties lm_head" in note for note in mixed.notes)
    assert [d.key for d in mixed.config_differences] == ["tie_word_embeddings"]
    assert mixed.plain_merge_possible
    assert any("tie_word_embeddings" in caution for caution in mixed.merge_cautions)


def test_vocabulary_rows_differ(models: Models) -> None:
    report = inspect_models(
        models.bigger_vocabulary, models.second, base=models.parent, chunk_elements=SMALL_CHUNK
    )
    bigger, second, parent = (
        load_model_tensors(m) for m in (models.bigger_vocabulary, models.second, models.parent)
    )
    rows = parent["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensor = next(t for t in report.tensors if t.name == name)
        assert (
            tensor.note
            == f"vocabulary rows differ ({rows + 8}/{rows}): compared the first {rows} rows"
        )
        assert_close(
            tensor.sums.metrics(True),
            reference_metrics(bigger[name][:rows], second[name], parent[name]),
        )
    assert not report.plain_merge_possible
    assert any(
        "vocabularies differ" in b and "`tokenizer: {source: union}`" in b
        for b in report.merge_blockers
    )
    assert [d.key for d in report.config_differences] == ["vocab_size"]
    assert report.vocabulary["rows"] == {"A": rows + 8, "B": rows}
    assert report.vocabulary["identical"] is False


def test_tensors_in_one_model_or_of_other_shapes_are_listed(models: Models) -> None:
    report = inspect_models(models.edited_names, models.parent)
    assert report.only_in_a == ["model.extra.weight"]
    assert report.only_in_b == ["model.norm.weight"]
    assert report.shape_mismatches == [
        {"name": "model.layers.1.mlp.gate_proj.weight", "a": [159, 64], "b": [160, 64]}
    ]
    assert report.cell(1, "gate") is None and report.cell(1, "up") is not None
    assert not report.plain_merge_possible
    assert len(report.merge_blockers) == 3

    shallower = inspect_models(models.three_layers, models.parent)
    assert shallower.layers == [0, 1, 2]
    assert all(name.startswith("model.layers.3.") for name in shallower.only_in_b)
    assert shallower.merge_blockers[0].startswith("layer counts differ (A 3, B 4)")
    assert [d.key for d in shallower.config_differences] == ["num_hidden_layers"]
