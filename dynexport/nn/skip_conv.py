"""SkipConv2d: a convolution that recomputes only the b x b output blocks whose input changed
(after Habibian et al., Skip-Convolutions for Efficient Video Processing, CVPR 2021).

Reference semantics (eval mode, per stream, per frame t):

* State: ``reference_tiles`` -- for every block, the input tile (block plus halo) as it was
  when that block was last computed -- and ``previous_output``, the layer's last output.
* First frame after a reset: every block is computed.
* Otherwise each block gets a score from the residual ``tile_t - reference_tile``:
  - ``input_norm``: max over the block's output positions of the L2 norm of the residual over
    that position's receptive field (all input channels, the k x k dilated window);
  - ``output_norm``: that norm times ``max_o ||w_o||_2``, which by Cauchy-Schwarz bounds the
    change of any output channel at that position;
  - ``gumbel``: a trained 1-output convolution on the absolute residual (a learned weighted
    L1 norm of the receptive field) plus a bias that is always negative (so a zero residual
    never fires), max over the block's positions; the probability is its sigmoid.
  A block is active when its score is strictly above ``threshold`` (for ``gumbel`` the
  threshold is a probability, 0.5 by default).
* Active blocks take ``conv(x_t)`` at their positions exactly (bias included) and their
  reference tile becomes ``tile_t``; inactive blocks keep their previous output and reference.

Because the reference only moves when a block is computed, a slow drift accumulates until it
crosses the threshold, and an unchanged tile reproduces exactly the output it had.
Training mode follows the same recurrence with the Gumbel gate sampled (Gumbel noise,
straight-through estimator); norm gates are not trainable and act as in eval.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dynexport.nn.block_grid import BlockGrid

GATES = ("input_norm", "output_norm", "gumbel")


def make_grid(x_shape, weight_shape, stride, padding, dilation, block) -> BlockGrid:
    return BlockGrid(
        input_size=(int(x_shape[-2]), int(x_shape[-1])),
        kernel=(int(weight_shape[-2]), int(weight_shape[-1])),
        stride=tuple(stride),
        padding=tuple(padding),
        dilation=tuple(dilation),
        block=int(block),
    )


def extract_tiles(x: Tensor, grid: BlockGrid) -> Tensor:
    """[N, C, H, W] -> [N, num_blocks, C, tile_h, tile_w], block-major (row by row)."""
    pad_bottom, pad_right = grid.extra_padding
    padded = F.pad(x, (grid.padding[1], pad_right, grid.padding[0], pad_bottom))
    tiles = padded.unfold(2, grid.tile_size[0], grid.tile_step[0]).unfold(3, grid.tile_size[1], grid.tile_step[1])
    rows, cols = grid.blocks
    tiles = tiles[:, :, :rows, :cols]  # [N, C, rows, cols, th, tw]
    n, c = x.shape[:2]
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(n, rows * cols, c, grid.tile_size[0], grid.tile_size[1])


def valid_positions(grid: BlockGrid, device) -> Tensor:
    """[num_blocks, b, b] bool: which positions of each block are real output positions."""
    out_h, out_w = grid.output_size
    rows, cols = grid.blocks
    b = grid.block
    r = torch.arange(rows * b, device=device) < out_h
    c = torch.arange(cols * b, device=device) < out_w
    valid = r[:, None] & c[None, :]
    return valid.reshape(rows, b, cols, b).permute(0, 2, 1, 3).reshape(rows * cols, b, b)


def block_scores(
    residual_tiles: Tensor,
    grid: BlockGrid,
    gate: str,
    weight: Tensor,
    gate_weight: Optional[Tensor],
    gate_bias: Optional[Tensor],
) -> Tensor:
    """Score of every block from its residual tile: [N, num_blocks]."""
    n, num_blocks, c, th, tw = residual_tiles.shape
    flat = residual_tiles.reshape(n * num_blocks, c, th, tw)
    if gate == "gumbel":
        # On |r|: a linear gate on the signed residual would let changes of opposite sign cancel.
        per_position = F.conv2d(flat.abs(), gate_weight, None, grid.stride, 0, grid.dilation)
        per_position = per_position - F.softplus(gate_bias)
    else:
        window = torch.ones(1, 1, *grid.kernel, dtype=flat.dtype, device=flat.device)
        squared = F.conv2d(flat.square().sum(1, keepdim=True), window, None, grid.stride, 0, grid.dilation)
        per_position = squared.clamp_min(0).sqrt()
        if gate == "output_norm":
            per_position = per_position * kernel_norm(weight)
    per_position = per_position.reshape(n, num_blocks, grid.block, grid.block)
    valid = valid_positions(grid, flat.device)
    per_position = per_position.masked_fill(~valid, float("-inf"))
    return per_position.amax(dim=(2, 3))


def kernel_norm(weight: Tensor) -> Tensor:
    """max over output channels of the L2 norm of that channel's kernel."""
    return weight.flatten(1).norm(dim=1).max()


