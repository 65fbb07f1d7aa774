"""``dynexport order-channels``: reorder a D-STEP model's output channels by how often they
compute on a calibration clip (an exact rewrite), so that the plan's channel groups idle, and
save the model that ``dynexport build`` takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from dynexport.cli.options import SYNTHETIC_PRESETS, AllowPickle, InputShape


def order_channels(
    model: Annotated[Path, typer.Argument(help="model.pt: a torch.save'd nn.Module with DStepConv2d layers.",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save the reordered model.")] = Path(
        "ordered.pt"),
    clip: Annotated[Optional[Path], typer.Option(
        "--clip", help="Calibration frames [T, C, H, W] as .npy: uint8 (scaled by 1/255) or float32.")] = None,
    synthetic: Annotated[Optional[str], typer.Option(
        "--synthetic", help=f"Calibrate on a generated clip instead: {SYNTHETIC_PRESETS}.")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", min=0, help="Seed of the --synthetic clip: use another seed than the clip you verify and bench "
                              "on, so the order is not fitted to it.")] = 1,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Use the first N frames of the clip.")] = None,
    input_shape: InputShape = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Reorder the output channels of every D-STEP layer of MODEL by how often they compute on
    a clip, so that the channels that compute together share a channel group of the plan and
    groups of channels that rarely compute are not run (the plan skips a group without a
    computing channel; it computes every channel of a group that has one).

    The rewrite is exact: the same permutation is applied to everything sized by the layer's
    channels (its weights, its channel policy's logits, the reuse state, BatchNorms, the next
    layers' input channels, residual adds), so the decisions are the original's up to the
    permutation and the output equals the original's up to float rounding; both are checked on
    the clip before the model is saved. Build the result at the clip's shape: the groups depend
    on it.

    Examples:

      dynexport order-channels model.pt --synthetic static_camera --input-shape 1x3x150x200 -o ordered.pt

      dynexport order-channels model.pt --clip calib.npy -o ordered.pt

      dynexport build ordered.pt --target host --input-shape 1x3x150x200 -o out && dynexport bench out
    """
    import numpy as np
    from rich.console import Console

    import dynexport
    from dynexport.cli.gate_command import _check_clip_shape, calibration_inputs
    from dynexport.gating.regroup_channels import order_dstep_channels
    from dynexport.harness.clips import load_clip, synthetic_clip

    loaded, shape, manifest = calibration_inputs(model, output, force, clip, synthetic, allow_pickle, input_shape,
                                                 "reordering changes nn.Module parameters")
    if clip is not None:
        _check_clip_shape(clip, shape)
    calibration = load_clip(clip, manifest, frames) if clip is not None else synthetic_clip(
        synthetic, manifest, frames, seed=seed)
    with Console(stderr=True).status(f"ordering D-STEP channels on {len(calibration.frames)} frames"):
        result = order_dstep_channels(loaded, calibration.frames, calibration.resets, inplace=True)
    dynexport.save_model(result.model, output, input_shape=shape)
    if as_json:
        typer.echo(json.dumps({"output": str(output), "frames": result.frames,
                               "max_relative_error": result.max_relative_error,
                               "layers": [layer.__dict__ for layer in result.layers]}))
        return
    _print_report(result, calibration.name, output, shape, np)


def _print_report(result, clip_name, output, shape, np) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dynexport order-channels: {len(result.layers)} D-STEP layers, {clip_name}, "
                        f"{result.frames} frames ({'x'.join(map(str, shape))})")
    for column in ("layer", "channels", "groups", "frames run", "computing", "run before", "run after"):  # per frame
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in result.layers:
        sizes = sorted({n for _, n in layer.groups})
        groups = f"{len(layer.groups)} x {sizes[0]}" if len(sizes) == 1 else " ".join(str(n) for _, n in layer.groups)
        table.add_row(layer.name, str(len(layer.order)), groups,
                      f"{layer.frames_run}", f"{layer.channels_computing:.1f}",
                      f"{layer.channels_run_before:.1f}", f"{layer.channels_run_after:.1f}")
    console = Console()
    console.print(table)
    console.print("computing: channels that compute, per frame the layer runs; run before / after: channels of the "
                  "groups the plan runs (a group runs when one of its channels computes)")
    console.print(f"output against the original on the clip: max error {result.max_relative_error:.1e} of its range; "
                  f"saved {output}: build it with 'dynexport build {output} -o out' at this input shape")
