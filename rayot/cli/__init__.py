"""The `rayot` command line: a thin Typer layer over the library.

Each command group lives in its own module; heavy imports (torch, ray) happen inside the
commands so that `rayot --help` stays fast.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from rayot import __version__
from rayot.cli import data, methods, report, sweep, train
from rayot.errors import RayotError

app = typer.Typer(
    name="rayot",
    help="Prompt-learning methods for CLIP over the CLIP prompt-learning benchmark, on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("sweep")(sweep.sweep)
app.command("report")(report.report)
app.command("methods")(methods.methods_command)

err_console = Console(stderr=True)


class _QuietThirdParty(logging.Filter):
    """Drop the info chatter of open_clip (it logs through the root logger) unless --verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "open_clip" not in record.pathname


class _StderrHandler(logging.StreamHandler):
    """A plain handler that writes to ``sys.stderr`` as it is at each record, like Rich's console:
    a handler bound to the stream of its creation would write to a closed one once a test runner
    (typer's CliRunner) has swapped it back."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rayot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
    else:
        # A CI log, a pipe, a file: Rich would wrap each message to 80 columns less its time and
        # level, folding a long path or a trial id mid-word. One plain line per record instead.
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%X"))
    if not verbose:
        handler.addFilter(_QuietThirdParty())
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[handler],
        force=True,
    )


def main() -> None:
    """Console-script entry point: bad input becomes one message and exit status 2, Ctrl-C 130."""
    try:
        app()
    except RayotError as exc:
        # the message as written: "[low, high]" or "rayot[optuna]" is text, not Rich markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted: results written so far are kept; run the same command "
                          "again to go on from there", highlight=False)
        sys.exit(130)