def score_threshold(gate: str, threshold: float) -> float:
    """The threshold in score units: for ``gumbel`` the probability becomes a logit."""
    if gate != "gumbel":
        return threshold
    if threshold <= 0.0:
        return float("-inf")
    if threshold >= 1.0:
        return float("inf")
    return math.log(threshold / (1.0 - threshold))


def expand_block_mask(block_mask: Tensor, grid: BlockGrid) -> Tensor:
    """[N, num_blocks] -> [N, 1, out_h, out_w] (0/1, same dtype as the mask)."""
    rows, cols = grid.blocks
    b = grid.block
    out_h, out_w = grid.output_size
    m = block_mask.reshape(-1, 1, rows, cols)
    m = m.repeat_interleave(b, dim=2).repeat_interleave(b, dim=3)
    return m[:, :, :out_h, :out_w]


def skip_conv_step(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gate_weight: Optional[Tensor],
    gate_bias: Optional[Tensor],
    reference_tiles: Tensor,
    previous_output: Tensor,
    primed: bool,
    stride,
    padding,
    dilation,
    groups: int,
    block: int,
    gate: str,
    threshold: float,
    gumbel_noise: Optional[Tensor] = None,
):
    """One frame of SkipConv2d. Returns (output, new_reference_tiles, block_mask, gate_signal).

    ``block_mask`` is the hard decision [N, num_blocks] (bool). ``gate_signal`` is the
    float mask used to blend outputs: equal to the hard mask in value, but carrying the
    straight-through gradient when ``gumbel_noise`` is given (training).
    """
    grid = make_grid(x.shape, weight.shape, stride, padding, dilation, block)
    dense = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    tiles = extract_tiles(x, grid)
    n = x.shape[0]
    if not primed:
        block_mask = torch.ones(n, grid.num_blocks, dtype=torch.bool, device=x.device)
        return dense, tiles.detach().clone(), block_mask, None
    scores = block_scores(tiles.detach() - reference_tiles, grid, gate, weight, gate_weight, gate_bias)
    if gumbel_noise is not None:
        # Gumbel-sigmoid with a straight-through estimator: hard in value, soft in gradient.
        soft = torch.sigmoid(scores + gumbel_noise)
        hard = (soft > threshold).to(soft.dtype)
        signal = hard + soft - soft.detach()
        block_mask = hard.bool()
    else:
        block_mask = scores > score_threshold(gate, threshold)
        signal = None
    blend = expand_block_mask(signal if signal is not None else block_mask.to(dense.dtype), grid)
    output = blend * dense + (1 - blend) * previous_output if signal is not None else torch.where(
        blend.bool(), dense, previous_output
    )
    new_reference = torch.where(block_mask[:, :, None, None, None], tiles.detach(), reference_tiles)
    return output, new_reference, block_mask, signal
