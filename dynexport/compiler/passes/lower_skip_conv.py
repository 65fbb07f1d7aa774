"""lower_skip_conv: one ``dynexport.skip_conv2d`` gate -> frame-program control flow plus two
static backend segments.

Emits, for gated layer L with input X and output state Y::

        SKIP_GATE L                  score every block of X against its reference tile
        BRANCH_IF_NONE L  -> end     no active block: Y already holds the output
        BRANCH_IF_DENSE L -> dense   more than L.dense_cutoff active blocks (the tile path,
                                     down to the JUMP, is left out when the cut-off is 0;
                                     on grids of <= 4 blocks the tile path takes every
                                     count and the dense part is left out)
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

import torch.nn.functional as F

from dynexport.compiler.graph import constant
from dynexport.compiler.passes.gated_conv import add_conv_segments, gated_conv, new_layer
from dynexport.compiler.plan_builder import PlanBuilder
from dynexport.nn.skip_conv import kernel_norm, score_threshold
from dynexport.plan.frame_program import NO_LAYER, GateKind, LayerKind, Op, Role

GATE_KINDS = {"input_norm": GateKind.INPUT_NORM, "output_norm": GateKind.OUTPUT_NORM, "gumbel": GateKind.GUMBEL}


def lower_skip_conv(builder: PlanBuilder, step, gm, dense_cutoff: float) -> int:
    (x, weight_node, bias_node, gate_weight_node, gate_bias_node, _ref, _prev, _primed,
     stride, padding, dilation, groups, block, gate, threshold) = step.node.args
    conv = gated_conv(builder, step, gm, weight_node, bias_node, stride, padding, dilation, groups, block, dense_cutoff)
    grid = conv.grid
    layer = new_layer(
        builder, conv, step, kind=LayerKind.SKIP_CONV, gate=GATE_KINDS[gate],
        threshold=score_threshold(gate, threshold),
        norm_scale=float(kernel_norm(conv.weight)) if gate == "output_norm" else 1.0,
        reference=builder.tensor(f"{conv.name}.reference", (grid.num_blocks, conv.in_channels, *grid.tile_size),
                                 Role.STATE),
    )
    if gate == "gumbel":
        gate_kernel = constant(gm, gate_weight_node)[0].permute(1, 2, 0)  # [kh, kw, C]: NHWC order
        layer.gate_weight = builder.program.add_constants(gate_kernel.flatten().tolist())
        layer.gate_weight_count = gate_kernel.numel()
        layer.gate_bias = float(-F.softplus(constant(gm, gate_bias_node))[0])
    index = builder.add_layer(layer, conv.weight)
    tiles, dense = add_conv_segments(builder, conv, layer)

    builder.emit(Op.SKIP_GATE, index)
    to_end = [builder.emit(Op.BRANCH_IF_NONE, index)]
    if tiles is not None:
        to_dense = builder.emit(Op.BRANCH_IF_DENSE, index) if dense is not None else None
        builder.emit(Op.GATHER_TILES, index)
        builder.emit(Op.RUN_SEGMENT, tiles, index)
        builder.emit(Op.SCATTER_TILES, index)
        builder.emit(Op.STORE_REFERENCE, index)
        if dense is not None:
            to_end.append(builder.emit(Op.JUMP))
            builder.patch_target(to_dense, builder.pc)
    if dense is not None:
        builder.emit(Op.RUN_SEGMENT, dense, NO_LAYER)
        builder.emit(Op.COPY_BLOCKS, index)
        builder.emit(Op.STORE_REFERENCE, index)
    for pc in to_end:
        builder.patch_target(pc, builder.pc)
    return index
