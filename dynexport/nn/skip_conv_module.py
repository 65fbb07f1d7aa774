"""The SkipConv2d module: parameters, state buffers and statistics around ``skip_conv_step``
(whose docstring holds the reference semantics)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynexport.nn import ops as _ops  # noqa: F401  (registers torch.ops.dynexport.*)
from dynexport.nn.gated import GatedLayer, LayerFrameStats
from dynexport.nn.skip_conv import GATES, skip_conv_step

DEFAULT_THRESHOLDS = {"input_norm": 0.1, "output_norm": 0.1, "gumbel": 0.5}


class SkipConv2d(GatedLayer):
    """A Conv2d that, frame by frame, recomputes only the b x b output blocks whose input
    changed. Arguments as ``torch.nn.Conv2d`` plus:

    gate: ``"input_norm"``, ``"output_norm"`` or ``"gumbel"`` (trained).
    threshold: a block is recomputed when its score is above this; for ``gumbel`` a
        probability (default 0.5), for the norm gates an L2 norm of the input residual over
        a receptive field (``input_norm``) or a bound on the output change (``output_norm``).
    block: block edge in output positions.
    """

    STATE_BUFFERS = ("reference_tiles", "previous_output")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, gate="input_norm", threshold=None, block=8):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"SkipConv2d: gate must be one of {', '.join(GATES)}, got {gate!r}")
        if block < 1:
            raise ValueError(f"SkipConv2d: block must be >= 1, got {block}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if isinstance(padding, str):
            raise ValueError("SkipConv2d: padding must be an int or a pair of ints, not a string")
        self.gate = gate
        self.threshold = float(DEFAULT_THRESHOLDS[gate] if threshold is None else threshold)
        self.block = int(block)
        if gate == "gumbel":
            self.gate_conv = nn.Conv2d(in_channels, 1, kernel_size, stride, 0, dilation, bias=False)
            # The gate's bias is -softplus(gate_bias): a zero residual never fires.
            self.gate_bias = nn.Parameter(torch.zeros(1))
        else:
            self.gate_conv = None
            self.gate_bias = None
        self.register_buffer("reference_tiles", torch.zeros(0), persistent=False)
        self.register_buffer("previous_output", torch.zeros(0), persistent=False)
        self._mac_terms: list[tuple[Tensor, int]] = []

    @property
    def weight(self) -> Tensor:
        return self.conv.weight

    @property
    def bias(self) -> Tensor | None:
        return self.conv.bias

    @property
    def block_edge(self) -> int:
        return self.block

    def extra_repr(self) -> str:
        return f"gate={self.gate}, threshold={self.threshold}, block={self.block}"

    def _state_shapes(self, x: Tensor):
        grid = self.block_grid(x.shape[-2:])
        n = x.shape[0]
        return {
            "reference_tiles": (n, grid.num_blocks, x.shape[1], *grid.tile_size),
            "previous_output": (n, self.conv.out_channels, *grid.output_size),
        }

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x, self.conv.in_channels)
        self._apply_pruning()
        self._ensure_state(x)
        gate_evaluated = False if torch.compiler.is_compiling() else bool(self.primed)
        stride, padding, dilation, groups = self.conv_args()
        gate_weight = self.gate_conv.weight if self.gate_conv is not None else None
        if self.training:
            noise = None
            if self.gate == "gumbel":
                grid = self.block_grid(x.shape[-2:])
                u = torch.rand(x.shape[0], grid.num_blocks, device=x.device).clamp(1e-6, 1 - 1e-6)
                noise = torch.log(u) - torch.log1p(-u)  # difference of two Gumbels = logistic
            output, reference, block_mask, signal = skip_conv_step(
                x, self.conv.weight, self.conv.bias, gate_weight, self.gate_bias,
                self.reference_tiles, self.previous_output, bool(self.primed),
                stride, padding, dilation, groups, self.block, self.gate, self.threshold, noise,
            )
            # Keep the recurrence differentiable within a clip; the reference needs no gradient.
            self._buffers["previous_output"] = output
            self._buffers["reference_tiles"] = reference.detach()
            self._buffers["primed"] = torch.ones((), dtype=torch.bool, device=x.device)
            self._record_training_macs(x, signal, block_mask)
            self._record_stats(x, block_mask, gate_evaluated)
            return output
        output, reference, block_mask = torch.ops.dynexport.skip_conv2d(
            x, self.conv.weight, self.conv.bias, gate_weight, self.gate_bias,
            self.reference_tiles, self.previous_output, self.primed,
            stride, padding, dilation, groups, self.block, self.gate, self.threshold,
        )
        self._set_buffer("reference_tiles", reference)
        self._set_buffer("previous_output", output)
        self._set_buffer("primed", torch.ones_like(self.primed))
        if not torch.compiler.is_compiling():
            self._input_shape = tuple(x.shape)
            self.last_decisions = block_mask
            self._record_stats(x, block_mask, gate_evaluated)
        return output

    # -- MACs -------------------------------------------------------------------------------
    def macs_per_position(self) -> int:
        c = self.conv
        kh, kw = c.weight.shape[-2:]
        return c.out_channels * (c.in_channels // c.groups) * kh * kw

    def gate_macs_per_position(self) -> int:
        kh, kw = self.conv.weight.shape[-2:]
        return self.conv.in_channels * kh * kw

    def _record_stats(self, x: Tensor, block_mask: Tensor, gate_evaluated: bool) -> None:
        grid = self.block_grid(x.shape[-2:])
        positions = self.block_positions(grid).to(x.device)
        out_positions = grid.output_size[0] * grid.output_size[1]
        n = x.shape[0]
        computed = float((block_mask.float() * positions).sum())
        gate_macs = n * out_positions * self.gate_macs_per_position() if gate_evaluated else 0
        dense = n * out_positions * self.macs_per_position()
        self.last_stats = LayerFrameStats(
            name=self.stream_name,
            active_fraction=float(block_mask.float().mean()),
            executed_macs=int(round(computed * self.macs_per_position())) + gate_macs,
            dense_macs=dense,
            gate_macs=gate_macs,
        )

    def _record_training_macs(self, x: Tensor, signal: Tensor | None, block_mask: Tensor) -> None:
        grid = self.block_grid(x.shape[-2:])
        positions = self.block_positions(grid).to(x.device)
        fraction_source = signal if signal is not None else block_mask.to(x.dtype)
        executed = (fraction_source * positions).sum(1).mean() * self.macs_per_position()
        dense = grid.output_size[0] * grid.output_size[1] * self.macs_per_position()
        self._mac_terms.append((executed, dense))
