"""``dynexport verify``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from dynexport.cli.options import SYNTHETIC_PRESETS, AllowPickle, Backends, ClipFile, OutDir


def verify(
    out: OutDir,
    clip: ClipFile = None,
    synthetic: Annotated[Optional[str], typer.Option(
        "--synthetic", help=f"A generated clip instead: {SYNTHETIC_PRESETS}.", show_default="mixed")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Use the first N frames.")] = None,
    backend: Backends = None,
    device: Annotated[str, typer.Option(
        "--device", help="Where the native runtime runs: host, qemu-arm64 (ARM64 under emulation: use few, "
                         "small frames) or adb (a connected Android device).")] = "host",
    reset_at: Annotated[Optional[str], typer.Option(
        "--reset-at", help="Comma-separated frames where the stream restarts (scene cuts), e.g. 0,120.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Check OUT's artifacts against the PyTorch reference, frame by frame, via the native runtime.

    Streams the clip through the reference model saved in OUT and through each backend
    artifact run by the C runtime (dynrt), and reports per backend: max abs error, max error
    relative to the output's range (tolerance 1e-4), drift (last frame's error over the
    first's), and gate agreement block by block (blocks whose score is within the runtime's
    tie epsilon of the threshold take the reference's decision and are counted as ties).
    Exit status 0 only when every backend passes.

    Examples:

      dynexport verify out --synthetic static_camera --frames 60

      dynexport verify out --clip clip.npy --reset-at 0,120 --json

      dynexport verify out --device qemu-arm64 --frames 4
    """
    from rich.console import Console

    from dynexport.harness.verify import DRIFT_LIMIT, RELATIVE_TOLERANCE
    from dynexport.harness.verify import verify as run_verify

    resets = _parse_frames(reset_at)
    console = Console(stderr=True)
    with console.status("verifying") as status:
        reports = run_verify(out, clip, synthetic, frames, backend, device, resets, allow_pickle,
                             progress=lambda message: status.update(f"verifying: {message}"))
    passed = all(r.passed for r in reports)
    if as_json:
        typer.echo(json.dumps({"backends": {r.backend: r.as_json() for r in reports}, "passed": passed}))
    else:
        from rich.table import Table

        table = Table(title=f"dynexport verify {out} ({reports[0].frames} frames, device {device})")
        for column in ("backend", "max abs err", "max rel err", "drift", "gate agreement", "ties", "result"):
            table.add_column(column)
        for r in reports:
            table.add_row(r.backend, f"{r.max_abs_err:.2e}", f"{r.max_rel_err:.2e}", f"{r.drift_ratio:.2f}",
                          f"{100 * r.gate_agreement:.3f} %", str(r.ties), "pass" if r.passed else "FAIL")
        Console().print(table)
        for r in reports:
            for failure in r.failures:
                typer.echo(f"{r.backend}: {failure}", err=True)
        typer.echo(f"tolerances: rel err <= {RELATIVE_TOLERANCE:.0e}, drift <= {DRIFT_LIMIT:.0f}x, "
                   "every non-tie gate decision equal")
    if not passed:
        raise typer.Exit(1)


def _parse_frames(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated frame numbers, got {text!r}", param_hint="--reset-at")
