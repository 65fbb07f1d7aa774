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

import dataclasses
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


def step(model: nn.Module, frame) -> Tensor:
    """Run one frame ([C,H,W] or [N,C,H,W], float32) through the model in eval semantics.

    On any error the state of every gated layer is restored before the error propagates.
    """
    frame = _as_frame(frame, _input_channels(model))
    _check_exported_shape(model, frame)
    layers = _named_gated_layers(model)
    snapshots = [layer.state_snapshot() for layer in layers]
    stats = [(layer.last_stats, layer.last_decisions) for layer in layers]
    try:
        with torch.no_grad():
            return model(frame)
    except BaseException:
        for layer, snapshot, last in zip(layers, snapshots, stats):
            layer.restore_state(snapshot)
            layer.last_stats, layer.last_decisions = last
        raise


def stream(model: nn.Module, clip: Tensor | np.ndarray | Iterable, with_stats: bool = False) -> Iterator:
    """Yield the model's output for each frame of ``clip`` ([T,C,H,W] or an iterable of frames),
    starting from a reset. With ``with_stats`` yields ``(output, FrameStats)`` pairs.

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
        output = step(model, frame)
        yield (output, frame_stats(model)) if with_stats else output
