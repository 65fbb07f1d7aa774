"""``dynexport build``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dynexport.cli.options import AllowPickle, InputShape
from targets import BACKENDS, PLATFORMS, TARGETS  # plain declarations: importing them loads no backend library

# every platform some backend runs on
_RUNNABLE = [p for p in PLATFORMS if any(p in b.platforms for b in BACKENDS.values())]


def _parse_dense_fallback(value: str):
    """'auto', 'off' or a fraction in [0, 1), as compile_model takes it."""
    from dynexport.compiler.passes.dense_fallback import AUTO

    if value == AUTO:
        return AUTO
    if value == "off":
        return None
    try:
        fraction = float(value)
    except ValueError:
        fraction = None
    if fraction is None or not 0.0 <= fraction < 1.0:
        raise typer.BadParameter(f"expected auto, off or a fraction of blocks in [0, 1), got '{value}'")
    return fraction


def build(
    model: Annotated[Path, typer.Argument(help="model.pt (torch.save'd module) or model.pt2 (torch.export.save).",
                                          show_default=False)],
    target: Annotated[str, typer.Option("--target", help=f"Platform: {' or '.join(_RUNNABLE)}.")] = "android",
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help=f"Backend, one of: {', '.join(BACKENDS)}.", show_default="every default backend of the target")] = None,
    input_shape: InputShape = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path("out"),
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it is an earlier dynexport build (nothing else is ever deleted).")] = False,
    dense_cutoff: Annotated[Optional[float], typer.Option(
        "--dense-cutoff", help="Fraction of active blocks above which a gated layer runs densely.", show_default="0.5")] = None,
    dense_fallback: Annotated[str, typer.Option(
        "--dense-fallback", metavar="auto|off|FRACTION", callback=_parse_dense_fallback,
        help="For a moving camera: when the first gated layer computes more than this fraction of its blocks, run "
             "the rest of the network as one dense segment (every later gated layer then recomputes densely on the "
             "next frame). auto: 0.5 in a Skip-Conv model with two or more gated layers, off in any other; off: "
             "never. Verify and bench follow the plan.")] = "auto",
    dense_fallback_hold: Annotated[int, typer.Option(
        "--dense-fallback-hold", min=0, help="With --dense-fallback: this many frames after a busy one fall back "
                                             "too (a shaking camera calms for a frame or two, and leaving the "
                                             "fallback recomputes every layer densely).")] = 0,
    change_driven: Annotated[bool, typer.Option(
        "--change-driven/--no-change-driven",
        help="In a Skip-Conv model, gate the ungated convolutions (strided shortcuts, a head after an "
             "upsampling) at threshold 0: each recomputes only the blocks whose input changed, which gives "
             "exactly the dense result. 1x1 stride-1 convolutions and those reading the frame stay dense.")] = True,
    allow_pickle: AllowPickle = False,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", help="Compute precision of backends that offer one (coreml): fp32 or fp16; inputs and "
                            "outputs stay float32.", show_default="fp32")] = None,
    tune: Annotated[bool, typer.Option(
        "--tune", help="Then choose the dense cut-offs from measurement here, as 'dynexport tune OUT' does.")] = False,
) -> None:
    """Compile MODEL into a frame program, backend artifacts and runtime sources in OUT.

    Gates become explicit control flow in the plan (plan.dxfp) and static block-sparse
    segments in each backend's artifact (model.pte, model.tflite, model.mlpackage or model.onnxpack);
    manifest.json lists versions, shapes, state bytes, block grids and checksums. A failed
    build leaves OUT untouched; a backend whose converter refuses a segment is left out and
    named in the manifest while the others build.

    Each target builds its default backends ({defaults}) and, for android and ios, the app
    bundle: the Kotlin/JNI or Swift wrapper under OUT/runtime/ and OUT/INTEGRATION.md with the
    lines an app adds.

    Examples:

      dynexport build examples/skipconv_heatmap/model.pt -o out

      dynexport build examples/skipconv_heatmap/model.pt --target ios -o out-ios

      dynexport build model.pt --backend litert -o out-litert

      dynexport build model.pt --target host --input-shape 1x3x128x128 -o out --force

      dynexport build examples/skipconv_heatmap/model.pt -o out --tune

      dynexport build examples/mobilenet_deep/model.pt --target host -o deep --dense-fallback 0.25 --dense-fallback-hold 3

      dynexport build model.pt --target host -o out --dense-fallback off
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from dynexport.build import build as run_build

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("building", total=None)

        def show(message: str, done: int | None = None, total: int | None = None) -> None:
            # a step that counts its work fills the bar; any other step pulses it
            progress.update(task, description=f"building: {message}", total=total, completed=done or 0)

        result = run_build(model, output, target=target, backend=backend, input_shape=input_shape, force=force,
                           allow_pickle=allow_pickle, dense_cutoff=dense_cutoff, precision=precision, progress=show,
                           dense_fallback=dense_fallback, dense_fallback_hold=dense_fallback_hold,
                           change_driven=change_driven)
    manifest = result.manifest
    driven = manifest.get("reference", {}).get("change_driven", [])
    if driven:
        typer.echo(f"change-driven (threshold 0, exact): {', '.join(driven)}")
    fallback = manifest.get("plan", {}).get("dense_fallback")
    if fallback is not None:
        held = f", and the {fallback['hold']} frames after" if fallback["hold"] else ""
        typer.echo(f"dense fallback: above {fallback['count']} of the {fallback['blocks']} blocks of layer "
                   f"{fallback['layer']}{held} (--dense-fallback off: none)")
    typer.echo(
        f"built {result.out} in {result.seconds:.1f} s: {len(manifest['layers'])} gated layers, "
        f"{manifest['plan']['segments']} segments, state {manifest['state_bytes'] / 1024:.1f} KiB "
        f"({', '.join(manifest['backends'])})"
    )
    for name, reason in manifest.get("failed_backends", {}).items():
        typer.echo(f"warning: backend {name} was not built: {reason}", err=True)
    if tune:
        from dynexport.cli.tune_command import tune as run_tune

        run_tune(result.out)  # the command's defaults: 1 thread, 25 rounds


# the defaults as registered, so the help cannot drift from the registry
build.__doc__ = build.__doc__.replace(
    "{defaults}", "; ".join(f"{target}: {' + '.join(names)}" for target, names in TARGETS.items()))
