"""Make ``docs/evaluation_example.txt``: ``mergemed evaluate`` on a merge of two tiny models.

Two tiny Llamas (the ``llama-eval`` preset of ``mergemed.testing``: 4096 positions, a
512-token tokenizer with a chat template) stand for the parents: "instruct" is a random-weight
model, "clinical" a copy of it that always answers "yes" (``mergemed.testing.answering``: it
scores PubMedQA's share of "yes" and can do nothing else). They are merged by SLERP (t = 0.5)
and all three are scored on offline tasks (PubMedQA, the two instruction-following sets, both
perplexities) on one stratified ``--limit`` sample, so every change is paired. The numbers are
those of toy models: the point is the shape of the report (paired intervals, tests, weighting,
notes). Run from the repository root::

    .venv/bin/python docs/evaluation_example.py [WORKDIR]
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from mergemed.cli.evaluation_render import render_report
from mergemed.engine import merge
from mergemed.evaluation import evaluate
from mergemed.testing import build_tokenizer, make_random_model
from mergemed.testing.answering import make_answering_model

OUTPUT = Path(__file__).resolve().parent / "evaluation_example.txt"
TASKS = ["mm_pubmedqa", "ifeval_general", "ifeval_med", "general_ppl", "pubmedqa_ppl"]
LIMIT = 60


def main(workdir: Path) -> None:
    tokenizer = build_tokenizer(workdir / "tokenizer")
    instruct = make_random_model(
        workdir / "instruct", "llama-eval", seed=0, tokenizer_dir=tokenizer
    )
    clinical = make_answering_model(workdir / "clinical", instruct, "yes")
    recipe = workdir / "slerp.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {instruct}\nmodels:\n"
        f"  - model: {instruct}\n  - model: {clinical}\nparameters:\n  t: 0.5\n"
    )
    merged = workdir / "merged"
    merge(recipe, merged, overwrite=True)
    report = evaluate(
        merged,
        tasks=TASKS,
        limit=LIMIT,
        against={"clinical": clinical, "instruct": instruct},
        store=workdir / "results.sqlite",
        gen_kwargs="max_gen_toks=64",
    )
    console = Console(record=True, width=140, file=io.StringIO())
    for renderable in render_report(report):
        console.print(renderable)
    OUTPUT.write_text(console.export_text())
    print(OUTPUT.read_text())


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="eval-example-")))
