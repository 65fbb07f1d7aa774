"""The DStepConv2d module: a convolution wrapped with D-STEP's spatial and channel policies
(semantics in ``dynexport.nn.dstep``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynexport.nn import ops as _ops  # noqa: F401  (registers torch.ops.dynexport.*)
from dynexport.nn.dstep import COMPUTE, ChannelPolicy, SpatialPolicy, dstep_conv_step
from dynexport.nn.gated import GatedLayer, LayerFrameStats


class DStepConv2d(GatedLayer):
    """A Conv2d (same arguments) with a per-patch spatial policy (``spatial=True``) and a
    per-output-channel skip/reuse/compute policy (``channel=True``); ``patch`` is the
    patch edge in output positions. ``tau`` is the Gumbel-softmax temperature in training."""

    STATE_BUFFERS = ("previous_output", "previous_pooled")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, spatial=True, channel=True, patch=8, tau=1.0):
        super().__init__()
        if isinstance(padding, str):
            raise ValueError("DStepConv2d: padding must be an int or a pair of ints, not a string")
        if not (spatial or channel):
            raise ValueError("DStepConv2d: enable at least one of spatial=True, channel=True (else use nn.Conv2d)")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.spatial_policy = SpatialPolicy(in_channels, patch) if spatial else None
        self.channel_policy = ChannelPolicy(in_channels, out_channels) if channel else None
        self.patch = int(patch)
        self.tau = float(tau)
        self.register_buffer("previous_output", torch.zeros(0), persistent=False)
        self.register_buffer("previous_pooled", torch.zeros(0), persistent=False)
        self._mac_terms: list[tuple[Tensor, int]] = []

    @property
    def block_edge(self) -> int:
        return self.patch

    def extra_repr(self) -> str:
        return f"spatial={self.spatial_policy is not None}, channel={self.channel_policy is not None}, patch={self.patch}"

    def _policy_tensors(self):
        sp, ch = self.spatial_policy, self.channel_policy
        return (
            sp.conv.weight if sp else None, sp.conv.bias if sp else None,
            ch.fc1.weight if ch else None, ch.fc1.bias if ch else None,
            ch.fc2.weight if ch else None, ch.fc2.bias if ch else None,
        )

    def _state_shapes(self, x: Tensor):
        grid = self.block_grid(x.shape[-2:])
        n = x.shape[0]
        return {
            "previous_output": (n, self.conv.out_channels, *grid.output_size),
            "previous_pooled": (n, self.conv.in_channels),
        }

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x, self.conv.in_channels)
        self._apply_pruning()
        self._ensure_state(x)
        stride, padding, dilation, groups = self.conv_args()
        if self.training:
            output, pooled, patch_mask, decision, patch_signal, channel_signal = dstep_conv_step(
                x, self.conv.weight, self.conv.bias, *self._policy_tensors(),
                self.previous_output, self.previous_pooled, bool(self.primed),
                stride, padding, dilation, groups, self.patch, gumbel_tau=self.tau,
            )
            self._buffers["previous_output"] = output
            self._buffers["previous_pooled"] = pooled.detach()
            self._buffers["primed"] = torch.ones((), dtype=torch.bool, device=x.device)
            self._record_training_macs(x, patch_signal, channel_signal, patch_mask, decision)
            self._record_stats(x, patch_mask, decision)
            return output
        output, pooled, patch_mask, decision = torch.ops.dynexport.dstep_conv2d(
            x, self.conv.weight, self.conv.bias, *self._policy_tensors(),
            self.previous_output, self.previous_pooled, self.primed,
            stride, padding, dilation, groups, self.patch,
        )
        self._set_buffer("previous_output", output)
        self._set_buffer("previous_pooled", pooled)
        self._set_buffer("primed", torch.ones_like(self.primed))
        if not torch.compiler.is_compiling():
            self._input_shape = tuple(x.shape)
            self.last_decisions = (patch_mask, decision)
            self._record_stats(x, patch_mask, decision)
        return output

    # -- MACs -------------------------------------------------------------------------------
    def macs_per_output(self) -> int:
        """MACs for one output channel at one output position."""
        c = self.conv
        kh, kw = c.weight.shape[-2:]
        return (c.in_channels // c.groups) * kh * kw

    def policy_macs(self, x_shape) -> int:
        grid = self.block_grid(x_shape[-2:])
        macs = 0
        if self.spatial_policy is not None:
            macs += x_shape[1] * x_shape[2] * x_shape[3] + grid.num_blocks * 2 * 2 * 9
        if self.channel_policy is not None:
            macs += x_shape[1] * x_shape[2] * x_shape[3] + self.channel_policy.macs()
        return macs

    def _record_stats(self, x: Tensor, patch_mask: Tensor, decision: Tensor) -> None:
        grid = self.block_grid(x.shape[-2:])
        positions = self.block_positions(grid).to(x.device)
        n = x.shape[0]
        out_positions = grid.output_size[0] * grid.output_size[1]
        computed_positions = (patch_mask.float() * positions).sum(1)  # [N]
        computed_channels = (decision == COMPUTE).float().sum(1)  # [N]
        executed_outputs = float((computed_positions * computed_channels).sum())
        dense_outputs = n * out_positions * self.conv.out_channels
        gate_macs = n * self.policy_macs(x.shape)
        self.last_stats = LayerFrameStats(
            name=self.stream_name,
            active_fraction=executed_outputs / dense_outputs,
            executed_macs=int(round(executed_outputs * self.macs_per_output())) + gate_macs,
            dense_macs=dense_outputs * self.macs_per_output(),
            gate_macs=gate_macs,
        )

    def _record_training_macs(self, x, patch_signal, channel_signal, patch_mask, decision) -> None:
        grid = self.block_grid(x.shape[-2:])
        positions = self.block_positions(grid).to(x.device)
        patch = patch_signal if patch_signal is not None else patch_mask.to(x.dtype)
        channels = (channel_signal[..., COMPUTE] if channel_signal is not None
                    else (decision == COMPUTE).to(x.dtype))
        executed = ((patch * positions).sum(1) * channels.sum(1)).mean() * self.macs_per_output()
        dense = grid.output_size[0] * grid.output_size[1] * self.conv.out_channels * self.macs_per_output()
        self._mac_terms.append((executed, dense))
