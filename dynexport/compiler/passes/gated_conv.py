"""What lower_skip_conv and lower_dstep share: a gated convolution's geometry, the plan
tensors of its block machinery (output state, packed tiles, tile and dense outputs, active
list), and its two convolution segments (tiles without padding, dense with padding)."""

from __future__ import annotations

import dataclasses
import math

import torch

from dynexport.compiler.graph import constant, module_path
from dynexport.compiler.plan_builder import PlanBuilder, SegmentArtifact, SegmentKind, example_tensor
from dynexport.compiler.segment_modules import ConvSegment
from dynexport.nn.block_grid import BlockGrid
from dynexport.nn.skip_conv import make_grid
from dynexport.plan.frame_program import NO_TENSOR, DType, Layer, Role


@dataclasses.dataclass
class GatedConv:
    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    grid: BlockGrid
    groups: int
    in_shape: tuple[int, ...]
    dense_cutoff: int  # above this many active blocks the dense segment runs
    max_batch: int  # the tile segment's batch bound: >= dense_cutoff (see tile_batch_bound)
    epilogue: torch.nn.Module | None = None  # pointwise ops after the convolution (fuse_pointwise_epilogue)
    epilogue_channels: int | None = None  # the epilogue's output channels (a 1x1 convolution in it may change them)

    @property
    def in_channels(self) -> int:
        return self.in_shape[1]

    @property
    def out_channels(self) -> int:
        """The layer's output channels: its state holds the epilogue's output."""
        return self.weight.shape[0] if self.epilogue_channels is None else self.epilogue_channels

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (1, self.out_channels, *self.grid.output_size)

    @property
    def has_tile_path(self) -> bool:
        """A cut-off of 0 blocks (e.g. a one-block map) makes every active frame dense: no
        tile segment is emitted then."""
        return self.dense_cutoff > 0

    @property
    def has_dense_segment(self) -> bool:
        return self.dense_cutoff < self.grid.num_blocks

    def dense_module(self) -> ConvSegment:
        """The layer's convolution over the whole map, with its padding and epilogue."""
        grid = self.grid
        return ConvSegment(self.weight, self.bias, grid.stride, grid.padding, grid.dilation, self.groups, self.epilogue)

    @property
    def segment_prefix(self) -> str:
        return "layer_" + "".join(c if c.isalnum() else "_" for c in self.name)


# On a grid this small, tiles of every block compute about the dense output positions and
# gather little more than the map itself: the tile segment serves as the dense path too,
# which saves the backend a method (seconds of lowering each)...
SMALL_GRID_BLOCKS = 4
# ...unless its blocks stick out of the map: 2 x 2 blocks of 8 over a 10x13 output (a
# MobileNet's stride-16 stage at 150x200) compute 256 positions for 130, twice the dense MACs
# on every busy frame. Above this many positions per output position a small grid keeps its
# dense segment.
SMALL_GRID_MAX_OVERCOMPUTE = 1.25


def dense_cutoff_blocks(grid: BlockGrid, fraction: float) -> int:
    num_blocks = grid.num_blocks
    if 1 < num_blocks <= SMALL_GRID_BLOCKS and tile_overcompute(grid) <= SMALL_GRID_MAX_OVERCOMPUTE:
        return num_blocks  # never branch to a dense segment: there is none
    return max(0, min(num_blocks, math.floor(fraction * num_blocks)))


def tile_overcompute(grid: BlockGrid) -> float:
    """Output positions the tiles of every block compute, per position of the map."""
    rows, cols = grid.blocks
    out_h, out_w = grid.output_size
    return rows * cols * grid.block * grid.block / (out_h * out_w)


def tile_batch_bound(num_blocks: int, cutoff: int) -> int:
    """The tile segment's max batch for a layer with this cut-off; always >= ``cutoff``.

    Where the layer has a dense segment (``cutoff < num_blocks``) the bound is
    ``num_blocks - 1``, not the cut-off: the plan's cut-off can then be moved anywhere in
    ``0..num_blocks - 1`` after the build (``dynexport tune`` raises it where tiles measure
    cheaper) without re-exporting the segment. All blocks active is left to the dense segment:
    their tiles would recompute every halo. Where there is no dense segment the tile path
    takes every count up to the cut-off, so the bound is the cut-off itself (at least 1).
    """
    if cutoff < num_blocks:
        return max(1, cutoff, num_blocks - 1)
    return max(1, cutoff)


