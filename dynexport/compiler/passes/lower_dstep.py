"""lower_dstep: one ``dynexport.dstep_conv2d`` gate -> a policy segment, frame-program
decisions, and the same block machinery as skip conv with zero-fill instead of reuse.

Emits, for D-STEP layer L with input X and output state Y::

        RUN_SEGMENT L_policy         (X, previous pooled, primed) -> logits, pooled; when X
                                     comes from the dense segment just run, the policy is
                                     appended to that segment instead (one call fewer)
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

Savings realized: skipped patches (no convolution work: tiles of active patches only).
Not yet realized: per-channel skip/reuse still computes every output channel of an active
patch (the segments are compiled for all channels); the plan reports this per layer.

Before: a GateStep of partition_at_gates. After: Y, previous pooled and primed are state
tensors; the reference semantics of ``dynexport.nn.dstep`` hold.
"""

from __future__ import annotations

from torch import nn

from dynexport.compiler.graph import constant
from dynexport.compiler.passes.gated_conv import add_conv_segments, gated_conv, new_layer
from dynexport.compiler.plan_builder import PlanBuilder, SegmentArtifact, SegmentKind, example_tensor
from dynexport.compiler.segment_modules import DStepPolicySegment
from dynexport.plan.frame_program import (
    DSTEP_SOURCE_DENSE, DSTEP_SOURCE_NONE, DSTEP_SOURCE_TILES, NO_LAYER, NO_TENSOR, DType, GateKind, LayerKind, Op, Role,
)


class PolicyAfterSegment(nn.Module):
    """A dense segment followed by a D-STEP policy on one of its outputs, in one call."""

    def __init__(self, producer: nn.Module, policy: nn.Module, feature_index: int, producer_inputs: int):
        super().__init__()
        self.producer, self.policy = producer, policy
        self.feature_index, self.producer_inputs = feature_index, producer_inputs

    def forward(self, *args):
        outputs = tuple(self.producer(*args[: self.producer_inputs]))
        return outputs + tuple(self.policy(outputs[self.feature_index], *args[self.producer_inputs:]))


def _fuse_into_producer(builder: PlanBuilder, feature: int, policy, extra_inputs, extra_outputs) -> bool:
    """Append the policy to the dense segment that just produced ``feature`` (the last
    instruction, run every frame): one backend call and one method fewer."""
    program = builder.program
    if not program.instructions or program.instructions[-1].op != Op.RUN_SEGMENT:
        return False
    last = program.instructions[-1]
    segment = program.segments[last.a]
    artifact = builder.segments[segment.name]
    outputs = program.segment_outputs(segment)
    if last.b != NO_LAYER or artifact.kind != SegmentKind.DENSE or feature not in outputs:
        return False
    inputs = program.segment_inputs(segment)
    artifact.module = PolicyAfterSegment(artifact.module, policy, outputs.index(feature), len(inputs))
    artifact.example_inputs = artifact.example_inputs + (
        example_tensor(program.tensors[extra_inputs[0]].shape), example_tensor((1,)).abs())
    artifact.kind = SegmentKind.DENSE_POLICY
    segment.input_begin = len(program.operands)
    program.operands.extend(inputs + list(extra_inputs))
    segment.input_count = len(inputs) + len(extra_inputs)
    segment.output_begin = len(program.operands)
    program.operands.extend(outputs + list(extra_outputs))
    segment.output_count = len(outputs) + len(extra_outputs)
    return True


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

    policy_outputs = [t for t in (layer.spatial_logits, layer.channel_logits) if t != NO_TENSOR] + [pooled]
    policy_module = DStepPolicySegment(grid, spatial, channel, conv.in_channels)
    fused = _fuse_into_producer(builder, layer.input, policy_module, [previous_pooled, layer.primed], policy_outputs)
    if not fused:
        policy = builder.add_segment(SegmentArtifact(
            f"{conv.segment_prefix}_policy", policy_module,
            (example_tensor(conv.in_shape), example_tensor((1, conv.in_channels)), example_tensor((1,)).abs()),
            kind=SegmentKind.POLICY),
            [layer.input, previous_pooled, layer.primed], policy_outputs)
        builder.emit(Op.RUN_SEGMENT, policy, NO_LAYER)
    tiles, dense = add_conv_segments(builder, conv, layer)

    builder.emit(Op.DSTEP_DECIDE, index)
    builder.emit(Op.COPY_TENSOR, pooled, previous_pooled)
    to_none = builder.emit(Op.BRANCH_IF_NONE, index)
    to_end = []
    if tiles is not None:  # without a tile path every active frame is dense
        to_dense = builder.emit(Op.BRANCH_IF_DENSE, index) if dense is not None else None
        builder.emit(Op.GATHER_TILES, index)
        builder.emit(Op.RUN_SEGMENT, tiles, index)
        builder.emit(Op.DSTEP_APPLY, index, DSTEP_SOURCE_TILES)
        to_end.append(builder.emit(Op.JUMP))
        if dense is not None:
            builder.patch_target(to_dense, builder.pc)
    if dense is not None:
        builder.emit(Op.RUN_SEGMENT, dense, NO_LAYER)
        builder.emit(Op.DSTEP_APPLY, index, DSTEP_SOURCE_DENSE)
        to_end.append(builder.emit(Op.JUMP))
    builder.patch_target(to_none, builder.pc)
    builder.emit(Op.DSTEP_APPLY, index, DSTEP_SOURCE_NONE)
    for pc in to_end:
        builder.patch_target(pc, builder.pc)
    return index
