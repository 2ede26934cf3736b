"""The ``mergemed`` typer app: one thin command per verb (each in its own module), and the
entry point that gives every failure one line on stderr:

* bad input (a :class:`MergemedError`, or a command-line usage error): ``error: ...``, exit 2;
* Ctrl-C: ``interrupted: run the same command again to resume``, exit 130;
* anything else is a bug: ``error: internal error ...`` and how to see the traceback, exit 1.

Every line goes through :func:`mergemed.redact.redact`, so no token is ever printed.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from mergemed.cli import (
    card,
    demo,
    evaluate,
    grid,
    import_checkpoint,
    inspect_models,
    merge,
    methods,
    plan,
    publish,
    train,
    validate,
)
from mergemed.cli.render import console, print_error
from mergemed.errors import MergemedError
from mergemed.redact import redact

try:  # typer >= 0.20 carries its own copy of click; older versions use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""

app = typer.Typer(
    name="mergemed",
    help="Adapt open LLMs to medicine by weight-space merging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from mergemed import __version__

        typer.echo(f"mergemed {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Adapt open LLMs to medicine by weight-space merging."""


app.command()(merge.merge)
app.command()(evaluate.evaluate)
app.add_typer(train.train_app, name="train")
app.add_typer(grid.grid_app, name="grid")
app.add_typer(import_checkpoint.import_app, name="import")
app.command()(plan.plan)
app.command("inspect")(inspect_models.inspect_models)
app.command()(validate.validate)
app.command()(methods.methods)
app.command()(demo.demo)
app.command()(card.card)
app.command()(publish.publish)


def one_line(text: str) -> str:
    """``text`` folded to one line, secrets masked."""
    return redact(" ".join(str(text).split()))


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: run the app; every failure ends as one line on stderr."""
    try:
        status = app(args=args, standalone_mode=False)
    except MergemedError as error:
        print_error(one_line(str(error)))
        sys.exit(2)
    except click_exceptions.NoArgsIsHelpError as error:
        console.print(error.format_message(), markup=False, highlight=False)
        sys.exit(2)
    except click_exceptions.UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else "mergemed"
        print_error(f"{one_line(error.format_message())} (see `{command} --help`)")
        sys.exit(2)
    except click_exceptions.ClickException as error:
        print_error(one_line(error.format_message()))
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        status = INTERRUPTED
    except Exception as error:  # a bug: say so in one line; the traceback on request
        if os.environ.get("MERGEMED_DEBUG"):
            console.print(redact(traceback.format_exc()), markup=False, highlight=False)
        print_error(
            one_line(f"internal error: {type(error).__name__}: {error}")
            + " (set MERGEMED_DEBUG=1 for the traceback)"
        )
        sys.exit(1)
    if status == INTERRUPTED:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        # Leave at once: a library's exit hook interrupted mid-way (a progress thread, a
        # tokenizer pool) can turn a clean 130 into death by SIGINT during shutdown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    sys.exit(status if isinstance(status, int) else 0)
