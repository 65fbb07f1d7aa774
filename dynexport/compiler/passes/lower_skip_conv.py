"""lower_skip_conv: one ``dynexport.skip_conv2d`` gate -> frame-program control flow plus two
static backend segments.

Emits, for gated layer L with input X and output state Y::

        SKIP_GATE L                  score every block of X against its reference tile
        BRANCH_IF_NONE L  -> end     no active block: Y already holds the output
        BRANCH_IF_DENSE L -> dense   more than L.dense_cutoff active blocks
        GATHER_TILES L               X -> packed NHWC tiles [K, th, tw, C] (halo, zero padding)
        RUN_SEGMENT L_tiles (batch K)  tiles -> [K, b, b, Co]
        SCATTER_TILES L              -> active blocks of Y (border blocks clipped)
        STORE_REFERENCE L            active blocks' tiles of X -> reference
        JUMP end
    dense:
        RUN_SEGMENT L_dense          X -> [1, Ho, Wo, Co]
        COPY_BLOCKS L                active blocks only: inactive blocks keep their output
        STORE_REFERENCE L
    end:

Before: a GateStep of partition_at_gates (BatchNorm already folded into its weights).
After: Y is a state tensor bound to the gate's output value; the reference semantics of
``dynexport.nn.skip_conv`` hold exactly (same decisions; outputs equal up to float rounding
of the convolution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dynexport.compiler.graph import constant, module_path
from dynexport.compiler.plan_builder import PlanBuilder, SegmentArtifact, example_tensor
from dynexport.compiler.segment_modules import ConvSegment
from dynexport.nn.skip_conv import kernel_norm, make_grid, score_threshold
from dynexport.plan.frame_program import NO_LAYER, DType, GateKind, Layer, LayerKind, Op, Role

GATE_KINDS = {"input_norm": GateKind.INPUT_NORM, "output_norm": GateKind.OUTPUT_NORM, "gumbel": GateKind.GUMBEL}


def dense_cutoff_blocks(num_blocks: int, fraction: float) -> int:
    return max(0, min(num_blocks, math.floor(fraction * num_blocks)))


def lower_skip_conv(builder: PlanBuilder, step, gm, dense_cutoff: float) -> int:
    node = step.node
    (x, weight_node, bias_node, gate_weight_node, gate_bias_node, _ref, _prev, _primed,
     stride, padding, dilation, groups, block, gate, threshold) = node.args
    name = _layer_name(node, builder)
    weight = constant(gm, weight_node)
    bias = constant(gm, bias_node)
    in_shape = builder.value_shapes[step.input]
    grid = make_grid(in_shape, weight.shape, stride, padding, dilation, block)
    out_channels, in_channels = weight.shape[0], in_shape[1]
    out_shape = (1, out_channels, *grid.output_size)
    th, tw = grid.tile_size
    cutoff = dense_cutoff_blocks(grid.num_blocks, dense_cutoff)
    max_batch = max(1, cutoff)

    output = builder.tensor(f"{name}.output", out_shape, Role.STATE)
    builder.bind_value(step.output, output, out_shape)
    layer = Layer(
        name=name, kind=LayerKind.SKIP_CONV, gate=GATE_KINDS[gate],
        input_size=grid.input_size, kernel=grid.kernel, stride=grid.stride, padding=grid.padding,
        dilation=grid.dilation, block=grid.block, in_channels=in_channels, out_channels=out_channels,
        dense_cutoff=cutoff, threshold=score_threshold(gate, threshold),
        norm_scale=float(kernel_norm(weight)) if gate == "output_norm" else 1.0,
        input=builder.value_tensors[step.input], output=output,
        reference=builder.tensor(f"{name}.reference", (grid.num_blocks, in_channels, th, tw), Role.STATE),
        tiles=builder.tensor(f"{name}.tiles", (max_batch, in_channels, th, tw), Role.SCRATCH),
        tile_output=builder.tensor(f"{name}.tile_output", (max_batch, out_channels, grid.block, grid.block), Role.SCRATCH),
        dense_output=builder.tensor(f"{name}.dense_output", out_shape, Role.SCRATCH),
        primed=builder.tensor(f"{name}.primed", (1,), Role.STATE),
        active=builder.tensor(f"{name}.active", (grid.num_blocks + 1,), Role.SCRATCH, DType.INT32),
    )
    if gate == "gumbel":
        gate_kernel = constant(gm, gate_weight_node)[0].permute(1, 2, 0)  # [kh, kw, C]: NHWC order
        layer.gate_weight = builder.program.add_constants(gate_kernel.flatten().tolist())
        layer.gate_weight_count = gate_kernel.numel()
        layer.gate_bias = float(-F.softplus(constant(gm, gate_bias_node))[0])
    index = builder.add_layer(layer, weight)

    conv_args = (stride, [0, 0], dilation, groups)
    tiles = builder.add_segment(SegmentArtifact(
        f"{_segment_name(name)}_tiles", ConvSegment(weight, bias, *conv_args),
        (example_tensor((max_batch, in_channels, th, tw)),), max_batch=max_batch, kind="tiles"),
        [layer.tiles], [layer.tile_output])
    dense = builder.add_segment(SegmentArtifact(
        f"{_segment_name(name)}_dense", ConvSegment(weight, bias, stride, padding, dilation, groups),
        (example_tensor(in_shape),), kind="dense"),
        [layer.input], [layer.dense_output])

    builder.emit(Op.SKIP_GATE, index)
    to_end = [builder.emit(Op.BRANCH_IF_NONE, index)]
    to_dense = builder.emit(Op.BRANCH_IF_DENSE, index)
    builder.emit(Op.GATHER_TILES, index)
    builder.emit(Op.RUN_SEGMENT, tiles, index)
    builder.emit(Op.SCATTER_TILES, index)
    builder.emit(Op.STORE_REFERENCE, index)
    to_end.append(builder.emit(Op.JUMP))
    builder.patch_target(to_dense, builder.pc)
    builder.emit(Op.RUN_SEGMENT, dense, NO_LAYER)
    builder.emit(Op.COPY_BLOCKS, index)
    builder.emit(Op.STORE_REFERENCE, index)
    for pc in to_end:
        builder.patch_target(pc, builder.pc)
    return index


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


def _segment_name(layer_name: str) -> str:
    return "layer_" + "".join(c if c.isalnum() else "_" for c in layer_name)
