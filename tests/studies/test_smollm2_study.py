"""The SmolLM2 x PubMedQA study (``studies/smollm2_pubmedqa/run.py``), CI-sized: the same script
end to end on a tiny Llama written as a Q8_0 GGUF (so ``import gguf`` runs), two CPT steps per
ratio, two documents per task. Its results table must hold every model the study names, and a
second run must find every stage done and write the same table, and a run with other training
settings on the same work folder is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mergemed.testing import make_random_model
from mergemed.testing.gguf_files import write_llama_gguf

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "studies" / "smollm2_pubmedqa" / "run.py"
MODELS = ["instruct", "cpt-0-1", "cpt-1-1", "cpt-9-1"] + [
    name
    for ratio in ("0-1", "1-1", "9-1")
    for name in (
        f"slerp-0.3-{ratio}",
        f"slerp-0.5-{ratio}",
        f"slerp-0.7-{ratio}",
        f"definemed-{ratio}",
        f"ties-{ratio}",
    )
]
"""The instruct parent, a CPT model per ratio, and per ratio SLERP at three t, the DeFineMed
schedule and TIES: 19 models."""


def run_study(
    work: Path, results: Path, gguf: Path, tokens: int = 256, status: int = 0
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(SCRIPT),
        *("--work", work, "--results", results, "--gguf", gguf),
        *("--limit", "2", "--pubmedqa-limit", "2", "--tasks", "mm_pubmedqa"),
        *("--cpt-tokens", tokens, "--sequence-length", "64", "--micro-batch-size", "2"),
        *("--gradient-accumulation-steps", "1", "--held-out-fraction", "0.01"),
        *("--grid-values", "1", "--grid-limit", "2", "--grid-tasks", "mm_pubmedqa,ifeval_med"),
        *("--max-gen-toks", "4", "--headline-limit", "2"),
    ]
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert result.returncode == status, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_ci_sized_study_runs_end_to_end_and_resumes(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    base = make_random_model(
        tmp_path / "tiny", "llama-eval", seed=0, tokenizer_dir=tiny_tokenizer_dir, num_layers=2
    )
    gguf = write_llama_gguf(base, tmp_path / "tiny.Q8_0.gguf", storage="Q8_0")
    work, results = tmp_path / "work", tmp_path / "results"

    first = run_study(work, results, gguf)

    facts = json.loads((results / "results.json").read_text())
    assert [row["name"] for row in facts["models"]] == MODELS
    for row in facts["models"]:
        score = row["scores"]["mm_pubmedqa"]
        assert 0 <= score["value"] <= 1 and score["stderr"] is not None, row["name"]
        if row["name"] != "instruct":
            assert "mm_pubmedqa" in row["changes"], row["name"]  # paired against instruct
    report = (results / "RESULTS.md").read_text()
    table = report.split("## Every model")[1].split("##")[0]
    labels = [row["label"] for row in facts["models"]]
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][
        1:
    ] == labels
    assert "## Schedule search on CPT 0:1" in report and facts["grid"]["trials"]
    # The headline task on its own sample: the instruct parent, CPT 0:1 and its 5 merges.
    headline = facts["headline"]["models"]
    assert [row["name"] for row in headline] == [
        name for name in MODELS if name == "instruct" or name.endswith("0-1")
    ]
    for row in headline:
        assert row["sizes"]["ifeval_med"] == 2 and row["scores"]["ifeval_med"] is not None
        if row["name"] != "instruct":
            assert "ifeval_med" in row["changes"], row["name"]
    assert "## Headline: `ifeval_med` on 2 prompts, CPT 0:1 and its merges" in report
    assert "- **Headline: `ifeval_med` on 2 prompts" in report
    # A run off the defaults says which settings it changed.
    assert "**Not the default settings.**" in report
    assert "`--pubmedqa-limit` 2 (default 200)" in report and "`--tasks` mm_pubmedqa (" in report
    for picture in ("pareto.png", "grid_pareto.png"):
        assert (results / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for config in ("cpt-0-1.yaml", "cpt-1-1.yaml", "cpt-9-1.yaml"):
        assert (results / "configs" / config).is_file()
    assert len(list((results / "recipes").glob("*.yaml"))) == 15
    # The same token budget for every ratio, split as the ratio says.
    tokens = {
        name: sum(run["tokens_per_source"].values()) for name, run in facts["training"].items()
    }
    assert set(tokens.values()) == {256}
    assert facts["training"]["cpt-0-1"]["tokens_per_source"]["general"] == 0

    second = run_study(work, results, gguf)
    stages = [line for line in second.stdout.splitlines() if line.startswith("[")]
    assert stages and all("done before" in line for line in stages), stages
    again = json.loads((results / "results.json").read_text())
    assert again["models"] == facts["models"]
    assert "[import]" in first.stdout

    # Evaluation files lost: the models are evaluated again from the result store, and the
    # report still counts what scoring them cost (the store's times), not the reads.
    (work / "eval").rename(work / "eval.lost")
    (work / "headline").rename(work / "headline.lost")
    run_study(work, results, gguf)
    restored = json.loads((results / "results.json").read_text())
    stored = restored["stored_results"]
    every = facts["models"] + facts["headline"]["models"]
    assert stored["count"] == stored["of"] == sum(len(r["task_seconds"]) for r in every)
    assert stored["untimed"] == 0
    assert [r["task_seconds"] for r in restored["models"]] == [
        r["task_seconds"] for r in facts["models"]
    ]
    assert stored["seconds"] == pytest.approx(
        sum(sum(r["task_seconds"].values()) for r in every), abs=0.1
    )
    assert [r["scores"] for r in restored["models"]] == [r["scores"] for r in facts["models"]]
    assert f"{stored['count']} of the {stored['of']} task results were read from the result" in (
        (results / "RESULTS.md").read_text()
    )

    # Other training settings would mix models of two budgets in one table: refused.
    refused = run_study(work, results, gguf, tokens=512, status=2)
    assert refused.stderr.strip().splitlines() == [
        f"error: {work}: its models were made with other training settings (cpt_tokens 256 -> "
        "512); use another --work folder or delete this one"
    ]
