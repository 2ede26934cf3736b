"""Suites and task names: what ``--suite medical`` means, and finding lm-eval tasks by name.

mergemed's tasks are ordinary lm-eval task YAMLs in the ``evaluations/`` folder; lm-eval's
``TaskManager(include_path=...)`` indexes them beside its own (ours take precedence on equal
names) and beside any folders the user adds. A suite is a list of *members*, each a task or a
group of tasks scored as one (see :mod:`mergemed.evaluation.scores`).

Everything here is read from the task YAMLs' ``metadata: mergemed:`` blocks, declared once:

- a group with ``suite: domain``, ``suite: general`` or ``suite: perplexity`` is a suite; its
  entries are members (perplexity members are reported each on its own, never averaged with
  accuracies);
- a task's ``member: NAME`` scores it within member NAME (the MMLU medical subjects), else a
  task is its own member, named without mergemed's ``mm_`` prefix;
- a member's tasks are averaged weighted by their sizes when its group's
  ``aggregate_metric_list`` says ``weight_by_size: true`` (as lm-eval weights MMLU), or its
  tasks say ``weight_by_size: true`` in their ``mergemed:`` block; else unweighted;
- flags: ``needs_punkt`` (IFEval's checkers), ``long_context`` (lengths checked against the
  model first), ``hub_only`` (data from the Hub unless a local copy is given; implied by a
  ``hub_path`` in ``dataset_kwargs``). A suite group's ``tasks:`` gives the flags of lm-eval's
  own tasks it lists, and may give a member another ``kind`` than the suite's.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError


def evaluations_dir() -> Path:
    """The folder of mergemed's lm-eval task YAMLs: ``mergemed/evaluations``, shipped in the
    package (the repository's top-level ``evaluations/`` links to it)."""
    folder = Path(__file__).resolve().parents[1] / "evaluations"
    if not folder.is_dir():
        raise MergemedError(f"{folder}: mergemed's task folder is missing; reinstall mergemed")
    return folder


def task_manager(
    extra_paths: Sequence[str | Path] = (),
    names: Sequence[str] | None = (),
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """An lm-eval ``TaskManager`` that knows mergemed's tasks, the user's folders (later
    folders win on equal names) and, unless ``names`` says otherwise, lm-eval's own.

    Indexing lm-eval's own tasks takes seconds, so when every name in ``names`` is one of
    mergemed's or the user's, the manager skips lm-eval's built-in tasks (``names=None``:
    always skip them); one manager per set of folders and metadata is kept for the life of
    the process. ``metadata`` is handed to every task (and so to mergemed's data loaders).

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
    meta = json.dumps(dict(metadata or {}), sort_keys=True, default=str)
    if names is None or names:
        own = _cached_manager(key, False, meta)
        if names is None or all(_known_throughout(own, name) for name in names):
            return own
    return _cached_manager(key, True, meta)


def _known_throughout(manager: Any, name: str) -> bool:
    """Whether a name and, for a group, every task it lists are in the manager's index
    (mergemed's ``mmlu_general`` lists lm-eval's own MMLU subjects)."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    if entry is None:
        return False
    if entry.kind != Kind.GROUP:
        return True
    children = (entry.cfg or {}).get("task", [])
    children = children if isinstance(children, list) else [children]
    named = [c["task"] if isinstance(c, dict) else c for c in children]
    return all(_known_throughout(manager, c) for c in named if isinstance(c, str))


@functools.lru_cache(maxsize=8)
def _cached_manager(paths: tuple[str, ...], include_defaults: bool, metadata: str) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=list(paths),
        include_defaults=include_defaults,
        metadata=json.loads(metadata) or None,
    )


FLAGS = ("hub_only", "needs_punkt", "long_context")
KINDS = ("domain", "general", "perplexity")


@dataclass(frozen=True)
class Member:
    """A requested name: a task, or a group scored as one, and its leaf tasks."""

    name: str
    tasks: tuple[str, ...]
    kind: str  # "domain", "general" or "perplexity"
    suite: str | None  # the suite it came from; None when asked for by name
    flags: frozenset[str] = frozenset()
    """Flags the suite declares for the member as a whole (lm-eval's own tasks)."""
    baseline: str | None = None
    """A task on the same documents that each of the member's tasks is scored against (its
    group's ``mergemed: baseline``): the member reports the drop from it."""
    weight_by_size: bool = False
    """Average the member's tasks weighted by their document counts (lm-eval's MMLU)."""


@dataclass(frozen=True)
class Suite:
    """A suite group: its kind and its members (name -> the task or group names in it)."""

    name: str
    kind: str
    members: Mapping[str, tuple[str, ...]]
    flags: Mapping[str, frozenset[str]]
    baselines: Mapping[str, str] = field(default_factory=dict)
    weighted: frozenset[str] = frozenset()
    """Members averaged by size (see :attr:`Member.weight_by_size`)."""
    kinds: Mapping[str, str] = field(default_factory=dict)
    """Members of another kind than the suite's (a ``kind: perplexity`` task in ``forgetting``)."""

    def kind_of(self, member: str) -> str:
        """The member's kind: its own ``kind``, else the suite's."""
        return self.kinds.get(member, self.kind)


def _mergemed_metadata(entry: Any) -> dict[str, Any]:
    block = ((entry.cfg or {}).get("metadata") or {}).get("mergemed") if entry else None
    return block if isinstance(block, dict) else {}


def suites(manager: Any) -> dict[str, Suite]:
    """The suites declared in the indexed task folders, by group name."""
    found: dict[str, Suite] = {}
    for name, entry in manager.task_index.items():
        block = _mergemed_metadata(entry)
        kind = block.get("suite")
        if kind not in KINDS:
            continue
        children = (entry.cfg or {}).get("task", [])
        children = children if isinstance(children, list) else [children]
        members: dict[str, tuple[str, ...]] = {}
        flags: dict[str, frozenset[str]] = {}
        baselines: dict[str, str] = {}
        weighted: set[str] = set()
        kinds: dict[str, str] = {}
        declared = block.get("tasks") or {}
        for child in children:
            task = child["task"] if isinstance(child, dict) else child
            if not isinstance(task, str):
                continue
            child_block = _mergemed_metadata(manager.task_index.get(task))
            member = child_block.get("member") or task.removeprefix("mm_")
            members[member] = (*members.get(member, ()), task)
            own = {**child_block, **(declared.get(task) or {})}
            flags[member] = frozenset(f for f in FLAGS if own.get(f))
            if own.get("kind") in KINDS and own["kind"] != kind:
                kinds[member] = own["kind"]
            if isinstance(child_block.get("baseline"), str):
                baselines[member] = child_block["baseline"]
            if weight_by_size(manager, task):
                weighted.add(member)
        found[name] = Suite(name, kind, members, flags, baselines, frozenset(weighted), kinds)
    return found


def weight_by_size(manager: Any, name: str) -> bool:
    """Whether a task or group's tasks are averaged by size: its ``mergemed:`` block's
    ``weight_by_size``, else its group ``aggregate_metric_list``'s first entry."""
    entry = manager.task_index.get(name)
    block = _mergemed_metadata(entry)
    if "weight_by_size" in block:
        return bool(block["weight_by_size"])
    aggregates = ((entry.cfg or {}).get("aggregate_metric_list") or []) if entry else []
    if isinstance(aggregates, dict):
        aggregates = [aggregates]
    first = aggregates[0] if aggregates and isinstance(aggregates[0], dict) else {}
    return bool(first.get("weight_by_size", False))


def task_flags(manager: Any, task: str, member: Member | None = None) -> frozenset[str]:
    """The flags of one leaf task: its YAML's, its member's, and ``hub_only`` when its data
    names a Hub dataset."""
    entry = manager.task_index.get(task)
    block = _mergemed_metadata(entry)
    flags = {f for f in FLAGS if block.get(f)}
    if ((entry.cfg or {}).get("dataset_kwargs") or {}).get("hub_path") if entry else False:
        flags.add("hub_only")
    return frozenset(flags | (member.flags if member is not None else frozenset()))


def sample_group(manager: Any, task: str) -> str:
    """The name a task's ``--limit`` sample is drawn under: its ``mergemed: sample_group``
    (tasks sharing one ask the same documents), else the task's own name."""
    group = _mergemed_metadata(manager.task_index.get(task)).get("sample_group")
    return group if isinstance(group, str) else task


def local_data_name(manager: Any, task: str) -> str | None:
    """The folder name a task's local data takes under ``--data-dir``, for tasks whose loader
    reads one (mergemed's); None for tasks that cannot use local data (lm-eval's own)."""
    entry = manager.task_index.get(task)
    kwargs = ((entry.cfg or {}).get("dataset_kwargs") or {}) if entry else {}
    return kwargs.get("local_name") if isinstance(kwargs.get("local_name"), str) else None


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
    manager: Any,
    suite_names: Iterable[str] = (),
    tasks: Iterable[str] = (),
    declared: Mapping[str, Suite] | None = None,
) -> list[Member]:
    """Expand ``--suite`` and ``--tasks`` into members, in order, without duplicates.

    A task named on its own counts as domain when it belongs to a domain suite (by member or
    task name), else as general. ``declared``: the suites (default: those ``manager`` indexes).

    Raises:
        MergemedError: unknown suite or task.
    """
    table = dict(declared if declared is not None else suites(manager))
    members: list[Member] = []
    seen: set[str] = set()
    for suite_name in suite_names:
        if suite_name not in table:
            raise MergemedError(
                f"--suite {suite_name}: unknown suite; expected one of {', '.join(table)}"
            )
        suite = table[suite_name]
        for name, leaves in suite.members.items():
            if name not in seen:
                seen.add(name)
                baseline = suite.baselines.get(name)
                members.append(
                    Member(
                        name,
                        leaves,
                        suite.kind_of(name),
                        suite_name,
                        suite.flags[name],
                        baseline,
                        name in suite.weighted,
                    )
                )
    domain_names = {
        n
        for s in table.values()
        if s.kind == "domain"
        for m, leaves in s.members.items()
        for n in (m, *leaves)
    }
    for name in tasks:
        if name in seen:
            continue
        seen.add(name)
        suite = next((s for s in table.values() if name in s.members), None)
        leaves = suite.members[name] if suite is not None else leaf_tasks(manager, name)
        flags = suite.flags[name] if suite is not None else frozenset()
        baseline = suite.baselines.get(name) if suite is not None else None
        if baseline is None:
            baseline = _mergemed_metadata(manager.task_index.get(name)).get("baseline")
        own_kind = _mergemed_metadata(manager.task_index.get(name)).get("kind")
        if suite is not None:
            kind, weighted = suite.kind_of(name), name in suite.weighted
        elif own_kind in KINDS:
            kind, weighted = own_kind, weight_by_size(manager, name)
        else:
            kind = "domain" if name in domain_names else "general"
            weighted = weight_by_size(manager, name)
        members.append(Member(name, leaves, kind, None, flags, baseline, weighted))
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
