"""``dynexport bench-layer``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer



def bench_layer(
    fractions: Annotated[str, typer.Option(
        "--fractions", help="Comma-separated fractions of active blocks.")] = "0.06,0.12,0.25,0.5",
    frames: Annotated[int, typer.Option("--frames", min=2, help="Frames per clip.")] = 24,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Backend threads; 0: the backend's default.")] = 1,
    passes: Annotated[int, typer.Option("--passes", min=1, help="Timed passes over each clip (medians).")] = 5,
    backend: Annotated[Optional[list[str]], typer.Option(
        "--backend", help="Backend (repeatable); each is built with its own dense export.",
        show_default="host's default backends")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Micro benchmark: one gated 3x3 conv (64 ch, 56x56, 8x8 blocks) at fixed active fractions.

    The dynamic plan against the dense export, in bench's report format. Each clip changes the interiors of exactly K random blocks per frame, so exactly K of
    the 49 blocks are active.

    Examples:

      dynexport bench-layer

      dynexport bench-layer --fractions 0.25 --threads 0 --json

      dynexport bench-layer --backend executorch --backend litert
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dynexport.harness.layer_bench import layer_bench

    try:
        wanted = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated fractions, got {fractions!r}", param_hint="--fractions")
    if not wanted or any(not 0 < f <= 1 for f in wanted):
        raise typer.BadParameter("fractions must be in (0, 1]", param_hint="--fractions")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("bench-layer", total=None)
        rows = layer_bench(wanted, frames, threads, passes, backends=backend,
                           progress=lambda message: progress.update(task, description=f"bench-layer: {message}"))
    if as_json:
        typer.echo(json.dumps({"layer": "skip_conv 3x3 64->64 56x56 block 8",
                               "fractions": {str(row.fraction): {"active_blocks": row.active_blocks,
                                                                 "backends": {r.backend: r.as_json() for r in row.reports}}
                                             for row in rows}}))
        return
    from rich.table import Table

    table = Table(title=f"one gated 3x3 conv, 64 ch, 56x56, 8x8 blocks ({frames} frames x {passes} passes, "
                        f"threads {threads}; per-frame medians)")
    for column in ("active", "backend", "dense ms", "dynamic ms", "realized", "ideal", "realized/ideal",
                   "outside segments"):
        table.add_column(column, justify="right")
    for row in rows:
        for r in row.reports:
            table.add_row(f"{100 * row.fraction:.0f}% ({row.active_blocks}/49)", r.backend, f"{r.dense_ms:.3f}",
                          f"{r.dynamic_ms:.3f}", f"{r.realized_speedup:.2f}x", f"{r.ideal_speedup:.2f}x",
                          f"{r.realized_over_ideal:.2f}", f"{100 * r.overhead_share:.1f} %")
    Console().print(table)
