"""PlanBuilder: what the lowering passes share while writing one frame program: the program,
the backend segments it refers to (module + example inputs), and which plan tensor holds
each graph value."""

from __future__ import annotations

import dataclasses
import enum

import torch
from torch import nn

from dynexport.plan.frame_program import DType, FrameProgram, Op, Role


class SegmentKind(str, enum.Enum):
    """What a segment computes (a ``str``: equal to its value, so ``kind == "tiles"`` holds)."""

    DENSE = "dense"  # a layer's convolution, or the ungated ops between gates, over the whole map
    TILES = "tiles"  # a gated convolution over a packed batch of active tiles (batch 1..max_batch)


@dataclasses.dataclass
class SegmentArtifact:
    """One backend entry point: the module to export and example inputs (NCHW logical,
    channels_last memory for 4-D) at the largest batch it will see."""

    name: str
    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    max_batch: int = 0  # > 0: a tile segment whose batch varies from 1 to max_batch
    kind: SegmentKind = SegmentKind.DENSE

    def __post_init__(self):
        self.kind = SegmentKind(self.kind)  # a string names one of the kinds, or this raises ValueError


def nhwc_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Physical dims of a value: NCHW -> NHWC for 4-D, unchanged otherwise."""
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    return tuple(shape)


def example_tensor(shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    t = torch.randn(shape, generator=generator)
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


@dataclasses.dataclass
class PlanBuilder:
    program: FrameProgram = dataclasses.field(default_factory=FrameProgram)
    segments: dict[str, SegmentArtifact] = dataclasses.field(default_factory=dict)
    value_tensors: dict[str, int] = dataclasses.field(default_factory=dict)
    value_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # NCHW logical
    layer_dense_macs: list[int] = dataclasses.field(default_factory=list)  # per gated layer, plan order
    # gate output value -> its layer's convolution (passes/gated_conv.GatedConv), for the dense fallback
    gated_convs: dict = dataclasses.field(default_factory=dict)

    def add_layer(self, layer, weight: torch.Tensor) -> int:
        """Append a gated layer; its MACs come from its (folded) kernel. Skip-conv gates score
        the residual over each position's receptive field (all input channels)."""
        from dynexport.plan.frame_program import LayerKind

        out_h, out_w = layer.grid.output_size
        layer.macs_per_position = weight[0].numel() * weight.shape[0]
        if layer.kind == LayerKind.SKIP_CONV:
            layer.gate_macs_per_position = layer.in_channels * layer.kernel[0] * layer.kernel[1]
        self.program.layers.append(layer)
        self.layer_dense_macs.append(out_h * out_w * layer.macs_per_position)
        return len(self.program.layers) - 1

    def tensor(self, name: str, logical_shape, role: Role, dtype: DType = DType.FLOAT32) -> int:
        return self.program.add_tensor(name, nhwc_dims(tuple(logical_shape)), role, dtype)

    def bind_value(self, value: str, tensor: int, logical_shape) -> None:
        self.value_tensors[value] = tensor
        self.value_shapes[value] = tuple(logical_shape)

    def add_segment(self, artifact: SegmentArtifact, inputs: list[int], outputs: list[int]) -> int:
        if artifact.name in self.segments:
            raise ValueError(f"duplicate segment name {artifact.name}")
        self.segments[artifact.name] = artifact
        return self.program.add_segment(artifact.name, inputs, outputs, artifact.max_batch)

    def emit(self, op: Op, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
        return self.program.emit(op, a, b, c, d)

    def patch_target(self, pc: int, target: int) -> None:
        """Point the branch or jump at ``pc`` to ``target``."""
        ins = self.program.instructions[pc]
        if ins.op == Op.JUMP:
            ins.a = target
        else:
            ins.b = target

    @property
    def pc(self) -> int:
        return len(self.program.instructions)
