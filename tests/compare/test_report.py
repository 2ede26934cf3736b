"""The report (:mod:`mergemed.compare.report`): cells, rankings, JSON and the merge verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compare_models import MLP_COLUMNS, SMALL_CHUNK, Models

from mergemed.compare import inspect_models, summary_line
from mergemed.compare.configs import ConfigDifference
from mergemed.compare.report import (
    LayoutDifferences,
    TensorComparison,
    format_percent,
    merge_verdict,
)


def test_only_layer_2_mlp_changed(models: Models, tmp_path: Path) -> None:
    report = inspect_models(
        models.layer_2_mlp, models.parent, chunk_elements=SMALL_CHUNK, json_path=tmp_path / "r.json"
    )
    assert report.layers == [0, 1, 2, 3]
    assert report.components == ["q", "k", "v", "o", *MLP_COLUMNS, "in_norm", "post_norm"]
    for layer in report.layers:
        for component in report.components:
            cell = report.cell(layer, component)
            if layer == 2 and component in MLP_COLUMNS:
                assert 0.1 < cell["relative_change"] < 0.3, (layer, component)
                assert cell["cosine"] < 0.999
            else:
                assert cell["relative_change"] == 0.0, (layer, component)
                assert cell["cosine"] == 1.0
    for component in report.outside_components:
        assert report.cell(None, component)["relative_change"] == 0.0
    ranked = report.ranked("relative_change", 3)
    assert {(e["layer"], e["component"]) for e in ranked} == {(2, c) for c in MLP_COLUMNS}
    assert report.ranked("relative_change", 1, whole_layers=True)[0]["layer"] == 2
    assert report.plain_merge_possible and not report.config_differences

    saved = json.loads((tmp_path / "r.json").read_text())
    for row in saved["layers"]:
        for component, cell in row["components"].items():
            changed = row["layer"] == 2 and component in MLP_COLUMNS
            assert (cell["relative_change"] > 0) == changed, (row["layer"], component)
        assert (row["all"]["relative_change"] > 0) == (row["layer"] == 2)
    changed_tensors = {t["name"] for t in saved["tensors"] if t["relative_change"] > 0}
    assert changed_tensors == {f"model.layers.2.mlp.{c}_proj.weight" for c in MLP_COLUMNS}
    assert saved["plain_merge"] == {"possible": True, "blockers": [], "cautions": []}
    assert saved["vocabulary"]["identical"] is True
    assert summary_line(report).startswith(f"inspected {len(report.tensors)} tensors (")


def test_nan_weights_give_no_numbers_and_valid_json(models: Models, tmp_path: Path) -> None:
    report = inspect_models(models.with_nan, models.parent, json_path=tmp_path / "r.json")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert report.notes == [f"NaN or Inf values in {name}: no numbers for them"]
    assert report.cell(0, "q")["cosine"] is None and report.cell(0)["cosine"] is None
    assert report.cell(0, "k")["relative_change"] == 0.0
    assert report.cell(1)["cosine"] == 1.0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON")

    saved = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    poisoned = next(t for t in saved["tensors"] if t["name"] == name)
    assert poisoned["cosine"] is None and poisoned["sums"]["dot"] == "nan"


def vocabulary_comparison(note: str | None) -> TensorComparison:
    return TensorComparison(
        "model.embed_tokens.weight", None, "embed_tokens", "embed_tokens", (8, 4), (6, 4), note=note
    )


def test_merge_verdict_names_every_blocker_and_caution() -> None:
    layout = LayoutDifferences(
        only_in_a=["model.extra.weight"],
        missing_in_base=["model.norm.weight", "lm_head.weight"],
        shape_mismatches=[{"name": "w", "a": [3], "b": [4], "base": [5]}],
    )
    differences = [
        ConfigDifference("model_type", "llama", "qwen2", "llama", "different families", True),
        ConfigDifference("rope_theta", 1e4, 5e5, 1e4, "context handling differs", False),
    ]
    note = "vocabulary rows differ (8/6): compared the first 6 rows"
    blockers, cautions = merge_verdict(
        {"a": 4, "b": 4, "base": 3}, layout, [vocabulary_comparison(note)], differences
    )
    assert blockers == [
        "layer counts differ (A 4, B 4, the base 3): merge matching layer ranges with slices",
        "vocabulary rows differ (8/6): align the tokenizers first",
        "1 tensor(s) only in A, e.g. model.extra.weight",
        "2 tensor(s) missing in the base, e.g. model.norm.weight",
        "1 tensor(s) differ in shape, e.g. w ([3] in A, [4] in B, [5] in the base)",
        'model_type differs (A "llama", B "qwen2", base "llama")',
    ]
    assert cautions == ["rope_theta differs (A 10000.0, B 500000.0, base 10000.0)"]


def test_merge_verdict_of_matching_models_is_empty() -> None:
    blockers, cautions = merge_verdict(
        {"a": 2, "b": 2}, LayoutDifferences(), [vocabulary_comparison(None)], []
    )
    assert (blockers, cautions) == ([], [])


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0.0, "0%"), (0.10123, "10.1%"), (1.4213, "142%"), (0.5, "50.0%")],
)
def test_format_percent(value: float | None, text: str) -> None:
    assert format_percent(value) == text
