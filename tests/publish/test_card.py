"""Model cards: Hub metadata huggingface_hub itself parses, numbers only from results on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from mergemed.engine import merge
from mergemed.errors import MergemedError
from mergemed.publish import write_card
from mergemed.publish.licences import decide_licence, parent_licence


def _slerp(tmp_path: Path, base: Path, other: Path) -> Path:
    recipe = tmp_path / "slerp.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n"
        f"  - model: {other}\nparameters:\n  t: [0.2, 0.8]\n"
    )
    return merge(recipe, tmp_path / "merged").output


def _with_licence(source: Path, folder: Path, licence: str) -> Path:
    import shutil

    shutil.copytree(source, folder)
    (folder / "README.md").write_text(f"---\nlicense: {licence}\n---\n\n# a parent\n")
    return folder


def test_a_card_made_without_evaluation_says_so_and_shows_no_number(tiny_model_pair, tmp_path):
    base, other = tiny_model_pair("llama")
    merged = _slerp(tmp_path, base, other)
    path, decision = write_card(merged)
    card = ModelCard.load(path)
    assert card.data.base_model_relation == "merge"
    assert card.data.library_name == "transformers"
    assert {"merge", "mergemed", "medical", "slerp"} <= set(card.data.tags)
    assert not card.data.eval_results
    assert "**Not evaluated.**" in card.text
    assert "## Evaluation" in card.text and "| task |" not in card.text
    assert (merged / "schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not for clinical decisions" in card.text
    assert "lost instruction following: **not measured**" in card.text
    # The parents' cards say nothing of a licence: none is decided, and the card says so.
    assert decision.licence is None and card.data.license_name == "undecided"


def test_the_licence_comes_from_the_parents_and_conflicts_are_not_resolved_silently(
    tiny_model_pair, tmp_path
):
    base, other = tiny_model_pair("llama")
    apache = _with_licence(base, tmp_path / "apache", "apache-2.0")
    llama = _with_licence(other, tmp_path / "llama", "llama3.1")
    assert parent_licence(apache) == "apache-2.0" and parent_licence(tmp_path) == "unknown"
    same = decide_licence({"a": "apache-2.0", "b": "apache-2.0"})
    assert same.licence == "apache-2.0"
    merged = _slerp(tmp_path, apache, llama)
    path, decision = write_card(merged)
    assert decision.licence is None and "differ" in decision.reason
    text = path.read_text()
    assert "apache-2.0" in text and "llama3.1" in text
    path, decision = write_card(merged, licence="llama3.1")
    assert ModelCard.load(path).data.license == "llama3.1"


@pytest.mark.slow
def test_the_card_shows_exactly_the_evaluation_it_was_made_from(tiny_eval_models, tmp_path):
    """A real `mergemed evaluate --json` of a merge against both parents: every number on the
    card (model-index and table) is the one in that file."""
    from mergemed.evaluation import evaluate

    instruct, clinical, _ = tiny_eval_models
    merged = _slerp(tmp_path, instruct, clinical)
    results = tmp_path / "eval.json"
    evaluate(
        merged,
        tasks=["mm_pubmedqa"],
        limit=12,
        against={"clinical": clinical, "instruct": instruct},
        store=False,
        json_path=results,
    )
    data = json.loads(results.read_text())
    path, _ = write_card(merged, evaluation=results)
    card = ModelCard.load(path)
    (result,) = card.data.eval_results
    row = data["summary"]["per_task"][0]
    merged_label = data["summary"]["merged"]
    assert result.dataset_name == row["task"] == "mm_pubmedqa"
    assert result.metric_value == row["scores"][merged_label]["value"]
    assert f"{row['scores'][merged_label]['value']:.4f}" in card.text
    gain = row["gain"]["value"]
    assert f"gain {gain:+.4f}" in card.text
    assert card.data.mergemed_evaluation["path"] == str(results.absolute())


def test_bad_card_inputs_are_one_line_errors(tiny_model_pair, tmp_path):
    base, _ = tiny_model_pair("llama")
    with pytest.raises(MergemedError, match=r"no merge\.json"):
        write_card(base)
    merged = _slerp(tmp_path, base, tiny_model_pair("llama")[1])
    with pytest.raises(MergemedError, match=r"--eval .*missing.json: file not found"):
        write_card(merged, evaluation=tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"results": {}}')
    with pytest.raises(MergemedError, match=r"not a `mergemed evaluate --json` file"):
        write_card(merged, evaluation=tmp_path / "other.json")
    assert not (merged / "README.md").exists()
