"""A stream run: outputs and gate decisions per frame, in the plan's terms (physical NHWC
outputs, one block mask and one channel-decision vector per gated layer in plan order), so
the PyTorch reference and any runtime compare element for element and block for block."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from dynexport.errors import FrameError
from dynexport.plan.frame_program import FrameProgram

COMPUTE = 2  # channel decision: 0 skip, 1 reuse, 2 compute


@dataclasses.dataclass
class StreamRun:
    outputs: np.ndarray  # float32 [T, *plan output dims] (NHWC for 4-D)
    block_masks: np.ndarray  # uint8 [T, total blocks of all layers], layer after layer in plan order
    channels: np.ndarray  # uint8 [T, total out channels of all layers]
    stats: list[dict] = dataclasses.field(default_factory=list)  # per frame, when the runtime reports them
    # the reference's raw spatial decisions (D-STEP patches before the "no computed channel"
    # rule), which a runtime takes for blocks in the tie band; equal to block_masks elsewhere
    tie_masks: np.ndarray | None = None
    # int64 [T, gated layers]: the MACs each layer's own decisions need (its LayerFrameStats:
    # computed blocks, or computed channels x computed patches, plus gate / policy MACs);
    # None for a .pt2 program, whose gates have no module to count them
    layer_macs: np.ndarray | None = None


def layer_sizes(program: FrameProgram) -> list[tuple[int, int]]:
    """(blocks, out channels) per gated layer, plan order: the decision record layout."""
    return [(layer.grid.num_blocks, layer.out_channels) for layer in program.layers]


def _physical(output: torch.Tensor) -> np.ndarray:
    array = output.detach().numpy()
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1) if array.ndim == 4 else array)


def _reference_layers(model, program: FrameProgram):
    """The model's gated layers in plan order, matched by module path."""
    from dynexport.nn import gated_layers

    by_name = dict(gated_layers(model))
    ordered = [module for _, module in gated_layers(model)]
    layers = []
    for i, layer in enumerate(program.layers):
        match = by_name.get(layer.name)
        if match is None:
            if len(ordered) != len(program.layers):
                raise FrameError(f"reference model has no gated layer named {layer.name!r} (plan layer {i}); "
                                 "was the build made from another model?")
            match = ordered[i]
        layers.append(match)
    return layers


def run_reference(model, program: FrameProgram, frames: np.ndarray, resets) -> StreamRun:
    """Stream ``frames`` (float32 [T, C, H, W]) through the PyTorch reference: an nn.Module,
    or a .pt2 program (run as ``ExportedModel``, its gate decisions read from the gate ops)."""
    from dynexport import streaming
    from dynexport.nn import ExportedModel

    if isinstance(model, torch.export.ExportedProgram):
        model = ExportedModel(model)

    layers = _reference_layers(model, program)
    sizes = layer_sizes(program)
    fallback = program.dense_fallback()  # the plan's: the reference falls back as it does
    if fallback is not None:
        _layer, count, hold, hold_skips_gate = fallback
        fallback = streaming.DenseFallback(count=count, hold=hold, hold_skips_gate=hold_skips_gate)
    outputs, masks, tie_masks, channels, macs = [], [], [], [], []
    with torch.no_grad():
        for t, frame in enumerate(frames):
            if t in resets:
                streaming.reset(model)
            outputs.append(_physical(streaming.step(model, torch.from_numpy(frame[None]), fallback)))
            frame_masks, frame_ties, frame_channels = [], [], []
            for layer, (blocks, out_channels) in zip(layers, sizes):
                decisions = layer.last_decisions
                if isinstance(decisions, tuple):  # D-STEP: (patch mask, channel decisions)
                    patches, decision = (d[0].reshape(-1).numpy() for d in decisions)
                    patches, decision = patches.astype(np.uint8), decision.astype(np.uint8)
                    computed = patches if (decision == COMPUTE).any() else np.zeros_like(patches)
                else:
                    patches = computed = decisions[0].reshape(-1).numpy().astype(np.uint8)
                    decision = np.full(out_channels, COMPUTE, np.uint8)
                if computed.size != blocks or decision.size != out_channels:
                    raise FrameError(f"reference layer {program.layers[len(frame_masks)].name}: "
                                     f"{computed.size} blocks / {decision.size} channels, plan has {blocks} / {out_channels}")
                frame_masks.append(computed)
                frame_ties.append(patches)
                frame_channels.append(decision)
            stats = [layer.last_stats for layer in layers]
            macs.append(None if None in stats else [s.executed_macs for s in stats])
            masks.append(np.concatenate(frame_masks) if frame_masks else np.zeros(0, np.uint8))
            tie_masks.append(np.concatenate(frame_ties) if frame_ties else np.zeros(0, np.uint8))
            channels.append(np.concatenate(frame_channels) if frame_channels else np.zeros(0, np.uint8))
    layer_macs = None if None in macs else np.array(macs, dtype=np.int64).reshape(len(frames), len(layers))
    return StreamRun(np.stack(outputs), np.stack(masks), np.stack(channels), tie_masks=np.stack(tie_masks),
                     layer_macs=layer_macs)


def reference_macs(model, program: FrameProgram, frames: np.ndarray, resets) -> np.ndarray | None:
    """Per frame (int64 [T]), the MACs of the gated layers that the reference model's own
    decisions need, gate and policy MACs included: the number ``dynexport.stream(...,
    with_stats=True)`` reports. For D-STEP that counts skipped and reused channels and
    skipped patches as saved, which a plan running every channel does not realize; for
    SkipConv it is the computed blocks. None when the reference is a .pt2 program (its gates
    have no module to count with)."""
    from dynexport import streaming

    if isinstance(model, torch.export.ExportedProgram):
        return None
    streaming.reset(model)
    run = run_reference(model, program, frames, resets)
    streaming.reset(model)  # leave no stream state behind for whoever runs the model next
    return None if run.layer_macs is None else run.layer_macs.sum(axis=1)
