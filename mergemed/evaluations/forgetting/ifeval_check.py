"""The other half of the IFEval-style builders (``ifeval_builder.py`` draws the records): check
every record against lm-eval's IFEval registry and our own rules, and the command line that
builds, checks and writes a set's JSONL. ``validate`` needs lm-eval (and uses mergemed's
offline Punkt when present); the rest is the standard library.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path


def serialise(docs: list[dict]) -> str:
    """One JSON object a line, as shipped."""
    return "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)


# --------------------------------------------------------------------------------------------
# Validation against lm-eval's registry, and the command line.
# --------------------------------------------------------------------------------------------


def validate(docs: list[dict], excluded: re.Pattern | None = None) -> None:
    """Check every record against lm-eval's IFEval registry and our own rules (unique keys and
    prompts, no ``excluded`` word in a prompt); raise on the first problem."""
    try:  # lm-eval's IFEval utilities download nltk's punkt_tab at import unless it is found
        from mergemed.evaluation.punkt import ensure_punkt
    except ImportError:
        pass
    else:
        ensure_punkt()
    from lm_eval.tasks.ifeval import instructions_registry as registry

    conflicts: dict[str, set[str]] = {}
    for name, others in registry.INSTRUCTION_CONFLICTS.items():
        for other in others:
            conflicts.setdefault(name, set()).add(other)
            conflicts.setdefault(other, set()).add(name)
    keys, prompts = set(), set()
    for doc in docs:
        if doc["key"] in keys or doc["prompt"] in prompts:
            raise ValueError(f"{doc['key']}: duplicate key or prompt")
        keys.add(doc["key"])
        prompts.add(doc["prompt"])
        if excluded is not None and excluded.search(doc["prompt"]):
            raise ValueError(f"{doc['key']}: excluded word in the prompt")
        ids, kwargs = doc["instruction_id_list"], doc["kwargs"]
        if not 1 <= len(ids) <= 3 or len(ids) != len(kwargs) or len(set(ids)) != len(ids):
            raise ValueError(f"{doc['key']}: bad instruction list {ids}")
        for index, name in enumerate(ids):
            if name not in registry.INSTRUCTION_DICT:
                raise ValueError(f"{doc['key']}: {name} is not in lm-eval's IFEval registry")
            checker = registry.INSTRUCTION_DICT[name](name)
            checker.build_description(**kwargs[index])
            described = checker.get_instruction_args() or {}
            for arg, value in kwargs[index].items():
                if described.get(arg) != value and not (
                    isinstance(value, list) and sorted(described.get(arg) or []) == sorted(value)
                ):
                    raise ValueError(f"{doc['key']}: {name} did not take {arg}={value!r}")
            for other in ids[index + 1 :]:
                if other in conflicts.get(name, ()):
                    raise ValueError(f"{doc['key']}: {name} conflicts with {other}")


def command_line(
    parser: argparse.ArgumentParser,
    output: Path,
    build: Callable[[argparse.Namespace], list[dict]],
    argv: list[str] | None = None,
    excluded: re.Pattern | None = None,
) -> int:
    """Parse ``argv`` (the set's own options already on ``parser``), build, validate, write the
    prompts and print what was drawn."""
    parser.add_argument("--output", type=Path, default=output)
    parser.add_argument("--no-validate", action="store_true", help="skip the lm-eval check")
    args = parser.parse_args(argv)
    docs = build(args)
    if not args.no_validate:
        validate(docs, excluded)
    args.output.write_text(serialise(docs), encoding="utf-8", newline="\n")
    counts = Counter(name for doc in docs for name in doc["instruction_id_list"])
    sizes = Counter(len(doc["instruction_id_list"]) for doc in docs)
    print(f"wrote {len(docs)} prompts to {args.output}", file=sys.stderr)
    print(f"instructions per prompt: {dict(sorted(sizes.items()))}", file=sys.stderr)
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:4d} {name}", file=sys.stderr)
    return 0
