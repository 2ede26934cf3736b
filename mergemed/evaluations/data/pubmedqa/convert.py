"""Convert the PubMedQA expert-labelled set (PQA-L) into the JSONL files shipped here.

Usage::

    python evaluations/data/pubmedqa/convert.py /path/to/pubmedqa [--out DIR]

The source folder is a copy of the PubMedQA release (https://github.com/pubmedqa/pubmedqa,
MIT licence) holding ``ori_pqal.json`` (a dict PubMed id -> record, 1000 records) and
``test_ground_truth.json`` (a dict PubMed id -> answer for the 500 test questions).

Writes, next to this script unless ``--out`` is given:

* ``test.jsonl``: the 500 ids of ``test_ground_truth.json``, in that file's order;
* ``train.jsonl``: the other 500 ids, sorted by numeric PubMed id;
* ``LICENSE`` and ``test_ground_truth.json``: copied unchanged (the licence, and the answer key
  the tests check ``test.jsonl`` against).

Each line is one JSON object with the fields ``id`` (str), ``question`` (str), ``contexts``
(list of str), ``labels`` (list of str), ``meshes`` (list of str), ``final_decision``
(``"yes"``, ``"no"`` or ``"maybe"``) and ``long_answer`` (str). The script checks that every
answer in ``test_ground_truth.json`` equals the record's ``final_decision`` and stops with an
error otherwise. Lines are ASCII (non-ASCII characters are JSON-escaped, so no Unicode line
separator can split a record). Running it again rewrites the same bytes. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ANSWERS = ("yes", "no", "maybe")
COPIED = ("LICENSE", "test_ground_truth.json")
FIELDS = {
    # output field: source field in ori_pqal.json
    "question": "QUESTION",
    "contexts": "CONTEXTS",
    "labels": "LABELS",
    "meshes": "MESHES",
    "final_decision": "final_decision",
    "long_answer": "LONG_ANSWER",
}


def convert_record(pmid: str, source: dict) -> dict:
    """One ``ori_pqal.json`` record as a JSONL record (``id`` first, then ``FIELDS``)."""
    missing = [key for key in FIELDS.values() if key not in source]
    if missing:
        raise ValueError(f"record {pmid}: missing field(s) {', '.join(missing)}")
    record = {"id": str(pmid)}
    record.update({out: source[src] for out, src in FIELDS.items()})
    if record["final_decision"] not in ANSWERS:
        raise ValueError(f"record {pmid}: final_decision {record['final_decision']!r}")
    return record


def convert(source_dir: Path, out_dir: Path) -> tuple[int, int]:
    """Write ``test.jsonl`` and ``train.jsonl`` into ``out_dir`` and copy ``COPIED`` there.

    Returns the number of test and train records written.
    """
    records = json.loads((source_dir / "ori_pqal.json").read_text(encoding="utf-8"))
    truth = json.loads((source_dir / "test_ground_truth.json").read_text(encoding="utf-8"))

    unknown = [pmid for pmid in truth if pmid not in records]
    if unknown:
        raise ValueError(f"test_ground_truth.json: ids not in ori_pqal.json: {unknown[:5]}")
    test = [convert_record(pmid, records[pmid]) for pmid in truth]
    for record in test:
        if truth[record["id"]] != record["final_decision"]:
            raise ValueError(
                f"record {record['id']}: test_ground_truth.json says {truth[record['id']]!r}, "
                f"ori_pqal.json says {record['final_decision']!r}"
            )
    train_ids = sorted((pmid for pmid in records if pmid not in truth), key=int)
    train = [convert_record(pmid, records[pmid]) for pmid in train_ids]

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("test.jsonl", test), ("train.jsonl", train)):
        with (out_dir / name).open("w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    for name in COPIED:
        if (source_dir / name).resolve() != (out_dir / name).resolve():
            shutil.copyfile(source_dir / name, out_dir / name)
    return len(test), len(train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder with ori_pqal.json, LICENSE, ...")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the folder of this script)",
    )
    args = parser.parse_args(argv)
    try:
        n_test, n_train = convert(args.source, args.out)
    except (OSError, ValueError) as err:
        print(f"convert.py: {err}", file=sys.stderr)
        return 1
    print(f"wrote {n_test} test and {n_train} train records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
