"""Build ``ifeval_med.jsonl``: instruction-following prompts over real PubMedQA questions.

Each prompt is a clinical or biomedical request about one PubMedQA test-set question (the 500
ids of ``test_ground_truth.json``), followed by one to three verifiable instructions taken from
lm-eval's IFEval registry (``lm_eval.tasks.ifeval.instructions_registry``), phrased here in our
own words and with explicit checker arguments. The output uses IFEval's record format
(``key``, ``prompt``, ``instruction_id_list``, ``kwargs``), so lm-eval's IFEval checkers score
it unchanged; ``key`` is the PubMed id of the question.

The requests, the wording of every instruction, the word lists and the instruction weights are
data, in ``wording.json`` beside this file; drawing, assembling, checking and writing is
``ifeval_builder.py`` and ``ifeval_check.py`` in the folder above, shared with
``ifeval_general``. Generation uses only the standard library and is deterministic: every choice
comes from ``random.Random`` seeded with a fixed string, so two runs write the same bytes. After
generating, the script checks every record against lm-eval's registry (each id exists, its
``build_description`` accepts the kwargs, no two instructions of a prompt conflict in
``INSTRUCTION_CONFLICTS``); that check needs lm-eval and is skipped only with ``--no-validate``.

Usage::

    python evaluations/forgetting/ifeval_med/build.py [--pubmedqa DIR] [--output FILE]

``DIR`` holds PubMedQA's test questions (MIT licence): either ``test.jsonl`` as written by
``evaluations/data/pubmedqa/convert.py``, or the release's ``ori_pqal.json`` and
``test_ground_truth.json``. By default the repository copy ``evaluations/data/pubmedqa/`` is
used, else ``$PUBMEDQA_DIR``, else ``/work/shared/data/pubmedqa``; all give the same output.

Licences: the prompt texts written here are Apache-2.0 (the project licence); the PubMedQA
questions they quote are MIT (see ``evaluations/data/pubmedqa/LICENSE``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(
    0, str(HERE.parent)
)  # ifeval_builder.py and ifeval_check.py, also when run as a script

import ifeval_builder  # noqa: E402
import ifeval_check  # noqa: E402

REPO = HERE.parents[2]
OUTPUT = HERE / "ifeval_med.jsonl"
WORDING = ifeval_builder.Wording.read(HERE / "wording.json")
SEED = WORDING["seed"]

DEFAULT_SOURCES = (
    REPO / "evaluations" / "data" / "pubmedqa",
    Path(os.environ["PUBMEDQA_DIR"]) if os.environ.get("PUBMEDQA_DIR") else None,
    Path("/work/shared/data/pubmedqa"),
)


def _has_source(folder: Path) -> bool:
    return (folder / "test.jsonl").is_file() or (
        (folder / "ori_pqal.json").is_file() and (folder / "test_ground_truth.json").is_file()
    )


def find_source(explicit: Path | None) -> Path:
    """The first folder holding PubMedQA's test questions (``--pubmedqa``, else the defaults)."""
    candidates = [explicit] if explicit else [p for p in DEFAULT_SOURCES if p]
    for folder in candidates:
        if _has_source(folder):
            return folder
    names = ", ".join(str(p) for p in candidates)
    raise SystemExit(f"no PubMedQA test.jsonl or ori_pqal.json + test ids in: {names}")


def load_questions(source: Path) -> dict[str, str]:
    """PubMed id -> question, for the 500 questions of the PubMedQA test split.

    Reads the repository's ``test.jsonl`` (fields ``id`` and ``question``, written by
    ``evaluations/data/pubmedqa/convert.py``) when present, else the original release files."""
    if (source / "test.jsonl").is_file():
        lines = (source / "test.jsonl").read_text(encoding="utf-8").splitlines()
        raw = {r["id"]: r["question"] for r in map(json.loads, filter(str.strip, lines))}
    else:
        records = json.loads((source / "ori_pqal.json").read_text(encoding="utf-8"))
        test_ids = json.loads((source / "test_ground_truth.json").read_text(encoding="utf-8"))
        raw = {pubid: records[pubid]["QUESTION"] for pubid in test_ids}
    questions = {}
    for pubid in sorted(raw):
        text = " ".join(raw[pubid].split())  # also folds no-break spaces
        questions[pubid] = text.replace('"', "'")
    return questions


def make_doc(pubid: str, question: str) -> dict:
    """One IFEval record about one question (deterministic: seeded by its PubMed id)."""
    rng = random.Random(f"{SEED}/{pubid}")
    tag, template = rng.choice(WORDING["requests"])
    request = template.format(q=question)
    ctx = {"subject": question, "request": request}
    return ifeval_builder.instructed_record(rng, int(pubid), request, tag, ctx, WORDING)


def build(source: Path) -> list[dict]:
    """All records, from the PubMedQA test questions in ``source`` (deterministic)."""
    questions = load_questions(source)
    picked = random.Random(SEED).sample(sorted(questions), WORDING["num_prompts"])
    return [make_doc(pubid, questions[pubid]) for pubid in picked]


def main(argv: list[str] | None = None) -> int:
    """Build, validate and write the prompts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pubmedqa", type=Path, help="folder with ori_pqal.json and test ids")
    return ifeval_check.command_line(
        parser, OUTPUT, lambda args: build(find_source(args.pubmedqa)), argv
    )


if __name__ == "__main__":
    sys.exit(main())
