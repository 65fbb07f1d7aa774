"""``dynexport bench``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from dynexport.cli.options import SYNTHETIC_PRESETS, AllowPickle, Backends, ClipFile, OutDir


def bench(
    out: OutDir,
    clip: ClipFile = None,
    synthetic: Annotated[Optional[str], typer.Option(
        "--synthetic", help=f"A generated clip instead: {SYNTHETIC_PRESETS}.", show_default="static_camera")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=2, help="Use the first N frames.")] = None,
    backend: Backends = None,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Backend threads per segment; 0: the backend's "
                                                                  "default pool.")] = 1,
    passes: Annotated[int, typer.Option("--passes", min=1, help="Timed passes over the clip (medians).")] = 5,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG of time and active fraction per frame.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", help="The model before pruning (the unpruned gated model file, or the plain network OUT was "
                           "converted from): time the original dense export, the original's dynamic plan, OUT's "
                           "dense export and OUT's plan side by side in one table.", show_default=False)] = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Measure the realized speedup of OUT's dynamic plan over the dense export of the same model.

    Builds the dense export (every gated layer replaced by its plain convolution), then runs
    both through the native runtime in one process, interleaved frame by frame, on the same
    clip, PASSES times after a warm-up pass. Reports per-frame medians: dense and dynamic
    time, realized speedup (dense / dynamic), two ideal speedups over the whole model:
    'ideal (as run)', dense MACs / the MACs the runtime executed (its stats count SkipConv
    gates, not D-STEP policies), and 'ideal (model)', dense MACs / the MACs the model's own
    decisions need as the PyTorch reference counts them, gate and policy MACs included
    (D-STEP: skipped and reused channels and skipped patches saved, which a plan running
    every channel does not realize; SkipConv: equal to as run, except where the runtime
    runs a layer dense above its cutoff or skips scoring a settled gate), realized / ideal
    against the model's ideal (against as run for a torch.export reference, model.pt2,
    which has no modules to count with), the MACs per frame needed and run, the share of the dynamic frame spent
    outside backend segments, the cost of an unchanged frame relative to a dense one,
    and the active fraction of blocks (frames after the first).

    With --baseline ORIGINAL (the model before pruning: gated or plain), one table instead says
    what pruning, gating and both buy, on the same clip: rows 'original, dense', 'original,
    gated' (if ORIGINAL has gated layers), 'pruned, dense' and 'pruned + gated' (named 'OUT, dense' and
    'OUT, gated' for a build without removed channels). Each row is timed interleaved frame by frame with the
    original dense export, so its speedup is a same-run ratio; MACs are per frame, gates
    included; 'realized / MAC reduction' is speedup over (original MACs / row MACs); the error
    is PyTorch's output against the original dense model's, over its range. Builds three
    extra exports (a minute or so each on a small model).

    Examples:

      dynexport bench out --synthetic static_camera --frames 48

      dynexport bench pruned-out --baseline gated.pt --frames 16

      dynexport bench out --threads 0 --json

      dynexport bench out --clip clip.npy --plot bench.png
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dynexport.harness.bench import bench as run_bench
    from dynexport.harness.bench import plot as write_plot

    if baseline is not None:
        if plot is not None:
            raise typer.BadParameter("--plot draws one build's dense and dynamic frames; leave it out with "
                                     "--baseline", param_hint="--plot")
        _compare(out, baseline, clip, synthetic, frames, backend, threads, passes, as_json, allow_pickle)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("bench", total=None)
        reports = run_bench(out, clip, synthetic, frames, backend, "host", threads, passes, allow_pickle,
                            progress=lambda message: progress.update(task, description=f"bench: {message}"))
    if plot is not None:
        write_plot(reports, plot)
    if as_json:
        typer.echo(json.dumps({"backends": {r.backend: r.as_json() for r in reports}}))
        return
    from rich.table import Table

    table = Table(title=f"dynexport bench {out}\n{reports[0].frames} frames x {reports[0].passes} passes, "
                        f"threads {reports[0].threads}, per-frame medians")
    table.add_column("")
    for r in reports:
        table.add_column(r.backend, justify="right")
    rows = {
        "dense export": lambda r: f"{r.dense_ms:.3f} ms",
        "dynamic plan": lambda r: f"{r.dynamic_ms:.3f} ms",
        "realized speedup": lambda r: f"{r.realized_speedup:.2f}x",
        "ideal (model)": lambda r: "n/a (.pt2)" if r.ideal_model is None else f"{r.ideal_model:.2f}x",
        "ideal (as run)": lambda r: f"{r.ideal_as_run:.2f}x",
        f"realized / ideal ({reports[0].ideal_basis})": lambda r: f"{r.realized_over_ideal:.2f}",
        "MACs needed / run": lambda r: ("n/a" if r.needed_macs is None else f"{r.needed_macs / 1e6:.1f} M")
                                       + f" / {r.executed_macs / 1e6:.1f} M",
        "outside segments": lambda r: f"{100 * r.overhead_share:.1f} % of the frame",
        "unchanged frame": lambda r: f"{100 * r.unchanged_frame_ratio:.1f} % of dense",
        "active blocks": lambda r: f"{100 * r.active_fraction:.1f} %",
    }
    for label, cell in rows.items():
        table.add_row(label, *(cell(r) for r in reports))
    Console().print(table)
    for r in reports:
        layers = ", ".join(f"{name} {100 * f:.0f}%" for name, f in r.layer_active_fraction.items())
        typer.echo(f"{r.backend} active fraction per layer: {layers}")
    removed = _pruned_without_baseline(out)
    if removed:
        typer.echo(f"{out} was pruned ({removed} channels removed): both columns above are the pruned model; add "
                   f"--baseline ORIGINAL.pt to time the unpruned one beside it")


def _pruned_without_baseline(out: Path) -> int:
    """Removed channels recorded in OUT's manifest (0 if none or unreadable)."""
    try:
        structured = json.loads((out / "manifest.json").read_text()).get("pruning", {}).get("structured", {})
    except (OSError, ValueError):
        return 0
    return structured.get("removed_channels", 0) if isinstance(structured, dict) else 0


def _compare(out, baseline, clip, synthetic, frames, backend, threads, passes, as_json, allow_pickle) -> None:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from dynexport.harness.compare import compare

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("bench", total=None)
        comparisons = compare(out, baseline, clip, synthetic, frames, backend, "host", threads, passes, allow_pickle,
                              progress=lambda message: progress.update(task, description=f"bench: {message}"))
    if as_json:
        typer.echo(json.dumps({"comparison": {c.backend: c.as_json() for c in comparisons}}))
        return
    for c in comparisons:
        table = Table(title=f"dynexport bench {out} --baseline {baseline}\n{c.backend}, {c.clip}, {c.frames} frames "
                            f"x {c.passes} passes, threads {c.threads}, per-frame medians")
        for column in ("", "ms", "speedup", "MACs", "MACs / orig.", "realized / MAC red.", "error max / mean"):
            table.add_column(column, justify="left" if not column else "right")
        for r in c.rows:
            error = "-" if r.error_max is None else f"{r.error_max:.1e} / {r.error_mean:.1e}"
            table.add_row(r.label, f"{r.ms:.2f}", f"{r.speedup:.2f}x", f"{r.macs / 1e6:.1f} M", f"{r.mac_ratio:.3f}",
                          f"{r.realized_over_mac_reduction:.2f}", error)
        Console(width=max(Console().width, 120)).print(table)  # 7 columns: wrapped cells are unreadable
        for r in c.rows:
            typer.echo(f"  {r.label}: {r.what}")
        for note in c.notes:
            typer.echo(f"note: {note}")
