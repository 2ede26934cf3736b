"""What multi-fidelity saves, and whether it finds the same front, on a grid with a known front.

The grid is the one ``tests/search/test_fidelity.py`` checks: linear merges of a tiny model that
always answers "yes" and one that always answers "maybe" (``mergemed.testing.answering``), the
"yes" weight in {0.1, 0.2, 1.0, 2.0} against 0.5, scored on ``mm_pubmedqa`` (40 documents,
stratified), objective domain gain. Closed form: weights above 0.5 answer "yes" and score the
sample's share of "yes"; the rest answer "maybe". The same search runs without fidelity and with
``fidelity: [10]`` (and [10, 20]); the script reports documents scored, the share saved and
whether the fronts agree, and appends a section to ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/fidelity_savings.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import merge_speed  # noqa: E402  (machine facts)
import yaml  # noqa: E402


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mergemed.search.study import leaderboard, run_search
    from mergemed.testing import build_tokenizer, make_random_model
    from mergemed.testing.answering import answering_grid_space, make_answering_model

    work = Path(tempfile.mkdtemp(prefix="fidelity-"))
    tokenizer = build_tokenizer(work / "tokenizer")
    instruct = make_random_model(work / "instruct", "llama-eval", seed=0, tokenizer_dir=tokenizer)
    yes = make_answering_model(work / "yes", instruct, "yes")
    maybe = make_answering_model(work / "maybe", instruct, "maybe")
    rows, fronts = [], {}
    for label, fidelity in (
        ("none", ""),
        ("[10]", "fidelity: [10]"),
        ("[10, 20]", "fidelity: [10, 20]"),
    ):
        folder = work / label.strip("[]").replace(", ", "-") if fidelity else work / "none"
        folder.mkdir()
        space = folder / "space.yaml"
        data = answering_grid_space(yes, maybe, instruct, limit=40, fidelity=fidelity)
        space.write_text(yaml.safe_dump(data))
        started = time.perf_counter()
        board = leaderboard(run_search(space, folder / "run"))
        seconds = time.perf_counter() - started
        fronts[label] = sorted(r["choice"]["yes_weight"] for r in board["trials"] if r["pareto"])
        stopped = sum(r["stopped_at"] is not None for r in board["trials"])
        cost = board["cost"]
        rows.append(
            f"| {label} | {cost['documents']} | {cost['documents_without_fidelity']} | "
            f"{cost['saved']:.1%} | {stopped} of {len(board['trials'])} | {fronts[label]} | "
            f"{seconds:.0f} s |"
        )
    same = all(front == fronts["none"] for front in fronts.values())
    lines = [
        "| fidelity | documents scored | without fidelity | saved | stopped early "
        "| front (yes weights) | wall |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(lines))
    print(f"same front as the full-sample search: {same}")
    merge_speed.append_section(
        merge_speed.RESULTS_PATH,
        "multi-fidelity savings, answering tiny models, cpu",
        "cpu",
        [
            "- grid: linear merges of an always-yes and an always-maybe tiny Llama, 4 "
            "candidates, mm_pubmedqa on 40 stratified documents, objective domain gain",
            "",
            *lines,
            "",
            f"same front as the full-sample search: {same}. A candidate that goes on is scored "
            "again on the larger sample (rung documents are not reused), so a search where "
            "nothing is stopped costs more with fidelity than without.  ",
        ],
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
