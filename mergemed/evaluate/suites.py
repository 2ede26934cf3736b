"""Suites and task names: what ``--suite medical`` means, and finding lm-eval tasks by name.

mergemed's tasks are ordinary lm-eval task YAMLs in the ``evaluations/`` folder; lm-eval's
``TaskManager(include_path=...)`` indexes them beside its own (ours take precedence on equal
names) and beside any folders the user adds. A suite is a list of *members*, each a task or a
group of tasks scored as one (see :mod:`mergemed.evaluate.scores`).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError

MMLU_MEDICAL = (
    "mmlu_anatomy",
    "mmlu_clinical_knowledge",
    "mmlu_college_biology",
    "mmlu_college_medicine",
    "mmlu_medical_genetics",
    "mmlu_professional_medicine",
)

MMLU_MEDICAL_TASKS = tuple(f"mm_{name}" for name in MMLU_MEDICAL)

SUITES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "medical": {
        "pubmedqa": ("mm_pubmedqa",),
        "medqa_4options": ("mm_medqa_4options",),
        "medmcqa": ("mm_medmcqa",),
        "mmlu_medical": MMLU_MEDICAL_TASKS,
    },
    "forgetting": {
        "ifeval": ("ifeval",),
        "ifeval_med": ("ifeval_med",),
        "pubmedqa_longctx": (
            "pubmedqa_longctx_1k",
            "pubmedqa_longctx_4k",
            "pubmedqa_longctx_8k",
            "pubmedqa_longctx_16k",
        ),
        "mmlu": ("mmlu",),
    },
}
"""Suite -> member -> lm-eval tasks. ``medical`` is the domain; ``forgetting`` holds the
general abilities an instruct parent had. mergemed's copies of lm-eval tasks are named
``mm_<lm-eval name>`` (same prompt, choices and metric; local data): overriding lm-eval's own
names would change lm-eval's ``mmlu`` group, and older lm-eval versions ignore the override."""

HUB_ONLY = frozenset({"ifeval", "mmlu", "medqa_4options", "medmcqa", "mmlu_medical"})
"""Members whose data comes from the Hugging Face Hub unless a local copy is given; in a
suite they are skipped (with a warning) when offline and no local copy exists."""

DOMAIN_SUITES = frozenset({"medical"})


def evaluations_dir() -> Path:
    """The folder of mergemed's lm-eval task YAMLs: ``mergemed/evaluations``, shipped in the
    package (the repository's top-level ``evaluations/`` links to it)."""
    folder = Path(__file__).resolve().parents[1] / "evaluations"
    if not folder.is_dir():
        raise MergemedError(f"{folder}: mergemed's task folder is missing; reinstall mergemed")
    return folder


def task_manager(extra_paths: Sequence[str | Path] = (), names: Sequence[str] = ()) -> Any:
    """An lm-eval ``TaskManager`` that knows lm-eval's tasks, mergemed's and the user's
    folders (later folders win on equal names).

    Indexing lm-eval's own tasks takes seconds, so when every name in ``names`` is one of
    mergemed's or the user's, the manager skips lm-eval's built-in tasks; and one manager per
    set of folders is kept for the life of the process.

    Raises:
        MergemedError: a user folder does not exist.
    """
    paths = [evaluations_dir()]
    for extra in extra_paths:
        folder = Path(extra).expanduser()
        if not folder.is_dir():
            raise MergemedError(f"--include {extra}: not a folder of lm-eval task YAMLs")
        paths.append(folder.absolute())
    key = tuple(str(p) for p in paths)
    if names:
        own = _cached_manager(key, False)
        if all(name in own.task_index for name in names):
            return own
    return _cached_manager(key, True)


@functools.lru_cache(maxsize=8)
def _cached_manager(paths: tuple[str, ...], include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=include_defaults)


@dataclass(frozen=True)
class Member:
    """A requested name: a task, or a group scored as one, and its leaf tasks."""

    name: str
    tasks: tuple[str, ...]
    kind: str  # "domain" or "general"
    suite: str | None  # the suite it came from; None when asked for by name


def leaf_tasks(manager: Any, name: str) -> tuple[str, ...]:
    """The tasks a name stands for (itself for a task; the members of a group or tag)."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    if entry is None:
        raise unknown_task(manager, name)
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        return (name,)
    if entry.kind == Kind.TAG:
        members = sorted(n for n, e in manager.task_index.items() if name in (e.tags or ()))
    else:
        children = (entry.cfg or {}).get("task", [])
        children = children if isinstance(children, list) else [children]
        members = [c["task"] if isinstance(c, dict) else c for c in children]
    leaves: list[str] = []
    for member in members:
        if isinstance(member, str) and member in manager.task_index:
            leaves += [t for t in leaf_tasks(manager, member) if t not in leaves]
    return tuple(leaves)


def unknown_task(manager: Any, name: str) -> MergemedError:
    """The error for a task name lm-eval does not know, with the closest known names."""
    close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return MergemedError(
        f"task {name!r}: not an lm-eval task, group or tag{hint} "
        "(add your own folder with --include)"
    )


def resolve_members(
    manager: Any, suites: Iterable[str] = (), tasks: Iterable[str] = ()
) -> list[Member]:
    """Expand ``--suite`` and ``--tasks`` into members, in order, without duplicates.

    A task named on its own counts as domain when it belongs to a domain suite (by member or
    task name), else as general.

    Raises:
        MergemedError: unknown suite or task.
    """
    members: list[Member] = []
    seen: set[str] = set()
    for suite in suites:
        if suite not in SUITES:
            raise MergemedError(
                f"--suite {suite}: unknown suite; expected one of {', '.join(SUITES)}"
            )
        kind = "domain" if suite in DOMAIN_SUITES else "general"
        for name, leaves in SUITES[suite].items():
            if name not in seen:
                seen.add(name)
                members.append(Member(name, leaves, kind, suite))
    domain_names = {
        n for s in DOMAIN_SUITES for m, leaves in SUITES[s].items() for n in (m, *leaves)
    }
    for name in tasks:
        if name in seen:
            continue
        seen.add(name)
        suite_leaves = next((SUITES[s][name] for s in SUITES if name in SUITES[s]), None)
        leaves = suite_leaves or leaf_tasks(manager, name)
        kind = "domain" if name in domain_names else "general"
        members.append(Member(name, leaves, kind, None))
    return members


def task_version(manager: Any, task: str) -> str:
    """A fingerprint of a task's definition: its declared version and the bytes of the files
    in its YAML's folder (the YAML, its includes and its ``utils.py``)."""
    entry = manager.task_index.get(task)
    if entry is None:
        raise unknown_task(manager, task)
    declared = ((entry.cfg or {}).get("metadata") or {}).get("version", "?")
    digest = hashlib.sha256()
    if entry.yaml_path is not None:
        folder = Path(entry.yaml_path).parent
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".yaml", ".yml", ".py", ".jinja", ".txt"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{declared}-{digest.hexdigest()[:12]}"


def data_dir() -> str | None:
    """``$MERGEMED_DATA_DIR``: where local copies of task data are looked for first."""
    value = os.environ.get("MERGEMED_DATA_DIR")
    return str(Path(value).expanduser().absolute()) if value else None
