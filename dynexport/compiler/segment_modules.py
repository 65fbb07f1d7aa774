"""The small nn.Modules the lowering passes create as backend segments for a gated layer.
Each is exported on its own (one method / signature / function per segment).

These are the target-neutral forms, in the reference's own ops: what the plan interpreter and
the torch callback backend run. A backend whose delegate runs another form of a module
faster substitutes it in its own emitter, under ``targets/<backend>/`` (its README says
which); the substitute keeps the inputs, outputs and numbers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn



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


