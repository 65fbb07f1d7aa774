"""calibrate: choose the thresholds of a converted model's norm gates on a clip so that the
MACs it executes meet a budget, with as little output error against the ungated model as the
search finds.

Method (one shared knob, scaled per layer):

* The ungated reference is the same model with its state reset before every frame: the first
  frame after a reset computes every block, so this is the dense computation exactly.
* Per layer, a scale ``sigma_l`` puts thresholds in the units of the layer's *output*: the
  RMS over output channels of each channel's standard deviation on the reference run. A norm
  gate's score bounds the change of any output channel at a position (``output_norm``
  directly; ``input_norm`` after multiplying by the largest kernel norm), so the threshold
  ``tau_l = s * sigma_l`` (divided by the kernel norm for ``input_norm``) recomputes a block
  when its outputs may have moved by more than the fraction ``s`` of their typical spread.
* ``s`` is bracketed from 1 by factors of 4, then bisected geometrically (6 steps, about 2 %):
  the smallest ``s`` found whose executed MACs, over
  the frames after the first (which is always dense), are at most the budget. Executed MACs
  are the model's own accounting (``LayerFrameStats``: computed blocks plus the gates' own
  MACs), summed over gated layers and divided by their dense MACs.
* With ``refine``, a greedy pass then halves single layers' thresholds (largest layers first)
  where the budget still holds and the mean error falls.
* The error is ``|y - y_ref|`` over the range of ``y_ref`` on the clip: its maximum and mean
  over every frame and element, on the calibration frames and on held-apart frames; beside it
  the same measure for a model that never recomputes (the output's change over the clip).

Layers whose gate is not a norm gate (Gumbel, D-STEP) keep their thresholds; their MACs count.
The chosen thresholds are left set on ``model``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor, nn

from dynexport.errors import CalibrationError, FrameError
from dynexport.nn import SkipConv2d, gated_layers
from dynexport.nn.skip_conv import kernel_norm

NORM_GATES = ("input_norm", "output_norm")
SCALE_RANGE = (1e-4, 1e4)  # bounds of the shared relative threshold s
BRACKET_STEP = 4.0  # s is multiplied / divided by this until the budget is bracketed
BISECTION_STEPS = 6  # then the bracket [s, 4 s] shrinks to a factor 4 ** (1 / 64), about 2 %


@dataclasses.dataclass(frozen=True)
class LayerCalibration:
    name: str
    gate: str
    threshold: float
    active_fraction: float  # mean over the frames after the first
    executed_macs: float  # per frame, gate MACs included, mean over the frames after the first
    dense_macs: int
    gate_macs: float
    calibrated: bool  # False for gates calibrate does not set (Gumbel, D-STEP)


@dataclasses.dataclass(frozen=True)
class ClipResult:
    """One streamed clip at fixed thresholds."""

    frames: int
    mac_fraction: float  # executed / dense MACs of the gated layers, frames after the first
    model_mac_fraction: float  # the same over the whole model (ungated layers run dense)
    error_max: float  # relative to the reference output's range on this clip
    error_mean: float
    # the same error for a model that never recomputes (every frame gets the first frame's
    # output): how much the output changes over the clip at all, to read the error against
    change_max: float
    change_mean: float


@dataclasses.dataclass
class CalibrationReport:
    mac_budget: float
    relative_threshold: float  # the shared s
    layers: list[LayerCalibration]
    calibration: ClipResult
    holdout: ClipResult
    holdout_source: str  # "second half of the clip" or "holdout clip"
    streams: int  # clips streamed by the search
    method: str = ("a shared relative threshold, bracketed by factors of 4 then bisected geometrically, "
                   "scaled per layer by its output spread")
    refined: bool = False

    @property
    def thresholds(self) -> dict[str, float]:
        return {layer.name: layer.threshold for layer in self.layers}

    @property
    def mac_fraction(self) -> float:
        return self.calibration.mac_fraction

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def calibrate(model: nn.Module, clip, mac_budget: float = 0.3, holdout=None, refine: bool = False) -> CalibrationReport:
    """Set the thresholds of ``model``'s norm-gated layers (a model from ``dynexport.convert``)
    so that, on ``clip`` ([T, C, H, W] float32, tensor or array), the executed MACs of its gated
    layers are at most ``mac_budget`` of their dense MACs (frames after the first).

    ``holdout``: a second clip to report the error on; by default the clip's second half is
    held apart and the first half calibrates. Raises ``CalibrationError`` for a budget outside
    (0, 1], a model without norm gates, a budget the gates' own cost already exceeds, and
    ``FrameError`` for a clip of the wrong shape. ``refine``: then spend the budget's slack
    greedily (one more stream per layer). See the module docstring for the method.
    """
    if isinstance(mac_budget, bool) or not isinstance(mac_budget, (int, float)) or not 0.0 < mac_budget <= 1.0:
        raise CalibrationError(f"mac budget {mac_budget!r}: expected a fraction of the dense MACs in (0, 1], e.g. 0.3")
    mac_budget = float(mac_budget)
    layers = _norm_gated_layers(model)
    frames = _as_clip(clip, "clip", _input_channels(model))
    if holdout is None:
        if len(frames) < 4:
            raise FrameError(f"clip: {len(frames)} frames; calibration holds the second half apart and needs >= 4 "
                             "(or pass holdout=)")
        half = len(frames) // 2
        calibration_frames, holdout_frames, holdout_source = frames[:half], frames[half:], "second half of the clip"
    else:
        calibration_frames = frames
        holdout_frames = _as_clip(holdout, "holdout clip", _input_channels(model))
        holdout_source = "holdout clip"
        if len(calibration_frames) < 2:
            raise FrameError("clip: calibration needs >= 2 frames (the first frame is always dense)")
        if holdout_frames.shape[1:] != calibration_frames.shape[1:]:
            raise FrameError(f"holdout clip: frames {list(holdout_frames.shape[1:])}, the clip has "
                             f"{list(calibration_frames.shape[1:])}")

    model.eval()
    reference, spread, positions = _dense_run(model, calibration_frames, layers)
    floor = _gate_floor(layers, positions)
    if floor >= mac_budget:
        raise CalibrationError(
            f"mac budget {mac_budget}: the norm gates alone cost {floor:.3f} of the gated layers' dense MACs, "
            "so no threshold meets it (a norm gate costs as much as a depthwise convolution); raise the budget, "
            "or convert without such layers (convert(..., exclude=...), dynexport gate --no-depthwise)")
    units = {name: spread[name] / (float(kernel_norm(layer.weight.detach())) if layer.gate == "input_norm" else 1.0)
             for name, layer in layers}

    def set_scale(s: float) -> None:
        for name, layer in layers:
            layer.threshold = float(s * units[name])

    streams = 0
    total_macs = _model_macs(model, calibration_frames.shape[1:])

    def evaluate(s: float):
        nonlocal streams
        set_scale(s)
        streams += 1
        return _stream(model, calibration_frames, reference, total_macs)

    hi, run_hi = _search(evaluate, mac_budget)
    set_scale(hi)
    if refine:
        run_hi = _refine(layers, run_hi, mac_budget, lambda: _stream(model, calibration_frames, reference, total_macs))
        streams += len(layers)
    result, layer_stats = run_hi
    holdout_reference, _, _ = _dense_run(model, holdout_frames, [])
    holdout_result, _ = _stream(model, holdout_frames, holdout_reference, total_macs)
    per_layer = []
    for layer in gated_layers(model):
        name, module = layer
        stats = layer_stats[name]
        per_layer.append(LayerCalibration(
            name, getattr(module, "gate", type(module).__name__), float(getattr(module, "threshold", float("nan"))),
            stats["active_fraction"], stats["executed_macs"], stats["dense_macs"], stats["gate_macs"],
            name in units))
    return CalibrationReport(mac_budget, hi, per_layer, result, holdout_result, holdout_source, streams,
                             refined=refine)


# -- internals ----------------------------------------------------------------------------------
def _refine(layers, run, mac_budget: float, stream):
    """Greedy use of the slack the shared scale leaves under the budget: layer by layer, largest
    dense MACs first, halve its threshold and keep that when the budget still holds and the
    mean error falls. ``stream()`` runs the clip at the thresholds currently set."""
    order = sorted(layers, key=lambda item: -run[1][item[0]]["dense_macs"])
    for name, layer in order:
        before = layer.threshold
        layer.threshold = before / 2
        trial = stream()
        if trial[0].mac_fraction <= mac_budget and trial[0].error_mean < run[0].error_mean:
            run = trial
        else:
            layer.threshold = before
    return run


def _search(evaluate, mac_budget: float):
    """The smallest shared scale s found whose run meets the budget, and that run: bracket
    from s = 1 by factors of ``BRACKET_STEP``, then bisect geometrically. ``evaluate(s)``
    streams the clip and returns (ClipResult, per-layer stats)."""
    lo_cap, hi_cap = SCALE_RANGE
    s, run = 1.0, evaluate(1.0)
    if run[0].mac_fraction <= mac_budget:
        hi, run_hi = s, run
        while True:  # walk down until the budget is exceeded
            s /= BRACKET_STEP
            if s < lo_cap:
                return hi, run_hi
            run = evaluate(s)
            if run[0].mac_fraction > mac_budget:
                lo = s
                break
            hi, run_hi = s, run
    else:
        lo = s
        while True:  # walk up until the budget is met
            s *= BRACKET_STEP
            if s > hi_cap:
                raise CalibrationError(
                    f"mac budget {mac_budget}: at the largest relative threshold ({hi_cap:g}) the gated layers "
                    f"still execute {run[0].mac_fraction:.3f} of their dense MACs (gates that cannot be "
                    "calibrated, Gumbel or D-STEP, count too); raise the budget")
            run = evaluate(s)
            if run[0].mac_fraction <= mac_budget:
                hi, run_hi = s, run
                break
            lo = s
    for _ in range(BISECTION_STEPS):
        mid = math.sqrt(lo * hi)
        run = evaluate(mid)
        if run[0].mac_fraction <= mac_budget:
            hi, run_hi = mid, run
        else:
            lo = mid
    return hi, run_hi


def _norm_gated_layers(model: nn.Module) -> list[tuple[str, SkipConv2d]]:
    if not isinstance(model, nn.Module):
        raise CalibrationError(f"model: expected an nn.Module, got {type(model).__name__}")
    layers = [(name, m) for name, m in gated_layers(model) if isinstance(m, SkipConv2d) and m.gate in NORM_GATES]
    if not layers:
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        fix = ("convert it first: dynexport.convert(model).model" if has_conv else
               "it has no nn.Conv2d either: dynexport gates convolutional networks")
        raise CalibrationError(f"model {type(model).__name__} has no norm-gated layer to calibrate; {fix}")
    return layers


def _input_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def _as_clip(clip, what: str, channels: int | None) -> Tensor:
    if isinstance(clip, np.ndarray):
        if clip.dtype == np.uint8:
            raise FrameError(f"{what}: uint8 frames; pass float32 frames normalized as the model expects "
                             "(e.g. frames.astype(np.float32) / 255)")
        clip = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))
    if not isinstance(clip, Tensor):
        raise FrameError(f"{what}: expected a [T, C, H, W] tensor or array, got {type(clip).__name__}")
    if clip.dim() != 4:
        raise FrameError(f"{what}: expected frames [T, C, H, W], got shape {list(clip.shape)}")
    if channels is not None and clip.shape[1] != channels:
        raise FrameError(f"{what}: frames have {clip.shape[1]} channels, the model takes {channels} "
                         f"(got shape {list(clip.shape)}, expected [T, {channels}, H, W])")
    if clip.dtype != torch.float32:
        clip = clip.float()
    return clip


def _flat_output(output) -> Tensor:
    if isinstance(output, Tensor):
        return output.detach().reshape(-1)
    if isinstance(output, (tuple, list)):
        return torch.cat([_flat_output(o) for o in output])
    if isinstance(output, dict):
        return torch.cat([_flat_output(o) for o in output.values()])
    raise CalibrationError(f"model output: expected tensors, got {type(output).__name__}")


def _gate_floor(layers, positions: dict[str, int]) -> float:
    """Executed / dense MACs of the norm-gated layers when every block is skipped."""
    gate = sum(positions[name] * layer.gate_macs_per_position() for name, layer in layers)
    dense = sum(positions[name] * layer.macs_per_position() for name, layer in layers)
    return gate / dense


def _dense_run(model: nn.Module, frames: Tensor, layers):
    """Reference outputs [T, numel] with every block computed; each listed layer's output
    spread (RMS over channels of the per-channel standard deviation) and output positions."""
    from dynexport import streaming

    sums: dict[str, list[Tensor]] = {name: [] for name, _ in layers}
    positions: dict[str, int] = {}

    def record(name):
        def hook(module, args, out):
            sums[name].append(out.detach().transpose(0, 1).reshape(out.shape[1], -1).double())
            positions[name] = out.shape[0] * out.shape[-2] * out.shape[-1]
        return hook

    handles = [layer.register_forward_hook(record(name)) for name, layer in layers]
    outputs = []
    try:
        for frame in frames:
            streaming.reset(model)
            outputs.append(_flat_output(streaming.step(model, frame)))
    finally:
        for handle in handles:
            handle.remove()
        streaming.reset(model)
    spread = {}
    for name, chunks in sums.items():
        values = torch.cat(chunks, dim=1)
        spread[name] = float(values.var(dim=1, unbiased=False).mean().sqrt()) or 1e-12
    return torch.stack(outputs), spread, positions


def _model_macs(model: nn.Module, frame_shape) -> int:
    """Dense MACs of one frame of the whole model (torch's FLOP counter on its dense twin)."""
    from dynexport.harness.dense import dense_counterpart, model_macs

    return model_macs(dense_counterpart(model), (1, *frame_shape))


def _stream(model: nn.Module, frames: Tensor, reference: Tensor, total_macs: int):
    """Stream ``frames`` at the current thresholds: (ClipResult, per-layer stats). ``total_macs``:
    one dense frame of the whole model; what the gated layers do not cover runs dense."""
    from dynexport import streaming

    outputs, per_layer = [], {}
    executed = dense = 0.0
    for t, (output, stats) in enumerate(streaming.stream(model, frames, with_stats=True)):
        outputs.append(_flat_output(output))
        if t == 0:
            continue  # the first frame after a reset is dense by definition
        executed += stats.executed_macs
        dense += stats.dense_macs
        for layer in stats.layers:
            entry = per_layer.setdefault(layer.name, {"active_fraction": 0.0, "executed_macs": 0.0,
                                                      "dense_macs": layer.dense_macs, "gate_macs": 0.0})
            entry["active_fraction"] += layer.active_fraction
            entry["executed_macs"] += layer.executed_macs
            entry["gate_macs"] += layer.gate_macs
    steady = max(1, len(frames) - 1)
    for entry in per_layer.values():
        for key in ("active_fraction", "executed_macs", "gate_macs"):
            entry[key] /= steady
    streaming.reset(model)
    error = (torch.stack(outputs).double() - reference.double()).abs()
    value_range = float(reference.max() - reference.min()) or 1.0
    change = (reference.double() - reference[:1].double()).abs()
    other = max(0, total_macs * steady - dense)
    result = ClipResult(len(frames), executed / dense if dense else 1.0,
                        (executed + other) / (dense + other) if dense + other else 1.0,
                        float(error.max()) / value_range, float(error.mean()) / value_range,
                        float(change.max()) / value_range, float(change.mean()) / value_range)
    return result, per_layer
