"""``dynexport gate``: convert a trained model's convolutions to norm-gated layers, calibrate
their thresholds to a MAC budget on a clip, and save a model that ``dynexport build`` takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from dynexport.cli.options import SYNTHETIC_PRESETS, AllowPickle, InputShape

# clips given as uint8 are scaled like the build's default normalization (dynexport build's input_scale)
UINT8_SCALE = 1.0 / 255.0


def gate(
    model: Annotated[Path, typer.Argument(help="model.pt: a torch.save'd nn.Module with nn.Conv2d layers.",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save the gated model.")] = Path("gated.pt"),
    clip: Annotated[Optional[Path], typer.Option(
        "--clip", help="Calibration frames [T, C, H, W] as .npy: uint8 (scaled by 1/255) or float32.")] = None,
    synthetic: Annotated[Optional[str], typer.Option(
        "--synthetic", help=f"Calibrate on a generated clip instead: {SYNTHETIC_PRESETS}.")] = None,
    holdout: Annotated[Optional[Path], typer.Option(
        "--holdout", help="A second .npy clip to report the error on [default: the clip's second half].")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=2, help="Use the first N frames of the clip.")] = None,
    mac_budget: Annotated[float, typer.Option(
        "--mac-budget", help="Executed MACs of the gated layers (gates included) over their dense MACs, in (0, 1].")] = 0.3,
    gate_kind: Annotated[str, typer.Option("--gate", help="Norm gate: input_norm or output_norm.")] = "input_norm",
    block: Annotated[int, typer.Option("--block", min=1, help="Block edge in output positions.")] = 8,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", help="Module path pattern (fnmatch, repeatable) of convolutions to leave ungated.")] = None,
    no_depthwise: Annotated[bool, typer.Option(
        "--no-depthwise", help="Leave depthwise convolutions ungated (their norm gate costs as much as they do).")] = False,
    refine: Annotated[bool, typer.Option(
        "--refine", help="Then spend the budget's slack greedily, one layer at a time (one clip stream per layer).")] = False,
    input_shape: InputShape = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Gate MODEL without retraining: convert its nn.Conv2d layers to SkipConv2d with a norm
    gate (same weights), calibrate per-layer thresholds so that the executed MACs meet the
    budget on a clip, report the error against the ungated model on the clip and on held-apart
    frames, and save the result (dynexport.save_model) for 'dynexport build'.

    Examples:

      dynexport gate model.pt --clip calib.npy --mac-budget 0.3 -o gated.pt

      dynexport gate model.pt --synthetic static_camera --input-shape 1x3x128x128 -o gated.pt

      dynexport gate model.pt --clip calib.npy --holdout other.npy --gate output_norm --block 4 --no-depthwise --refine

      dynexport build gated.pt -o out && dynexport verify out --synthetic static_camera
    """
    import numpy as np
    import torch
    from rich.console import Console

    import dynexport
    from dynexport.harness.clips import load_clip, synthetic_clip

    loaded, shape, manifest = calibration_inputs(model, output, force, clip, synthetic, allow_pickle, input_shape,
                                                 "gating converts nn.Module layers")
    for path in (clip, holdout):
        if path is not None:
            _check_clip_shape(path, shape)
    calibration = (load_clip(clip, manifest, frames) if clip is not None
                   else synthetic_clip(synthetic, manifest, frames)).frames
    held = load_clip(holdout, manifest).frames if holdout is not None else None

    excluded = list(exclude or [])
    if no_depthwise:
        excluded.append(lambda path, conv: conv.groups > 1 and conv.groups == conv.in_channels)
    console = Console(stderr=True)
    with console.status("converting"):
        conversion = dynexport.convert(loaded, gate=gate_kind, block=block, exclude=excluded or None, inplace=True,
                                       input_shape=shape)
    with console.status(f"calibrating {len(conversion.converted)} gated layers on {len(calibration)} frames"):
        report = dynexport.calibrate(conversion.model, torch.from_numpy(np.ascontiguousarray(calibration)),
                                     mac_budget, None if held is None else torch.from_numpy(held), refine=refine)
    dynexport.save_model(conversion.model, output, input_shape=shape)
    if as_json:
        typer.echo(json.dumps({"report": report.as_json(), "skipped": [s.__dict__ for s in conversion.skipped],
                               "output": str(output)}))
        return
    _print_report(report, conversion, output, shape)


