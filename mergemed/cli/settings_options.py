"""Command-line options made from pydantic settings: one flag per field, its ``description``
the help text, so a setting is declared once (in the settings model) and the CLI follows."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel


def flag_of(model: type[BaseModel], name: str) -> str:
    """The flag of a field: ``json_schema_extra["flag"]``, else ``--`` + the dashed name."""
    extra = model.model_fields[name].json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("flag"), str):
        return extra["flag"]
    return "--" + name.replace("_", "-")


def option_parameters(*models: type[BaseModel]) -> list[inspect.Parameter]:
    """Keyword parameters, one per (non-nested) field of ``models``, for a typer command.

    Booleans become ``--x/--no-x`` flags, tuples repeatable options, everything else a text
    option that pydantic parses (so a bad value gets the settings' own one-line error); an
    option left out is not passed, so the settings' defaults hold.
    """
    parameters = []
    for model in models:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue  # nested settings contribute their own fields
            help_text = info.description or ""
            default = info.get_default(call_default_factory=True)
            if annotation is bool:
                kind: Any = bool
                cli_default: Any = default
            elif typing.get_origin(annotation) is tuple:
                kind, cli_default = list[str] | None, None
            else:
                kind, cli_default = str | None, None
                if default not in (None, {}, ()):
                    help_text += f" (default: {default})"
            option = typer.Option(flag_of(model, name), help=help_text, metavar=metavar(annotation))
            parameters.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=cli_default,
                    annotation=Annotated[kind, option],
                )
            )
    return parameters


def metavar(annotation: Any) -> str:
    """What an option takes, for ``--help``: ``auto|on|off``, ``INT|auto``, ``PATH``..."""
    names = {int: "INT", float: "NUMBER", str: "TEXT", bool: "", dict: "KEY=VALUE,..."}
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [metavar(a) for a in typing.get_args(annotation) if a is not type(None)]
        return "|".join(p for p in parts if p)
    if typing.get_origin(annotation) in (tuple, dict):
        inner = typing.get_args(annotation)
        return metavar(inner[0]) if typing.get_origin(annotation) is tuple else names[dict]
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "PATH"
    return names.get(annotation, "TEXT")


def with_options(command: Callable[..., Any], *models: type[BaseModel]) -> Callable[..., Any]:
    """``command`` with the options of ``models`` added to its signature; it receives them
    in ``**options`` (only those given on the command line)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    added = option_parameters(*models)
    defaults = {p.name: p.default for p in added}

    def run(**arguments: Any) -> Any:
        options = {
            name: value
            for name, value in arguments.items()
            if name in defaults and value is not None and value != defaults[name]
        }
        given = {name: value for name, value in arguments.items() if name not in defaults}
        return command(**given, **options)

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    run.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
    run.__module__ = command.__module__
    return run
