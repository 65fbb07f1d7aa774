"""The small nn.Modules the lowering passes create as backend segments for a gated layer.
Each is exported on its own (one method / signature / function per segment).

These are the target-neutral forms, in the reference's own ops: what the plan interpreter and
the torch callback backend run. A backend whose delegate runs another form of a module
faster substitutes it in its own emitter, under ``targets/<backend>/`` (its README says
which); the substitute keeps the inputs, outputs and numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynexport.nn.block_grid import BlockGrid
from dynexport.nn.dstep import channel_logits, spatial_logits


class ConvSegment(nn.Module):
    """``conv2d`` with fixed weights. As a tile segment (padding 0) it maps packed input
    tiles [K, C, th, tw] to their blocks' outputs [K, Co, b, b]; as a dense segment it is
    the layer's convolution over the whole map. ``epilogue``, a pointwise module returning a
    1-tuple, is applied to the convolution's result (fuse_pointwise_epilogue)."""

    def __init__(self, weight, bias, stride, padding, dilation, groups, epilogue: nn.Module | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        self.epilogue = epilogue

    def forward(self, x):
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return (y,) if self.epilogue is None else (self.epilogue(y)[0],)


class DenseTail(nn.Module):
    """The steps of a partitioned graph after its first gate, run densely: dense steps as they
    are, each gate as its plain convolution (``convs``: gate output value -> a dense
    ``ConvSegment``). Maps ``inputs`` (value names, what the steps read from before) to the
    model output ``output`` (add_dense_fallback)."""

    def __init__(self, steps, convs: dict[str, nn.Module], inputs: list[str], output: str):
        super().__init__()
        self.plan = []  # (module name, values read, values written) per step, in order
        for i, step in enumerate(steps):
            name = f"step_{i}"
            if hasattr(step, "module"):
                self.add_module(name, step.module)
                self.plan.append((name, list(step.inputs), list(step.outputs)))
            else:
                self.add_module(name, convs[step.output])
                self.plan.append((name, [step.input], [step.output]))
        self.inputs, self.output = list(inputs), output

    def forward(self, *values):
        env = dict(zip(self.inputs, values))
        for name, reads, writes in self.plan:
            env.update(zip(writes, getattr(self, name)(*(env[v] for v in reads))))
        return (env[self.output],)


class DStepPolicySegment(nn.Module):
    """D-STEP's policies for one frame, computed as the reference (``dynexport.nn.dstep``)
    computes them: (spatial logits [1,2,rows,cols])?, (channel logits [1,Co,3])?, pooled
    input [1,C]. ``primed`` [1] is 0 on the first frame after a reset, where the previous
    pooled input is taken to be the current one, and 1 otherwise.

    ``spatial`` is (weight [2,2,3,3], bias [2]) or None; ``channel`` is (w1, b1, w2, b2) or
    None; ``spatial_parameters`` / ``channel_parameters`` give them back (for a backend's
    substitute)."""

    def __init__(self, grid: BlockGrid, spatial, channel, in_channels: int):
        super().__init__()
        self.grid = grid
        self.in_channels = in_channels
        self.has_spatial = spatial is not None
        self.has_channel = channel is not None
        if spatial is not None:
            self.register_buffer("spatial_weight", spatial[0].detach().clone())
            self.register_buffer("spatial_bias", spatial[1].detach().clone())
        if channel is not None:
            for name, value in zip(("w1", "b1", "w2", "b2"), channel):
                self.register_buffer(f"channel_{name}", value.detach().clone())

    def spatial_parameters(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.spatial_weight, self.spatial_bias) if self.has_spatial else None

    def channel_parameters(self) -> tuple[torch.Tensor, ...] | None:
        return (self.channel_w1, self.channel_b1, self.channel_w2, self.channel_b2) if self.has_channel else None

    def forward(self, x, previous_pooled, primed):
        pooled = x.mean((2, 3))
        outputs = []
        if self.has_spatial:
            outputs.append(spatial_logits(x, self.grid, self.spatial_weight, self.spatial_bias))
        if self.has_channel:
            previous = torch.where(primed > 0, previous_pooled, pooled)
            outputs.append(channel_logits(pooled, previous, *self.channel_parameters()))
        outputs.append(pooled)
        return tuple(outputs)
