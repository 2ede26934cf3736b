"""YAML files validated by pydantic, with errors that name the file, the line and the key.

Recipes and training configs both load through :func:`load_validated`: parse the YAML keeping
each key's line, validate with a pydantic model, and turn every problem into
``file:line: key.path: what was expected``. The raised error states the first problem on one
line and carries all of them in ``.problems``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from mergemed.errors import MergemedError

Model = TypeVar("Model", bound=BaseModel)


class Located:
    """Maps key paths of a YAML document to line numbers."""

    def __init__(self, node: yaml.Node | None):
        self.lines: dict[tuple[Any, ...], int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)  # a key's own line wins
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
        data: Any = source
        located = Located(None)
    else:
        path = Path(source) if not (isinstance(source, str) and "\n" in source) else None
        if path is not None:
            name = str(path)
            if not path.is_file():
                raise error(f"{path}: {what} file not found")
            text = path.read_text(encoding="utf-8")
        else:
            text = str(source)
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as problem:
            mark = getattr(problem, "problem_mark", None)
            where = f"{name}:{mark.line + 1}" if mark else name
            reason = getattr(problem, "problem", None) or str(problem).splitlines()[0]
            raise error(f"{where}: not valid YAML: {reason}") from None
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
