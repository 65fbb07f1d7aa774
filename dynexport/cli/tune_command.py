"""``dynexport tune``, and the table ``build --tune`` prints too."""

from __future__ import annotations

import json
import os
from typing import Annotated, Optional

import typer

from dynexport.cli.options import Device, OutDir

# tile times shown in the table: these fractions of the tile segment's max batch (all in --json)
SHOWN_BATCH_FRACTIONS = (0.0, 0.25, 0.5, 1.0)


def tune(
    out: OutDir,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Timed rounds per layer (medians).")] = 25,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Backend threads while timing.")] = 1,
    device: Device = "host",
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="Backend whose segments are timed.", show_default="the build's first")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Measure and show the choice; write nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Choose each gated layer's dense cut-off from measurement on this machine.

    For every gated layer with both a tile and a dense segment, times the tile segment of the
    backend artifact at each batch K (1..its max batch) and the dense segment, through the
    native runtime on --device (medians over --rounds after warm-up, --threads threads), and sets the
    layer's cut-off to the largest K up to which the tile path (tile segment + gathering K
    tiles) is cheaper than the dense segment at every count. The plan (plan.dxfp) gets the new
    cut-offs, the manifest the measured table ("tuning") and the plan's new checksum; each
    file is replaced atomically. OUT is verified against its manifest first.

    Tune on the device class you ship to: the table is only true for the CPU it was measured on.

    Examples:

      dynexport build examples/skipconv_heatmap/model.pt -o out && dynexport tune out

      dynexport tune out --dry-run --json

      dynexport tune out --device qemu-arm64 --rounds 5
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dynexport.harness.tune import tune as run_tune

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("tune: verify the folder", total=None)
        report = run_tune(out, threads=threads, rounds=rounds, write=not dry_run, device=device, backend=backend,
                          progress=lambda what, done, total: progress.update(
                              task, description=f"tune: {what}", completed=done, total=total))
    if as_json:
        typer.echo(json.dumps(report.as_json()))
        return
    print_report(report)


def print_report(report) -> None:
    """The per-layer table of a TuneReport, and what was written."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dense cut-off from measurement ({report.threads} thread(s), median of {report.rounds} "
                        f"rounds; tile path = tile segment + gathering the tiles)")
    for column in ("layer", "blocks", "old cut-off", "new cut-off", "tile path ms at K", "dense ms"):
        table.add_column(column, justify="left" if column in ("layer", "tile path ms at K") else "right")
    for layer in report.layers:
        costs = layer.tile_path_ms()
        shown = sorted({max(1, round(f * layer.max_batch)) for f in SHOWN_BATCH_FRACTIONS})
        table.add_row(layer.name, str(layer.blocks), str(layer.old_cutoff), str(layer.new_cutoff),
                      "  ".join(f"K={k}: {costs[k - 1]:.3f}" for k in shown), f"{layer.dense_ms:.3f}")
    console = Console()
    console.print(table)
    if report.noisy:
        worst = max(layer.spread for layer in report.layers)
        console.print(f"[yellow]warning:[/] the timed rounds typically disagreed by {100 * worst:.0f}% of their median "
                      f"(load average {report.load_average:.1f} on {os.cpu_count()} CPUs): the machine was busy and "
                      f"the cut-offs may be off; re-run 'dynexport tune' on a quiet machine.")
    if report.written:
        console.print(f"wrote the new cut-offs to {report.folder} (plan.dxfp; table in manifest.json \"tuning\")")
    else:
        console.print("dry run: nothing written")
