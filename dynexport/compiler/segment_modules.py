"""The small nn.Modules the lowering passes create as backend segments for a gated layer.
Each is exported on its own (one method / signature / function per segment). D-STEP's policy
segment has a module of its own: ``dstep_policy_segment``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class ConvSegment(nn.Module):
    """``conv2d`` with fixed weights. As a tile segment (padding 0) it maps packed input
    tiles [K, C, th, tw] to their blocks' outputs [K, Co, b, b]; as a dense segment it is
    the layer's convolution over the whole map."""

    def __init__(self, weight, bias, stride, padding, dilation, groups):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups

    def forward(self, x):
        return (F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups),)
