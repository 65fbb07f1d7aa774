"""check_supported_ops: fail early, naming the op and where it is in the user's model, when
a dense segment would contain an op the backends are not known to run.

Leaves the graph unchanged. Run after the folding passes (folded constants need no support).
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from dynexport.compiler.graph import is_gate, is_gate_output, module_path
from dynexport.errors import CompileError

aten = torch.ops.aten
SUPPORTED = {
    aten.conv2d.default, aten.convolution.default, aten.linear.default, aten.addmm.default, aten.mm.default,
    aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardswish.default, aten.hardsigmoid.default,
    aten.sigmoid.default, aten.tanh.default, aten.gelu.default, aten.silu.default, aten.leaky_relu.default,
    aten.clamp.default, aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.add.Scalar,
    aten.mul.Scalar, aten.cat.default, aten.mean.dim, aten.adaptive_avg_pool2d.default,
    aten._adaptive_avg_pool2d.default, aten.avg_pool2d.default, aten.max_pool2d.default,
    aten.max_pool2d_with_indices.default, aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default,
    aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default, aten.view.default, aten.reshape.default,
    aten.flatten.using_ints, aten.permute.default, aten.clone.default, aten.squeeze.dim, aten.unsqueeze.default,
    aten.t.default, aten.expand.default, aten.alias.default, aten.softmax.int, aten._softmax.default,
    aten.constant_pad_nd.default, aten.pad.default, aten._native_batch_norm_legit_no_training.default,
    aten.batch_norm.default, aten.dropout.default, operator.getitem,
}


def check_supported_ops(gm: fx.GraphModule) -> bool:
    problems = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or is_gate(node) or is_gate_output(node):
            continue
        if node.target not in SUPPORTED:
            problems.append(f"{node.target} at {module_path(node)}")
    if problems:
        raise CompileError(
            "unsupported op(s): " + "; ".join(problems) + ". dynexport compiles convolutional video models "
            "(convolutions, pooling, activations, elementwise arithmetic, upsampling, linear layers); "
            "replace the op or report it with the model so it can be added"
        )
    return False
