"""``mergemed methods``: the registered merge methods and their parameters."""

from __future__ import annotations

from mergemed.cli.render import methods_table, stdout


def methods() -> None:
    """List the merge methods and their parameters."""
    from mergemed.methods import available_methods, get_spec

    stdout.print(methods_table([get_spec(name) for name in available_methods()]))
    stdout.print("* required")
