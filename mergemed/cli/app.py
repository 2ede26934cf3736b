"""The ``mergemed`` typer app: one thin command per verb (each in its own module), and the
entry point that turns every mergemed error into one line on stderr with exit status 2."""

from __future__ import annotations

import sys

import typer

from mergemed.cli import demo, evaluate, inspect_models, merge, methods, plan, train, validate
from mergemed.cli.render import console, print_error
from mergemed.errors import MergemedError

app = typer.Typer(
    name="mergemed",
    help="Adapt open LLMs to medicine by weight-space merging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(merge.merge)
app.command()(evaluate.evaluate)
app.add_typer(train.train_app, name="train")
app.command()(plan.plan)
app.command("inspect")(inspect_models.inspect_models)
app.command()(validate.validate)
app.command()(methods.methods)
app.command()(demo.demo)


def main() -> None:
    """Console-script entry point: run the app, turning mergemed errors into one line."""
    try:
        app()
    except MergemedError as error:
        print_error(" ".join(str(error).split()))  # always one line
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        sys.exit(130)
