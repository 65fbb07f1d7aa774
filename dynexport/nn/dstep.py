"""D-STEP policies (after Raviv et al., D-STEP: Dynamic Spatio-Temporal Pruning, BMVC 2022).

Reference semantics of ``DStepConv2d`` (eval mode, per stream, per frame):

* Spatial policy: the input's mean and mean square over channels are average-pooled to the
  layer's output patch grid (``patch`` x ``patch`` output positions per patch, partial
  border patches included; adaptive pooling regions), and a 3x3 convolution over that grid
  gives two logits per patch (skip, compute). Eval: argmax. A skipped patch outputs zero in every channel.
* Channel policy: the global average of the current input and of the previous frame's input
  (state) go through a two-layer MLP that gives three logits per output channel (skip,
  reuse, compute). Eval: argmax. *skip* outputs zero, *reuse* outputs that channel of this
  layer's previous output (state), *compute* outputs the convolution, with the spatial mask
  applied. On the first frame after a reset there is no previous frame: the previous pooled
  input is the current one and *reuse* is taken as *compute*.
* Training: Gumbel-softmax with hard samples (straight-through) replaces the argmax.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynexport.nn.skip_conv import expand_block_mask, make_grid

SKIP, REUSE, COMPUTE = 0, 1, 2


def spatial_logits(x: Tensor, grid, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """[N, C, H, W] -> [N, 2, rows, cols] (skip, compute) logits over the output patch grid."""
    rows, cols = grid.blocks
    # mean and energy (mean of squares) per patch: both plain average pools, which every
    # backend runs (an adaptive max pool is not core ATen and ExecuTorch refuses it)
    channel_mean = x.mean(1, keepdim=True)
    channel_energy = x.square().mean(1, keepdim=True)
    features = F.adaptive_avg_pool2d(torch.cat([channel_mean, channel_energy], 1), (rows, cols))
    return F.conv2d(features, weight, bias, padding=1)


def channel_logits(pooled: Tensor, previous_pooled: Tensor, w1, b1, w2, b2) -> Tensor:
    """[N, Cin] x2 -> [N, Cout, 3] (skip, reuse, compute) logits."""
    hidden = F.relu(F.linear(torch.cat([pooled, previous_pooled], 1), w1, b1))
    logits = F.linear(hidden, w2, b2)
    return logits.reshape(pooled.shape[0], -1, 3)


def dstep_conv_step(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    spatial_weight: Optional[Tensor],
    spatial_bias: Optional[Tensor],
    channel_weight1: Optional[Tensor],
    channel_bias1: Optional[Tensor],
    channel_weight2: Optional[Tensor],
    channel_bias2: Optional[Tensor],
    previous_output: Tensor,
    previous_pooled: Tensor,
    primed: bool,
    stride,
    padding,
    dilation,
    groups: int,
    patch: int,
    gumbel_tau: Optional[float] = None,
):
    """One frame of DStepConv2d. Returns (output, pooled, patch_mask [N, P] bool,
    channel_decision [N, Cout] int64, patch_signal, channel_signal); the two signals are the
    float (straight-through in training) masks used to blend, or None in eval."""
    grid = make_grid(x.shape, weight.shape, stride, padding, dilation, patch)
    n = x.shape[0]
    dense = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    pooled = x.mean((2, 3))

    if spatial_weight is not None:
        logits = spatial_logits(x, grid, spatial_weight, spatial_bias).flatten(2)  # [N, 2, P]
        if gumbel_tau is not None:
            patch_signal = F.gumbel_softmax(logits, tau=gumbel_tau, hard=True, dim=1)[:, 1]
            patch_mask = patch_signal.detach().bool()
        else:
            patch_mask = logits.argmax(1) == 1
            patch_signal = None
    else:
        patch_mask = torch.ones(n, grid.num_blocks, dtype=torch.bool, device=x.device)
        patch_signal = None
    spatial = expand_block_mask(patch_signal if patch_signal is not None else patch_mask.to(dense.dtype), grid)
    computed = dense * spatial

    if channel_weight1 is not None:
        previous = previous_pooled if primed else pooled
        logits = channel_logits(pooled, previous, channel_weight1, channel_bias1, channel_weight2, channel_bias2)
        if gumbel_tau is not None:
            channel_signal = F.gumbel_softmax(logits, tau=gumbel_tau, hard=True, dim=-1)  # [N, Cout, 3]
            if not primed:
                channel_signal = torch.stack(
                    [channel_signal[..., SKIP], torch.zeros_like(channel_signal[..., REUSE]),
                     channel_signal[..., REUSE] + channel_signal[..., COMPUTE]], -1)
            decision = channel_signal.detach().argmax(-1)
        else:
            decision = logits.argmax(-1)
            if not primed:
                decision = torch.where(decision == REUSE, torch.full_like(decision, COMPUTE), decision)
            channel_signal = None
    else:
        decision = torch.full((n, weight.shape[0]), COMPUTE, dtype=torch.int64, device=x.device)
        channel_signal = None

    if channel_signal is not None:
        compute_w = channel_signal[..., COMPUTE][:, :, None, None]
        reuse_w = channel_signal[..., REUSE][:, :, None, None]
        output = compute_w * computed + (reuse_w * previous_output if primed else 0)
    else:
        d = decision[:, :, None, None]
        reused = previous_output if primed else torch.zeros_like(computed)
        output = torch.where(d == COMPUTE, computed, torch.where(d == REUSE, reused, torch.zeros_like(computed)))
    return output, pooled, patch_mask, decision, patch_signal, channel_signal


class SpatialPolicy(nn.Module):
    """Per-patch compute/skip logits from the channel-averaged input (see module docstring).

    ``forward(x, grid_size)`` returns [N, 2, rows, cols] logits; ``DStepConv2d`` owns the
    decision so that it can be exported as one node.
    """

    def __init__(self, channels: int, patch: int = 8):
        super().__init__()
        self.channels = channels
        self.patch = patch
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        with torch.no_grad():  # start by computing everything: training removes work
            self.conv.bias.copy_(torch.tensor([0.0, 5.0]))

    def forward(self, x: Tensor, grid) -> Tensor:
        return spatial_logits(x, grid, self.conv.weight, self.conv.bias)


class ChannelPolicy(nn.Module):
    """Per-output-channel skip/reuse/compute logits from the pooled current and previous input."""

    def __init__(self, channels: int, out_channels: Optional[int] = None, hidden: Optional[int] = None):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        hidden = hidden or max(16, channels // 4)
        self.channels, self.out_channels = channels, out_channels
        self.fc1 = nn.Linear(2 * channels, hidden)
        self.fc2 = nn.Linear(hidden, 3 * out_channels)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([0.0, 0.0, 5.0]).repeat(out_channels))

    def forward(self, pooled: Tensor, previous_pooled: Tensor) -> Tensor:
        return channel_logits(pooled, previous_pooled, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)

    def macs(self) -> int:
        return self.fc1.in_features * self.fc1.out_features + self.fc2.in_features * self.fc2.out_features
