"""Make ``docs/search_example.txt`` and ``docs/search_pareto.png``: a real ``mergemed grid`` run.

The parents are tiny local models (nothing is downloaded): "instruct" is a random-weight
``llama-eval`` Llama (6 layers), "clinical" a copy of it that always answers "yes"
(:mod:`mergemed.testing.answering`), so it scores PubMedQA's share of "yes" and has forgotten
how to do anything else. The space is the GatorTronLlama search's shape on them: SLERP from
instruct (t = 0) towards clinical, a 3 x 2 grid over the rest-of-model t (which moves the
output head) and the attention gradient, scored on ``mm_pubmedqa`` (domain) and
``ifeval_general`` (forgetting) with multi-fidelity (10 documents, then 40). Everything runs
through the real engine, Optuna and lm-eval; the numbers are those of toy models. Run from the
repository root::

    .venv/bin/python docs/search_example.py [WORKDIR]
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

DOCS = Path(__file__).resolve().parent


def write_space(workdir: Path, instruct: Path, clinical: Path) -> Path:
    import yaml

    recipe = {
        "merge_method": "slerp",
        "base_model": str(instruct),
        "models": [{"model": str(instruct)}, {"model": str(clinical)}],
        "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0]}, {"value": 0.5}]},
    }
    space = {
        "recipe": recipe,
        "vary": {
            "attention_t": {
                "path": "parameters.t.0.value",
                "values": [[0, 0.5, 0], [0.5, 0.8, 0.5]],
            },
            "rest_t": {"path": "parameters.t.1.value", "values": [0.05, 0.25, 0.5]},
        },
        "score": {
            "tasks": ["mm_pubmedqa", "ifeval_general"],
            "limit": 40,
            "fidelity": [10],
            "clinical": str(clinical),
            "instruct": str(instruct),
            "settings": {"gen_kwargs": "max_gen_toks=32"},
        },
        "objectives": ["domain_gain", "forgetting"],
        "strategy": "grid",
    }
    path = workdir / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def main(workdir: Path) -> None:
    from mergemed.cli.grid import board_table, share
    from mergemed.search.export import ranked_trials
    from mergemed.search.plot import plot_front
    from mergemed.search.study import leaderboard, run_search
    from mergemed.testing import build_tokenizer, make_random_model
    from mergemed.testing.answering import make_answering_model

    tokenizer = build_tokenizer(workdir / "tokenizer")
    instruct = make_random_model(
        workdir / "instruct", "llama-eval", seed=0, tokenizer_dir=tokenizer, num_layers=6
    )
    clinical = make_answering_model(workdir / "clinical", instruct, "yes")
    space = write_space(workdir, instruct, clinical)
    started = time.time()
    run = run_search(space, workdir / "run")
    seconds = time.time() - started
    board = leaderboard(run)
    recorder = Console(record=True, width=150, file=io.StringIO())
    recorder.print(board_table(board))
    cost = board["cost"]
    text = recorder.export_text() + (
        f"\n{len(board['trials'])} candidates in {seconds:.0f} s on 2 CPU cores; "
        f"multi-fidelity scored {cost['documents']} documents against "
        f"{cost['documents_without_fidelity']} on full samples ({share(cost['saved'])})\n"
    )
    (DOCS / "search_example.txt").write_text(text)
    plot_front(board, DOCS / "search_pareto.png", ranked_trials(board)[0])
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        folder = Path(tempfile.mkdtemp(prefix="search-example-"))
        try:
            main(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
