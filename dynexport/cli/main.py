"""Entry point: the typer app, its commands, and the one place that turns dynexport's typed
errors into a one-line message and exit status 1."""

from __future__ import annotations

import logging
import sys

import typer

from dynexport import __version__
from dynexport.cli import (
    bench_command, bench_layer_command, build_command, clip_command, inspect_command, tune_command, verify_command,
)
from dynexport.cli import gate_command

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


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


app.command("build")(build_command.build)
app.command("tune")(tune_command.tune)
app.command("inspect")(inspect_command.inspect)
app.command("clip")(clip_command.clip)
app.command("verify")(verify_command.verify)
app.command("bench")(bench_command.bench)
app.command("bench-layer")(bench_layer_command.bench_layer)
app.command("gate")(gate_command.gate)


def main() -> None:
    from dynexport.errors import DynexportError

    try:
        app()
    except DynexportError as exc:
        typer.echo(f"dynexport: error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
