"""Entry point: the typer app, its commands, and the one place that turns every error into a
one-line message and exit status 1: dynexport's typed errors as they are, anything else
(an OSError, MemoryError, a bug) with the file and the problem and a pointer to ``--debug``,
which shows the traceback instead. SIGTERM unwinds like Ctrl-C, so every temporary folder
(OUT.building-*, lowering and dense-export folders) is removed on the way out. Library
warnings (torch's deprecations and export notes) are silenced: nothing a user can act on."""

from __future__ import annotations

import logging
import signal
import sys
import warnings

import typer

from dynexport import __version__
from dynexport.cli import (
    bench_command, bench_layer_command, build_command, clip_command, inspect_command, tune_command, verify_command,
)
from dynexport.cli import gate_command, order_channels_command

app = typer.Typer(
    name="dynexport",
    help=(
        "Deployment compiler for dynamic video networks: makes the savings of gated layers "
        "(Skip-Convolutions, D-STEP, pruning) real on phones.\n\n"
        "Typical use:\n\n"
        "  dynexport build --target android model.pt -o out   # artifacts + C runtime\n\n"
        "  dynexport tune out                                 # dense cut-offs measured here\n\n"
        "  dynexport verify out --clip clip.npy               # numerics vs PyTorch\n\n"
        "  dynexport bench out                                # realized speedup vs dense"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dynexport {__version__}")
        raise typer.Exit()


# Library loggers that warn about their own internals on import (torchao's optional CUDA
# kernels, torch's pytree deprecations): nothing a dynexport user can act on.
_QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


DEBUG_FLAG = "--debug"


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, DEBUG_FLAG, help="Show the Python traceback of an error, and library warnings."),
) -> None:
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not debug:
        warnings.simplefilter("ignore")


app.command("build")(build_command.build)
app.command("tune")(tune_command.tune)
app.command("inspect")(inspect_command.inspect)
app.command("clip")(clip_command.clip)
app.command("verify")(verify_command.verify)
app.command("bench")(bench_command.bench)
app.command("bench-layer")(bench_layer_command.bench_layer)
app.command("gate")(gate_command.gate)
app.command("order-channels")(order_channels_command.order_channels)


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread: cleanup runs as for Ctrl-C; exit status 143."""


def _terminate(signum, frame) -> None:
    raise Terminated(128 + signum)


def describe(exc: BaseException) -> str:
    """One line for an error that is not a DynexportError: the file and the problem."""
    if isinstance(exc, OSError):
        where = f"'{exc.filename}': " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "out of memory (is an input, --size or --input-shape much larger than meant?)"
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"unexpected {type(exc).__name__}{f': {text}' if text else ''} (a dynexport bug: rerun with --debug " \
           f"for the traceback and report it)"


def main() -> None:
    from dynexport.errors import DynexportError

    # anywhere on the command line, as `dynexport --debug build ...` or `dynexport build ... --debug`
    debug = DEBUG_FLAG in sys.argv[1:]
    if debug:
        sys.argv = [sys.argv[0], DEBUG_FLAG, *(a for a in sys.argv[1:] if a != DEBUG_FLAG)]
    else:
        warnings.simplefilter("ignore")  # before the commands import torch
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except DynexportError as exc:
        if debug:
            raise
        typer.echo(f"dynexport: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("dynexport: interrupted", err=True)
        sys.exit(130)
    except Terminated:
        typer.echo("dynexport: terminated", err=True)
        raise
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"dynexport: error: {describe(exc)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
