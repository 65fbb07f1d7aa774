"""``dynexport verify``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from dynexport.cli.options import SYNTHETIC_PRESETS, AllowPickle, Backends, ClipFile, Device, OutDir


def verify(
    out: OutDir,
    clip: ClipFile = None,
    synthetic: Annotated[Optional[str], typer.Option(
        "--synthetic", help=f"A generated clip instead: {SYNTHETIC_PRESETS}.", show_default="mixed")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Use the first N frames.")] = None,
    backend: Backends = None,
    device: Device = "host",
    reset_at: Annotated[Optional[str], typer.Option(
        "--reset-at", help="Comma-separated frames where the stream restarts (scene cuts), e.g. 0,120.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Check OUT's artifacts against the PyTorch reference, frame by frame, via the native runtime.

    Streams the clip through the reference model saved in OUT and through each backend
    artifact run by the C runtime (dynrt), and reports per backend: max abs error, max error
    relative to the output's range (tolerance 1e-4, or within 2x of the dense export's own
    error on the same backend and device, measured when 1e-4 is exceeded), drift (last frame's error over the
    first's), and gate agreement block by block (blocks whose score is within the runtime's
    tie epsilon of the threshold take the reference's decision and are counted as ties).
    A backend that cannot run here (Core ML off macOS) gets its structural check only and
    is reported as "structural: pass; numerics: not run (needs macOS)", never as passed.

    Exit status: 0 every backend ran and passed; 1 a check failed; 3 nothing failed but some
    numerics did not run here (named on stderr; --backend chooses what to verify).

    Examples:

      dynexport verify out --synthetic static_camera --frames 60

      dynexport verify out --clip clip.npy --reset-at 0,120 --json

      dynexport verify out --device qemu-arm64 --frames 4
    """
    from rich.console import Console

    from dynexport.harness.verify import DENSE_BASELINE_FACTOR, DRIFT_LIMIT, EXIT_INCOMPLETE, RELATIVE_TOLERANCE
    from dynexport.harness.verify import verify as run_verify

    resets = _parse_frames(reset_at)
    console = Console(stderr=True)
    with console.status("verifying") as status:
        reports = run_verify(out, clip, synthetic, frames, backend, device, resets, allow_pickle,
                             progress=lambda message: status.update(f"verifying: {message}"))
    passed = all(r.passed for r in reports)
    failed = any(r.status == "fail" for r in reports)
    not_run = [r for r in reports if r.status == "not run"]
    result = "fail" if failed else "incomplete" if not_run else "pass"
    if as_json:
        typer.echo(json.dumps({"backends": {r.backend: r.as_json() for r in reports}, "passed": passed,
                               "result": result}))
    else:
        from rich.table import Table

        table = Table(title=f"dynexport verify {out} ({reports[0].frames} frames, device {device})")
        for column in ("backend", "max abs err", "max rel err", "drift", "gate agreement", "ties", "result"):
            table.add_column(column)
        for r in reports:
            verdict = {"pass": "pass", "fail": "FAIL", "not run": "not run"}[r.status]
            if r.not_run is not None:
                table.add_row(r.backend, "-", "-", "-", "-", "-", verdict)
                continue
            table.add_row(r.backend, f"{r.max_abs_err:.2e}", f"{r.max_rel_err:.2e}", f"{r.drift_ratio:.2f}",
                          f"{100 * r.gate_agreement:.3f} %", str(r.ties), verdict)
        Console().print(table)
        for r in reports:  # what ran, for every backend the table alone does not tell it for
            if r.structural is not None or r.not_run is not None:
                typer.echo(f"{r.backend}: {r.summary()}")
        for r in reports:
            for failure in r.failures:
                typer.echo(f"{r.backend}: {failure}", err=True)
            for note in r.notes:
                typer.echo(f"{r.backend}: {note}")
        for r in not_run:
            typer.echo(f"{r.backend}: numerics not run: {r.not_run}; this is not a pass", err=True)
        typer.echo(f"tolerances: rel err <= {RELATIVE_TOLERANCE:.0e} (or <= {DENSE_BASELINE_FACTOR:.0f}x the dense "
                   f"export's own error on the device), drift <= {DRIFT_LIMIT:.0f}x, every non-tie gate decision equal "
                   "(layers gated at threshold 0: their outputs only)")
    if failed:
        raise typer.Exit(1)
    if not_run:
        raise typer.Exit(EXIT_INCOMPLETE)


def _parse_frames(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated frame numbers, got {text!r}", param_hint="--reset-at")