def calibration_inputs(model, output, force: bool, clip, synthetic, allow_pickle: bool, input_shape,
                       why_a_module: str):
    """What a command that rewrites a model from calibration frames checks first: the output
    may be written, exactly one frame source is given, the model file holds an nn.Module
    (``why_a_module`` says why a torch.export program will not do). Returns the module, the
    input shape and the manifest the clip readers normalize with (uint8 / 255)."""
    import torch

    import dynexport
    from dynexport.errors import ConversionError, FrameError

    if output.exists() and not force:
        raise ConversionError(f"output '{output}' exists; pass --force to replace it")
    if (clip is None) == (synthetic is None):
        raise FrameError("give the calibration frames with --clip FILE.npy or --synthetic PRESET (one of them)")
    loaded = dynexport.load_model(model, allow_pickle=allow_pickle)
    if not isinstance(loaded, torch.nn.Module):
        raise ConversionError(f"model file '{model}' is a torch.export program; {why_a_module}: "
                              "pass the torch.save'd module instead")
    shape = _input_shape(input_shape, loaded, clip)
    return loaded, shape, {"input": {"shape": list(shape), "normalization": {"scale": UINT8_SCALE, "offset": 0.0}}}


def _input_shape(text, model, clip) -> tuple[int, ...]:
    from dynexport.compiler.frontend import parse_input_shape
    from dynexport.errors import FrameError

    if text:
        return tuple(parse_input_shape(text))
    recorded = getattr(model, "dynexport_input_shape", None)
    if recorded:
        return tuple(recorded)
    if clip is not None:
        found = _read_shape(clip)
        if len(found) == 4:
            return (1, *found[1:])
        raise FrameError(f"clip '{clip}': expected frames [T, C, H, W], got shape {list(found)}")
    raise FrameError("the model file records no input shape and --synthetic needs one: pass --input-shape 1x3xHxW")


def _read_shape(path) -> tuple[int, ...]:
    import numpy as np

    from dynexport.errors import FrameError

    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except FileNotFoundError:
        raise FrameError(f"clip '{path}': no such file") from None
    except (OSError, ValueError) as exc:
        raise FrameError(f"clip '{path}': not a readable .npy array ({exc})") from None


def _check_clip_shape(path, shape) -> None:
    from dynexport.errors import FrameError

    found = _read_shape(path)
    if len(found) != 4 or tuple(found[1:]) != tuple(shape[1:]):
        raise FrameError(f"clip '{path}': expected frames [T, {', '.join(map(str, shape[1:]))}] (the model's input "
                         f"shape {'x'.join(map(str, shape))}), got {list(found)}; pass --input-shape to match the clip")


def _print_report(report, conversion, output, shape) -> None:
    from rich.console import Console
    from rich.table import Table

    kinds = {layer.path: layer for layer in conversion.converted}
    table = Table(title=f"dynexport gate: {len(report.layers)} gated layers, budget {report.mac_budget:.2f} of dense MACs "
                        f"({'x'.join(map(str, shape))})")
    for column in ("layer", "kind", "grid", "gate", "threshold", "active", "MACs / frame", "of dense"):
        table.add_column(column, justify="left" if column in ("layer", "kind", "gate") else "right")
    for layer in report.layers:
        converted = kinds.get(layer.name)
        grid = converted.grid if converted is not None else None
        table.add_row(layer.name, converted.kind if converted else "(given)",
                      f"{grid.blocks[0]}x{grid.blocks[1]}" if grid else "", layer.gate, f"{layer.threshold:.4g}",
                      f"{100 * layer.active_fraction:.1f} %", f"{layer.executed_macs / 1e6:.3f} M",
                      f"{100 * layer.executed_macs / max(layer.dense_macs, 1):.1f} %")
    console = Console()
    console.print(table)
    for skipped in conversion.skipped:
        console.print(f"left ungated: {skipped.path}: {skipped.reason}")
    c, h = report.calibration, report.holdout
    console.print(f"relative threshold {report.relative_threshold:.4g} ({report.streams} clips streamed; "
                  f"{report.method}{'; refined greedily' if report.refined else ''})")
    for label, r in ((f"calibration ({c.frames} frames)", c),
                     (f"held apart ({report.holdout_source}, {h.frames} frames)", h)):
        console.print(f"{label}: MACs {100 * r.mac_fraction:.1f} % of the gated layers' dense MACs "
                      f"({100 * r.model_mac_fraction:.1f} % of the whole model's), error max {r.error_max:.2e} "
                      f"mean {r.error_mean:.2e} of the output range (never recomputing: max {r.change_max:.2e} "
                      f"mean {r.change_mean:.2e})")
    console.print(f"saved {output}: build it with 'dynexport build {output} -o out'")
