"""Frame-by-frame execution of a model with gated layers: the PyTorch reference that every
compiled artifact is checked against.

Batches are independent streams: each of the N items has its own state and gate decisions.
The batch size and resolution are fixed from the first frame after a reset; changing them
needs ``reset``. ``step`` is transactional: a frame that is rejected anywhere in the model
(wrong shape, dtype, NaN/Inf) leaves every layer's state as it was.

A ``.pt2`` program streams as ``dynexport.nn.ExportedModel(program)`` (``stream`` wraps one
itself); it takes frames of the one shape it was exported at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from dynexport.errors import FrameError
from dynexport.nn import ExportedGate, ExportedModel, GatedLayer, LayerFrameStats, gated_layers


@dataclasses.dataclass(frozen=True)
class FrameStats:
    """Per-frame statistics of all gated layers. MACs count gated layers only."""

    layers: tuple[LayerFrameStats, ...]

    @property
    def executed_macs(self) -> int:
        return sum(layer.executed_macs for layer in self.layers)

    @property
    def dense_macs(self) -> int:
        return sum(layer.dense_macs for layer in self.layers)

    @property
    def active_fraction(self) -> dict[str, float]:
        return {layer.name: layer.active_fraction for layer in self.layers}


def _named_gated_layers(model: nn.Module) -> list[GatedLayer | ExportedGate]:
    layers = []
    for name, layer in gated_layers(model):
        layer.stream_name = name or type(layer).__name__
        layers.append(layer)
    return layers


def reset(model: nn.Module) -> None:
    """Start a new stream (scene cut, new clip): the next frame is computed densely."""
    for layer in _named_gated_layers(model):
        layer.reset_state()
    if hasattr(model, HOLD_ATTRIBUTE):
        setattr(model, HOLD_ATTRIBUTE, 0)


def frame_stats(model: nn.Module) -> FrameStats:
    """Statistics of the last frame the model ran (empty before the first frame)."""
    return FrameStats(tuple(layer.last_stats for layer in _named_gated_layers(model) if layer.last_stats))


def _as_frame(frame, expected_channels: int | None) -> Tensor:
    if isinstance(frame, np.ndarray):
        frame = torch.from_numpy(frame)
    if not isinstance(frame, Tensor):
        raise FrameError(f"model input: expected a torch.Tensor or numpy array frame, got {type(frame).__name__}")
    if frame.dim() == 3:
        frame = frame.unsqueeze(0)
    if frame.dim() != 4:
        raise FrameError(f"model input: expected a frame [C, H, W] or [N, C, H, W], got shape {tuple(frame.shape)}")
    if frame.dtype != torch.float32:
        hint = " (convert with frame.float() / 255)" if frame.dtype == torch.uint8 else ""
        raise FrameError(f"model input: expected float32 frames, got {frame.dtype}{hint}")
    if expected_channels is not None and frame.shape[1] != expected_channels:
        raise FrameError(
            f"model input: expected {expected_channels} channels, got shape {tuple(frame.shape)}"
        )
    if not bool(torch.isfinite(frame).all()):
        raise FrameError("model input: frame contains NaN or Inf; it was rejected and no state changed")
    return frame


def _check_exported_shape(model: nn.Module, frame: Tensor) -> None:
    expected = model.input_shape if isinstance(model, ExportedModel) else None
    if expected is not None and tuple(frame.shape) != expected:
        raise FrameError(f"model input: the exported program takes frames of shape {'x'.join(map(str, expected))}, "
                         f"got {'x'.join(map(str, frame.shape))}; export it again at that shape with dynexport.export")


def _input_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def fallback_count(fraction: float, blocks: int) -> int:
    """Active blocks of the first gated layer above which a frame falls back to dense (the
    dense cut-off's rounding; the compiler's add_dense_fallback uses this very count)."""
    return max(0, min(blocks, math.floor(fraction * blocks)))


@dataclasses.dataclass(frozen=True)
class DenseFallback:
    """When a frame falls back to dense: the first gated layer to run computes more than
    ``fraction`` of its blocks (or more than ``count`` blocks, a plan's own number), or one of
    the ``hold`` frames before it did so (a shaking camera calms for a frame or two: leaving the
    fallback costs a dense frame of every layer, which holding it saves).

    ``hold_skips_gate`` (plans 2.4 on): a held frame computes the first gated layer densely
    too, without scoring it (as on its first frame: it stores the whole input as its
    reference), so it is a dense frame through and through, and the hold counts down without
    looking at the frame. False is a 2.3 plan's hold: the first layer scores as on any frame,
    and a busy held frame starts the hold again."""

    fraction: float | None = None
    hold: int = 0
    count: int | None = None
    hold_skips_gate: bool = True

    def __post_init__(self):
        if self.count is None and (self.fraction is None or not 0.0 <= self.fraction < 1.0):
            raise ValueError(f"dense fallback: fraction must be in [0, 1), got {self.fraction}")
        if self.hold < 0:
            raise ValueError(f"dense fallback: hold must be >= 0 frames, got {self.hold}")

    def busy_above(self, blocks: int) -> int:
        return self.count if self.count is not None else fallback_count(self.fraction, blocks)


HOLD_ATTRIBUTE = "_dynexport_fallback_hold"  # on the model: frames that still fall back after a busy one


@contextlib.contextmanager
def _dense_fallback(model: nn.Module, layers: list, fallback: DenseFallback):
    """The dense fallback's semantics, for one frame: once the first gated layer to run has
    computed more than ``fallback.busy_above(blocks)`` blocks, or is within ``fallback.hold``
    frames of a frame that did, every other gated layer is unprimed before it runs (it computes
    densely: all blocks) and again after the frame (its state is not kept: the next frame
    computes it densely too). A held frame with ``hold_skips_gate`` unprimes the first layer
    too, before the frame: it computes all of its blocks and keeps them as its state."""
    from dynexport.nn import SkipConv2d

    if not all(isinstance(layer, SkipConv2d) for layer in layers):
        raise FrameError("dense fallback: every gated layer must be a SkipConv2d (a D-STEP layer is not dense when "
                         "unprimed, and a .pt2 program's gates cannot be unprimed)")
    fell_back, handles = [], []
    held = getattr(model, HOLD_ATTRIBUTE, 0)
    skips_gate = held > 0 and fallback.hold_skips_gate
    if skips_gate:  # whichever layer runs first computes all of its blocks, unscored
        for layer in layers:
            layer.unprime()

    def after_first_layer(layer, inputs, output):
        for handle in handles:
            handle.remove()
        handles.clear()
        mask = layer.last_decisions
        if mask.shape[0] != 1:
            raise FrameError(f"dense fallback: streams of batch 1 only, got a batch of {mask.shape[0]}")
        busy = not skips_gate and int(mask.sum()) > fallback.busy_above(mask.shape[1])
        if busy or held > 0:
            fell_back.append((layer, fallback.hold if busy else held - 1))
            for other in layers:
                if other is not layer:
                    other.unprime()

    handles.extend(layer.register_forward_hook(after_first_layer) for layer in layers)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if fell_back:
        first, left = fell_back[0]
        for other in layers:
            if other is not first:
                other.unprime()
        setattr(model, HOLD_ATTRIBUTE, left)


def step(model: nn.Module, frame, dense_fallback: float | DenseFallback | None = None) -> Tensor:
    """Run one frame ([C,H,W] or [N,C,H,W], float32) through the model in eval semantics.

    ``dense_fallback`` (a fraction, or a ``DenseFallback``): when the first gated layer to run
    computes more than that fraction of its blocks (``fallback_count``), every other gated layer
    computes densely and keeps no state (its next frame is dense too): what a plan built with
    ``--dense-fallback`` does.

    On any error the state of every gated layer is restored before the error propagates.
    """
    frame = _as_frame(frame, _input_channels(model))
    _check_exported_shape(model, frame)
    layers = _named_gated_layers(model)
    snapshots = [layer.state_snapshot() for layer in layers]
    stats = [(layer.last_stats, layer.last_decisions) for layer in layers]
    held = getattr(model, HOLD_ATTRIBUTE, 0)
    if dense_fallback is not None and not isinstance(dense_fallback, DenseFallback):
        dense_fallback = DenseFallback(float(dense_fallback))
    try:
        with torch.no_grad(), (_dense_fallback(model, layers, dense_fallback) if dense_fallback is not None
                               else contextlib.nullcontext()):
            return model(frame)
    except BaseException:
        for layer, snapshot, last in zip(layers, snapshots, stats):
            layer.restore_state(snapshot)
            layer.last_stats, layer.last_decisions = last
        if hasattr(model, HOLD_ATTRIBUTE):
            setattr(model, HOLD_ATTRIBUTE, held)
        raise


def stream(model: nn.Module, clip: Tensor | np.ndarray | Iterable, with_stats: bool = False,
           dense_fallback: float | DenseFallback | None = None) -> Iterator:
    """Yield the model's output for each frame of ``clip`` ([T,C,H,W] or an iterable of frames),
    starting from a reset. With ``with_stats`` yields ``(output, FrameStats)`` pairs;
    ``dense_fallback`` as in ``step``.

    The model is put in eval mode: streaming is the reference semantics, not training. A
    ``torch.export.ExportedProgram`` is run as an ``ExportedModel``.
    """
    if isinstance(model, torch.export.ExportedProgram):
        model = ExportedModel(model)
    if isinstance(clip, np.ndarray):
        clip = torch.from_numpy(clip)
    if isinstance(clip, Tensor) and clip.dim() != 4:
        raise FrameError(f"clip: expected [T, C, H, W], got shape {tuple(clip.shape)}")
    model.eval()
    reset(model)
    for frame in clip:
        output = step(model, frame, dense_fallback)
        yield (output, frame_stats(model)) if with_stats else output
