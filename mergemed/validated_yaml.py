"""YAML files validated by pydantic, with errors that name the file, the line and the key.

Recipes and training configs both load through :func:`load_validated`: parse the YAML keeping
each key's line, validate with a pydantic model, and turn every problem into
``file:line: key.path: what was expected``. The raised error states the first problem on one
line and carries all of them in ``.problems``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from mergemed.errors import MergemedError

Model = TypeVar("Model", bound=BaseModel)

MAX_EXPANDED_NODES = 50_000
"""How many YAML nodes a document may expand to once its aliases are followed. A recipe of a
few hundred slices is far below it; nine nested anchors ("billion laughs") expand to 10^9."""


class _AnchorNamingLoader(yaml.SafeLoader):
    """PyYAML's safe loader, keeping the name of every anchor for messages."""

    anchor_names: dict[int, str]

    def compose_document(self) -> yaml.Node:
        # PyYAML's compose_document, except that the anchors are kept by node before they are
        # dropped, so that an alias problem can name its anchor.
        self.get_event()
        node = self.compose_node(None, None)
        self.get_event()
        self.anchor_names = {id(n): anchor for anchor, n in self.anchors.items()}
        self.anchors = {}
        return node


def decode_utf8(raw: bytes, name: str, error: type[MergemedError]) -> str:
    """``raw`` as UTF-8 text, or ``error`` naming the file and the offset of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as problem:
        byte = raw[problem.start]
        raise error(
            f"{name}: not UTF-8 text: byte 0x{byte:02x} at offset {problem.start}"
        ) from None


def _check_graph(
    node: yaml.Node, names: dict[int, str], source: str, error: type[MergemedError]
) -> None:
    """Refuse recursive aliases, aliases that expand past the budget, and duplicate keys."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def anchor_of(item: yaml.Node) -> str:
        return names.get(id(item), "?")

    def size(item: yaml.Node) -> int:
        key = id(item)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            line = item.start_mark.line + 1
            raise error(f"{source}:{line}: anchor &{anchor_of(item)} refers to itself")
        on_path.add(key)
        total = 1
        if isinstance(item, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in item.value:
                if (
                    isinstance(key_node, yaml.ScalarNode)
                    and key_node.tag != "tag:yaml.org,2002:merge"
                ):
                    line = key_node.start_mark.line + 1
                    if key_node.value in seen:
                        raise error(
                            f"{source}:{line}: duplicate key {key_node.value!r} (first on line "
                            f"{seen[key_node.value]}); each key may appear once"
                        )
                    seen[key_node.value] = line
                total += size(key_node) + size(value_node)
        elif isinstance(item, yaml.SequenceNode):
            total += sum(size(child) for child in item.value)
        on_path.discard(key)
        if total > MAX_EXPANDED_NODES:
            culprit = item if key in names else None
            where = f"anchor &{anchor_of(culprit)}" if culprit is not None else "this document"
            raise error(
                f"{source}:{item.start_mark.line + 1}: {where} expands to more than "
                f"{MAX_EXPANDED_NODES:,} YAML nodes once its aliases are followed; refusing it"
            )
        sizes[key] = total
        return total

    size(node)


def parse_yaml(text: str, name: str, error: type[MergemedError]) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document safely: the data and its node tree (for line numbers).

    Beyond PyYAML's ``safe_load``: a duplicate key, a recursive alias, or aliases that expand
    past :data:`MAX_EXPANDED_NODES` nodes are refused with ``error`` naming the line (and the
    anchor), before anything is built from them.
    """
    loader = None
    try:
        loader = _AnchorNamingLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_graph(node, loader.anchor_names, name, error)
        return loader.construct_document(node), node
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        reason = getattr(problem, "problem", None) or str(problem).splitlines()[0]
        raise error(f"{where}: not valid YAML: {reason}") from None
    finally:
        if loader is not None:
            loader.dispose()


class Located:
    """Maps key paths of a YAML document to line numbers."""

    def __init__(self, node: yaml.Node | None):
        self.lines: dict[tuple[Any, ...], int] = {}
        self._walked: set[int] = set()
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)  # a key's own line wins
        if id(node) in self._walked:
            return  # an alias: its keys were located where the anchor stands
        self._walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                self._walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def line(self, path: tuple[Any, ...]) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def format_path(path: tuple[Any, ...]) -> str:
    """``("models", 1, "parameters", "weight")`` -> ``models[1].parameters.weight``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


class Problems:
    """Collects ``file:line: key: message`` lines; raises them as one error."""

    def __init__(self, source: str, located: Located, error: type[MergemedError]):
        self.source = source
        self.located = located
        self.error = error
        self.lines: list[str] = []

    def add(self, path: tuple[Any, ...], message: str) -> None:
        line = self.located.line(path)
        where = f"{self.source}:{line}" if line else self.source
        self.lines.append(f"{where}: {format_path(path)}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise self.error(*dict.fromkeys(self.lines))


def _clean_loc(loc: tuple[Any, ...], located: Located) -> tuple[Any, ...]:
    """Drop pydantic's union-member tags from an error location, keeping real keys."""
    path: tuple[Any, ...] = ()
    for part in loc:
        candidate = (*path, part)
        if candidate in located.lines or isinstance(part, int):
            path = candidate
        elif isinstance(part, str) and part[:1].isalpha() and "[" not in part and part.islower():
            # A key absent from the YAML (a missing field) still belongs in the path.
            if not any(c in part for c in "-[]"):
                path = candidate
    return path


def _pydantic_message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = error["msg"]
    if "input" in error:
        shown = repr(error["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        message = f"{message}, got {shown}"
    return message


def _most_specific(lines: list[str]) -> list[str]:
    by_key: dict[str, str] = {}
    for line in lines:
        key = line.rsplit(": ", 1)[0]
        by_key.setdefault(key, line)
    return list(by_key.values())


def load_validated(
    source: str | Path | dict[str, Any],
    model: type[Model],
    *,
    what: str,
    error: type[MergemedError],
    before: Callable[[dict[str, Any], Problems], None] | None = None,
    after: Callable[[Model, Problems], None] | None = None,
) -> Model:
    """Load ``source`` (a YAML file, a YAML string or a dict) as ``model``.

    Args:
        what: the kind of file, for messages (``recipe``, ``training config``).
        error: the error type raised.
        before: extra checks on the raw mapping, before pydantic.
        after: extra checks on the validated object.

    Raises:
        ``error``: the file is missing or not YAML, or any check fails.
    """
    name = what
    if isinstance(source, dict):
        data: Any = copy.deepcopy(source)  # checks may normalise it; the caller's stays as it is
        located = Located(None)
    else:
        path = Path(source) if not (isinstance(source, str) and "\n" in source) else None
        if path is not None:
            name = str(path)
            if not path.is_file():
                raise error(f"{path}: {what} file not found")
            try:
                raw = path.read_bytes()
            except OSError as problem:
                raise error(f"{path}: cannot read the {what}: {problem.strerror}") from None
            text = decode_utf8(raw, name, error)
        else:
            text = str(source)
        data, node = parse_yaml(text, name, error)
        located = Located(node)
    if not isinstance(data, dict):
        raise error(f"{name}: expected a mapping of {what} keys, got {type(data).__name__}")

    problems = Problems(name, located, error)
    if before is not None:
        before(data, problems)
        problems.raise_if_any()
    try:
        loaded = model.model_validate(data)
    except PydanticValidationError as failure:
        for item in failure.errors():
            problems.add(_clean_loc(tuple(item["loc"]), located), _pydantic_message(item))
        # A union error repeats once per member; keep the most specific message per key.
        problems.lines = _most_specific(problems.lines)
        problems.raise_if_any()
        raise  # pragma: no cover
    if after is not None:
        after(loaded, problems)
        problems.raise_if_any()
    return loaded
