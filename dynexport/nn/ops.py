"""The gates as ``torch.library`` custom ops, so that ``torch.export`` keeps each gated layer
as exactly one node (``torch.ops.dynexport.skip_conv2d`` / ``torch.ops.dynexport.dstep_conv2d``)
whose inputs are the layer's parameters and state and whose outputs are the new state.

The eager implementation *is* the reference semantics (it calls the same step functions as
the modules); the fake implementation gives output shapes for tracing.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dynexport.nn import dstep as _dstep
from dynexport.nn import skip_conv as _skip


@torch.library.custom_op("dynexport::skip_conv2d", mutates_args=())
def skip_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gate_weight: Optional[Tensor],
    gate_bias: Optional[Tensor],
    reference_tiles: Tensor,
    previous_output: Tensor,
    primed: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    block: int,
    gate: str,
    threshold: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (output [N,Cout,Ho,Wo], new reference tiles, block mask [N, num_blocks] bool)."""
    output, reference, block_mask, _ = _skip.skip_conv_step(
        x, weight, bias, gate_weight, gate_bias, reference_tiles, previous_output, bool(primed),
        stride, padding, dilation, groups, block, gate, threshold,
    )
    return output.clone(), reference.clone(), block_mask.clone()


@skip_conv2d.register_fake
def _skip_conv2d_fake(x, weight, bias, gate_weight, gate_bias, reference_tiles, previous_output, primed,
                      stride, padding, dilation, groups, block, gate, threshold):
    grid = _skip.make_grid(x.shape, weight.shape, stride, padding, dilation, block)
    n = x.shape[0]
    out = x.new_empty((n, weight.shape[0], *grid.output_size))
    return out, torch.empty_like(reference_tiles), x.new_empty((n, grid.num_blocks), dtype=torch.bool)


@torch.library.custom_op("dynexport::dstep_conv2d", mutates_args=())
def dstep_conv2d(
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
    primed: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    patch: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (output, pooled input features [N,Cin], patch mask [N, num_patches] bool,
    channel decision [N, Cout] int64 with 0 skip / 1 reuse / 2 compute)."""
    result = _dstep.dstep_conv_step(
        x, weight, bias, spatial_weight, spatial_bias,
        channel_weight1, channel_bias1, channel_weight2, channel_bias2,
        previous_output, previous_pooled, bool(primed), stride, padding, dilation, groups, patch,
    )
    return tuple(t.clone() for t in result[:4])


@dstep_conv2d.register_fake
def _dstep_conv2d_fake(x, weight, bias, spatial_weight, spatial_bias, channel_weight1, channel_bias1,
                       channel_weight2, channel_bias2, previous_output, previous_pooled, primed,
                       stride, padding, dilation, groups, patch):
    grid = _skip.make_grid(x.shape, weight.shape, stride, padding, dilation, patch)
    n = x.shape[0]
    return (
        x.new_empty((n, weight.shape[0], *grid.output_size)),
        x.new_empty((n, x.shape[1])),
        x.new_empty((n, grid.num_blocks), dtype=torch.bool),
        x.new_empty((n, weight.shape[0]), dtype=torch.int64),
    )
