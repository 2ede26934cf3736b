"""The ``mergemed`` typer app: one thin command per verb (each in its own module), and the
entry point that gives every failure one line on stderr:

* bad input (a :class:`MergemedError`, or a command-line usage error): ``error: ...``, exit 2;
* Ctrl-C: ``interrupted: run the same command again to resume``, exit 130;
* anything else is a bug: ``error: internal error ...`` and how to see the traceback, exit 1.

Every line goes through :func:`mergemed.redact.redact`, so no token is ever printed. Of the N
workers of a ``mergemed train`` launched by ``torchrun`` or ``accelerate launch``, worker 0
says what went wrong; the others exit with the same status in silence, unless the failure is
their own (a bug: ``worker N: internal error ...``).
"""

from __future__ import annotations

import os
import signal
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
from mergemed.train.workers import launched_rank, launched_world_size, outlive_worker_zero

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
        # Worker 0 speaks for the run; another worker only when it knows worker 0 is gone.
        _quit(2, f"error: {one_line(str(error))}", every_worker=_reported_here(error))
    except click_exceptions.NoArgsIsHelpError as error:
        console.print(error.format_message(), markup=False, highlight=False)
        sys.exit(2)
    except click_exceptions.UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else "mergemed"
        _quit(2, f"error: {one_line(error.format_message())} (see `{command} --help`)")
    except click_exceptions.ClickException as error:
        _quit(error.exit_code, f"error: {one_line(error.format_message())}")
    except (KeyboardInterrupt, typer.Abort):
        status = INTERRUPTED
    except SystemExit as leaving:  # a verb that ends itself (validate's problems: exit 2)
        status = leaving.code
    except Exception as error:  # a bug: say so in one line; the traceback on request
        _hold_signals()
        if os.environ.get("MERGEMED_DEBUG"):
            console.print(redact(traceback.format_exc()), markup=False, highlight=False)
        rank = launched_rank()
        _quit(
            1,
            ("error: " if rank == 0 else f"error: worker {rank}: ")
            + one_line(f"internal error: {type(error).__name__}: {error}")
            + " (set MERGEMED_DEBUG=1 for the traceback)",
            every_worker=True,
        )
    if status == INTERRUPTED:
        # Leave at once: a library's exit hook interrupted mid-way (a progress thread, a
        # tokenizer pool) can turn a clean 130 into death by SIGINT during shutdown.
        _quit(INTERRUPTED, "[yellow]interrupted[/]: run the same command again to resume", now=True)
    code = status if isinstance(status, int) else 0 if status is None else 1
    if _ran_vllm():
        _leave_now(code)
    sys.exit(code)


def _ran_vllm() -> bool:
    """Whether a vLLM engine ran in this process: vLLM can abort the interpreter's shutdown
    (a C++ "terminate called", exit -6) after every output is written, so such a run leaves
    without finalizers. Read from ``sys.modules`` so that no command imports the backends
    (and torch) just to ask."""
    backends = sys.modules.get("mergemed.evaluation.backends")
    return backends is not None and backends.vllm_started()


def _leave_now(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _reported_here(error: MergemedError) -> bool:
    return bool(getattr(error, "reported_here", False))


def _hold_signals() -> None:
    """For a worker of a multi-worker run: ignore Ctrl-C and SIGTERM while the last line is
    printed, so that the launcher stopping every worker now adds no traceback to it."""
    if launched_world_size() > 1:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


def _quit(status: int, line: str | None, *, now: bool = False, every_worker: bool = False) -> None:
    """Print ``line`` (markup: only ``error:`` is styled) and exit with ``status``.

    Only worker 0 of a multi-worker run prints, unless ``every_worker``; the others, stopping
    on the error worker 0 reports, first wait for it to leave (the launcher stops every worker
    once one exits). A worker of such a run leaves without running exit hooks (``now``, as
    after Ctrl-C): tearing down a process group whose other workers are gone can abort the
    process with a C++ message.
    """
    _hold_signals()
    if launched_rank() == 0 or every_worker:
        if line.startswith("error: "):
            print_error(line.removeprefix("error: "))
        else:
            console.print(line)
    elif not now:
        outlive_worker_zero()
    if now or launched_world_size() > 1 or _ran_vllm():
        _leave_now(status)
    sys.exit(status)
