"""lower_dstep: one ``dynexport.dstep_conv2d`` gate -> a policy segment, frame-program
decisions, and the same block machinery as skip conv with zero-fill instead of reuse.

Emits, for D-STEP layer L with input X and output state Y::

        DSTEP_POLICY L pooled previous   the policies, computed by the runtime from X (one
                                     pass; weights in the plan's constants, layout:
                                     plan/dstep_policy.py) -> logits, pooled
        DSTEP_DECIDE L               argmax per patch and per channel -> active patches,
                                     channel decisions (first frame: reuse -> compute)
        COPY_TENSOR pooled -> previous pooled
        BRANCH_IF_NONE L  -> none    no patch or no channel computes
        BRANCH_IF_DENSE L -> dense
        GATHER_TILES L; RUN_SEGMENT L_tiles (batch K); DSTEP_APPLY L tiles; JUMP end
    dense:
        RUN_SEGMENT L_dense; DSTEP_APPLY L dense; JUMP end
    none:
        DSTEP_APPLY L none
    end:

DSTEP_APPLY writes Y per channel: skip -> 0, reuse -> Y unchanged, compute -> the
convolution on active patches and 0 on the others.

With a channel policy and more than one channel group (``channel_groups``), the
convolution is split into output-channel groups, each exported as its own tile and dense
segment, and each run only when one of its channels computes::

        GATHER_TILES L
        BRANCH_IF_GROUP_IDLE L, c0, n -> next    per group [c0, c0 + n)
        RUN_SEGMENT L_tiles_c<c0> (batch K); COPY_CHANNELS group tile output -> L.tile_output at c0
    next: ...
        DSTEP_APPLY L tiles                      (dense path alike)

DSTEP_APPLY reads a channel of the assembled output only where it computes, so the
channels of idle groups are never read. Savings realized: skipped patches (tiles of active
patches only) and channel groups without a compute channel (skip and reuse channels of a
group that has a compute channel are still computed: the group is the unit). The number of
groups is a trade: each group is one more backend call per path (~10-20 us on XNNPACK here)
against the channels it lets idle.

Before: a GateStep of partition_at_gates. After: Y, previous pooled and primed are state
tensors; the reference semantics of ``dynexport.nn.dstep`` hold.
"""

from __future__ import annotations

import math


from dynexport.compiler.graph import constant
from dynexport.compiler.passes.gated_conv import add_conv_segments, gated_conv, new_layer
from dynexport.compiler.plan_builder import PlanBuilder, SegmentArtifact, SegmentKind, example_tensor
from dynexport.compiler.segment_modules import ConvSegment
from dynexport.plan.dstep_policy import pack_policies
from dynexport.plan.frame_program import (
    DSTEP_SOURCE_DENSE, DSTEP_SOURCE_NONE, DSTEP_SOURCE_TILES, NO_LAYER, NO_TENSOR, DType, GateKind, LayerKind, Op, Role,
)


# Output channels per group: a layer of more channels than this is split into
# ceil(Co / CHANNEL_GROUP_CHANNELS) groups of (about) equal size, at most MAX_CHANNEL_GROUPS
# of them (each group is one backend call per frame on its path).
CHANNEL_GROUP_CHANNELS = 16
MAX_CHANNEL_GROUPS = 4
# A group's dense convolution must be worth a backend call: below this many MACs per group
# (about 30 us at the ~50 GMAC/s XNNPACK reaches at 1 thread here, against a 10-20 us call)
# the layer gets fewer groups. Measured on examples/dstep_action at 64x64 (every layer
# 2.4 M MACs, almost every channel computes): 4 groups per layer took the plan from 0.85x to
# 0.77x of dense; whole convolutions there keep it at 0.85x.
MIN_GROUP_DENSE_MACS = 1_500_000


