"""The ``mergemed`` command line: :mod:`.app` builds the typer app and turns every failure into
one line; each verb lives in a module of its own; :mod:`.render` holds the rich output."""

from mergemed.cli.app import main

__all__ = ["main"]