def gated_conv(builder: PlanBuilder, step, gm, weight_node, bias_node, stride, padding, dilation, groups,
               block, dense_cutoff: float) -> GatedConv:
    weight = constant(gm, weight_node)
    in_shape = builder.value_shapes[step.input]
    grid = make_grid(in_shape, weight.shape, stride, padding, dilation, block)
    cutoff = dense_cutoff_blocks(grid, dense_cutoff)
    conv = GatedConv(_layer_name(step.node, builder), weight, constant(gm, bias_node), grid, groups, in_shape,
                     cutoff, tile_batch_bound(grid.num_blocks, cutoff), step.epilogue,
                     _epilogue_channels(step.epilogue, weight.shape[0], grid.output_size))
    builder.gated_convs[step.output] = conv
    return conv


def new_layer(builder: PlanBuilder, conv: GatedConv, step, **fields) -> Layer:
    """A Layer record with the geometry and block-machinery tensors filled in; the gate's
    output value is bound to the layer's output state."""
    name, grid = conv.name, conv.grid
    th, tw = grid.tile_size
    output = builder.tensor(f"{name}.output", conv.out_shape, Role.STATE)
    builder.bind_value(step.output, output, conv.out_shape)
    return Layer(
        name=name, input_size=grid.input_size, kernel=grid.kernel, stride=grid.stride, padding=grid.padding,
        dilation=grid.dilation, block=grid.block, in_channels=conv.in_channels, out_channels=conv.out_channels,
        dense_cutoff=conv.dense_cutoff, input=builder.value_tensors[step.input], output=output,
        tiles=builder.tensor(f"{name}.tiles", (conv.max_batch, conv.in_channels, th, tw), Role.SCRATCH)
        if conv.has_tile_path else NO_TENSOR,
        tile_output=builder.tensor(f"{name}.tile_output", (conv.max_batch, conv.out_channels, grid.block, grid.block),
                                   Role.SCRATCH) if conv.has_tile_path else NO_TENSOR,
        dense_output=builder.tensor(f"{name}.dense_output", conv.out_shape, Role.SCRATCH)
        if conv.has_dense_segment else NO_TENSOR,
        primed=builder.tensor(f"{name}.primed", (1,), Role.STATE),
        active=builder.tensor(f"{name}.active", (grid.num_blocks + 1,), Role.SCRATCH, DType.INT32),
        **fields,
    )


def add_conv_segments(builder: PlanBuilder, conv: GatedConv, layer: Layer) -> tuple[int | None, int | None]:
    """The tile segment (no padding: tiles carry their halo; None without a tile path) and
    the dense segment (None on small grids, where the tile path takes every count)."""
    grid = conv.grid
    tiles = None
    if conv.has_tile_path:
        tiles = builder.add_segment(SegmentArtifact(
            f"{conv.segment_prefix}_tiles",
            ConvSegment(conv.weight, conv.bias, grid.stride, (0, 0), grid.dilation, conv.groups, conv.epilogue),
            (example_tensor((conv.max_batch, conv.in_channels, *grid.tile_size)),), max_batch=conv.max_batch,
            kind=SegmentKind.TILES),
            [layer.tiles], [layer.tile_output])
    dense = None
    if conv.has_dense_segment:
        dense = builder.add_segment(SegmentArtifact(
            f"{conv.segment_prefix}_dense", conv.dense_module(), (example_tensor(conv.in_shape),), kind=SegmentKind.DENSE),
            [layer.input], [layer.dense_output])
    return tiles, dense


@torch.no_grad()
def _epilogue_channels(epilogue, channels: int, output_size) -> int | None:
    if epilogue is None:
        return None
    probe = torch.zeros(1, channels, *output_size).contiguous(memory_format=torch.channels_last)
    return int(epilogue(probe)[0].shape[1])


def _layer_name(node, builder: PlanBuilder) -> str:
    path = module_path(node).split(" ")[0]
    if path == "<model>":
        path = node.name
    names = {layer.name for layer in builder.program.layers}
    name, i = path, 1
    while name in names:
        i += 1
        name = f"{path}#{i}"
    return name