def channel_groups(out_channels: int, group_channels: int | None = None,
                   max_groups: int | None = None, dense_macs: int | None = None) -> list[tuple[int, int]]:
    """The layer's output-channel groups as (first channel, count), in order, covering all
    (the module's constants when not given, read at call time); ``dense_macs``, the layer's
    MACs per frame on the dense path, bounds the count by ``MIN_GROUP_DENSE_MACS``."""
    group_channels = CHANNEL_GROUP_CHANNELS if group_channels is None else group_channels
    max_groups = MAX_CHANNEL_GROUPS if max_groups is None else max_groups
    if dense_macs is not None:
        max_groups = min(max_groups, dense_macs // MIN_GROUP_DENSE_MACS)
    count = max(1, min(max_groups, math.ceil(out_channels / max(1, group_channels))))
    size = math.ceil(out_channels / count)
    return [(c, min(size, out_channels - c)) for c in range(0, out_channels, size)]


def policy_macs(in_shape, grid, spatial, channel) -> int:
    """The policies' MACs per frame, as ``DStepConv2d.policy_macs`` counts them."""
    values = in_shape[1] * in_shape[2] * in_shape[3]
    macs = 0
    if spatial is not None:
        macs += values + grid.num_blocks * 2 * 2 * 9
    if channel is not None:
        w1, _, w2, _ = channel
        macs += values + w1.numel() + w2.numel()
    return macs


def add_group_segments(builder: PlanBuilder, conv, layer, groups):
    """Per channel group: (first, count, tile segment or None, its output, dense segment or
    None, its output), the convolution's output channels [first, first + count)."""
    grid = conv.grid
    result = []
    for first, count in groups:
        weight = conv.weight[first:first + count]
        bias = None if conv.bias is None else conv.bias[first:first + count]
        tiles = tile_out = dense = dense_out = None
        if conv.has_tile_path:
            tile_out = builder.tensor(f"{conv.name}.tile_output.c{first}", (conv.max_batch, count, grid.block, grid.block),
                                      Role.SCRATCH)
            tiles = builder.add_segment(SegmentArtifact(
                f"{conv.segment_prefix}_tiles_c{first}",
                ConvSegment(weight, bias, grid.stride, (0, 0), grid.dilation, conv.groups),
                (example_tensor((conv.max_batch, conv.in_channels, *grid.tile_size)),), max_batch=conv.max_batch,
                kind=SegmentKind.TILES),
                [layer.tiles], [tile_out])
        if conv.has_dense_segment:
            dense_out = builder.tensor(f"{conv.name}.dense_output.c{first}", (1, count, *grid.output_size), Role.SCRATCH)
            dense = builder.add_segment(SegmentArtifact(
                f"{conv.segment_prefix}_dense_c{first}",
                ConvSegment(weight, bias, grid.stride, grid.padding, grid.dilation, conv.groups),
                (example_tensor(conv.in_shape),), kind=SegmentKind.DENSE),
                [layer.input], [dense_out])
        result.append((first, count, tiles, tile_out, dense, dense_out))
    return result


def _emit_groups(builder: PlanBuilder, index: int, groups, path: str, destination: int, batch_layer: int) -> None:
    """Each group's segment behind its idle test, its output copied into ``destination``."""
    for group in groups:
        first, count = group[0], group[1]
        segment, output = (group[2], group[3]) if path == "tiles" else (group[4], group[5])
        skip = builder.emit(Op.BRANCH_IF_GROUP_IDLE, index, 0, first, count)
        builder.emit(Op.RUN_SEGMENT, segment, batch_layer)
        builder.emit(Op.COPY_CHANNELS, output, destination, first, batch_layer)
        builder.patch_target(skip, builder.pc)


def lower_dstep(builder: PlanBuilder, step, gm, dense_cutoff: float) -> int:
    (x, weight_node, bias_node, sw, sb, cw1, cb1, cw2, cb2, _prev_out, _prev_pooled, _primed,
     stride, padding, dilation, groups, patch) = step.node.args
    conv = gated_conv(builder, step, gm, weight_node, bias_node, stride, padding, dilation, groups, patch, dense_cutoff)
    name, grid = conv.name, conv.grid
    rows, cols = grid.blocks
    spatial = (constant(gm, sw), constant(gm, sb)) if sw is not None else None
    channel = tuple(constant(gm, n) for n in (cw1, cb1, cw2, cb2)) if cw1 is not None else None
    previous_pooled = builder.tensor(f"{name}.previous_pooled", (1, conv.in_channels), Role.STATE)
    pooled = builder.tensor(f"{name}.pooled", (1, conv.in_channels), Role.SCRATCH)
    layer = new_layer(
        builder, conv, step, kind=LayerKind.DSTEP, gate=GateKind.DSTEP_POLICY,
        spatial_logits=builder.tensor(f"{name}.spatial_logits", (1, 2, rows, cols), Role.SCRATCH) if spatial else NO_TENSOR,
        channel_logits=builder.tensor(f"{name}.channel_logits", (1, conv.out_channels, 3), Role.SCRATCH) if channel else NO_TENSOR,
        decisions=builder.tensor(f"{name}.decisions", (conv.out_channels,), Role.SCRATCH, DType.INT32),
    )
    index = builder.add_layer(layer, conv.weight)
    # D-STEP: the policies' MACs per frame (frame_program.Layer.gate_macs_per_position)
    layer.gate_macs_per_position = policy_macs(conv.in_shape, grid, spatial, channel)

    layer.gate_weight = builder.program.add_constants(pack_policies(spatial, channel))
    layer.gate_weight_count = len(builder.program.constants) - layer.gate_weight
    builder.emit(Op.DSTEP_POLICY, index, pooled, previous_pooled)
    dense_macs = builder.layer_dense_macs[index]
    groups = (channel_groups(conv.out_channels, dense_macs=dense_macs)
              if channel is not None and conv.groups == 1 else [])
    if len(groups) > 1:
        grouped = add_group_segments(builder, conv, layer, groups)
        tiles = dense = None
    else:
        grouped = None
        tiles, dense = add_conv_segments(builder, conv, layer)
    has_tiles, has_dense = conv.has_tile_path, conv.has_dense_segment

    builder.emit(Op.DSTEP_DECIDE, index)
    builder.emit(Op.COPY_TENSOR, pooled, previous_pooled)
    to_none = builder.emit(Op.BRANCH_IF_NONE, index)
    to_end = []
    if has_tiles:  # without a tile path every active frame is dense
        to_dense = builder.emit(Op.BRANCH_IF_DENSE, index) if has_dense else None
        builder.emit(Op.GATHER_TILES, index)
        if grouped:
            _emit_groups(builder, index, grouped, "tiles", layer.tile_output, index)
        else:
            builder.emit(Op.RUN_SEGMENT, tiles, index)
        builder.emit(Op.DSTEP_APPLY, index, DSTEP_SOURCE_TILES)
        to_end.append(builder.emit(Op.JUMP))
        if has_dense:
            builder.patch_target(to_dense, builder.pc)
    if has_dense:
        if grouped:
            _emit_groups(builder, index, grouped, "dense", layer.dense_output, NO_LAYER)
        else:
            builder.emit(Op.RUN_SEGMENT, dense, NO_LAYER)
        builder.emit(Op.DSTEP_APPLY, index, DSTEP_SOURCE_DENSE)
        to_end.append(builder.emit(Op.JUMP))
    builder.patch_target(to_none, builder.pc)
    builder.emit(Op.DSTEP_APPLY, index, DSTEP_SOURCE_NONE)
    for pc in to_end:
        builder.patch_target(pc, builder.pc)
    return index
