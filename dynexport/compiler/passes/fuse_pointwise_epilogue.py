"""fuse_pointwise_epilogue: a pointwise dense step right after a skip-conv gate becomes the
epilogue of that gate's convolution.

A skip-conv layer's output state Y holds, block by block, either this frame's convolution or
an earlier frame's. A pointwise function f (activation, per-channel affine) applied to Y
gives, block by block, f of this frame's convolution or f of the earlier one -- exactly what
storing f(conv) in the state gives. So the dense step ``f`` that ran over the whole map
every time any block changed (a MobileNet's ReLU6 between two gated convolutions) moves
into the layer's tile and dense segments and runs on the active tiles only (SIGE-style
epilogue fusion, issue 14).

Fused when: the gate is a skip conv (D-STEP writes 0 for skipped channels, and f(0) need
not be 0); the step that follows reads only the gate's output, and nothing else reads it;
the step has one output of the same batch, height and width (a 1x1 convolution may change the
channels: the heatmap head's last layer); every op is in ``POINTWISE_OPS`` or is a 1x1
convolution of stride 1 without padding; and the step, run on two crops of a random map,
gives the crops of its result (which catches constants that broadcast over space, not per
channel).

Invariant after: each fused ``GateStep`` has ``epilogue`` set and ``output`` renamed to the
step's output value; the fused ``DenseStep`` is gone. Running the steps in order still
reproduces the graph. Run after partition_at_gates.
"""

from __future__ import annotations

import functools
import operator

import torch

from dynexport.compiler.graph import SKIP_CONV
from dynexport.compiler.passes.partition_at_gates import DenseStep, GateStep, PartitionedGraph

_aten = torch.ops.aten
# ops that compute each output element from the same position of their operands (broadcast
# constants aside): a segment of only these never mixes pixels
POINTWISE_OPS = {
    _aten.relu.default, _aten.relu_.default, _aten.hardtanh.default, _aten.hardswish.default,
    _aten.hardsigmoid.default, _aten.sigmoid.default, _aten.tanh.default, _aten.gelu.default, _aten.silu.default,
    _aten.leaky_relu.default, _aten.clamp.default, _aten.add.Tensor, _aten.sub.Tensor, _aten.mul.Tensor,
    _aten.div.Tensor, _aten.add.Scalar, _aten.mul.Scalar, _aten.clone.default, _aten.alias.default,
    _aten._native_batch_norm_legit_no_training.default, _aten.batch_norm.default, _aten.dropout.default,
    operator.getitem,
}

# the crop the numeric check compares: small enough to be cheap, not 1x1 (which broadcasts
# against anything)
_CHECK_CROP = 3


def is_pointwise(module) -> bool:
    """Whether a segment's module has only POINTWISE_OPS and 1x1 convolutions of stride 1
    without padding (a per-pixel matrix product: pointwise in space, channels may change)."""
    return all(node.target in POINTWISE_OPS or _is_pixelwise_convolution(module, node)
               for node in module.graph.nodes if node.op == "call_function")


def _is_pixelwise_convolution(module, node) -> bool:
    if node.target != _aten.conv2d.default:
        return False
    args = list(node.args) + [None] * (7 - len(node.args))
    weight = args[1]
    if getattr(weight, "op", None) == "get_attr":
        weight = functools.reduce(getattr, weight.target.split("."), module)
    elif hasattr(weight, "meta"):
        weight = weight.meta.get("val")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or tuple(weight.shape[-2:]) != (1, 1):
        return False
    stride, padding = node.kwargs.get("stride", args[3]), node.kwargs.get("padding", args[4])
    return _all_equal(stride, 1) and _all_equal(padding, 0)


def _all_equal(value, default) -> bool:
    if value is None:
        return True
    return all(v == default for v in (value if isinstance(value, (list, tuple)) else [value]))


def fuse_pointwise_epilogue(partitioned: PartitionedGraph) -> int:
    """Fuses in place; returns how many dense steps became epilogues."""
    steps, fused = partitioned.steps, 0
    i = 0
    while i + 1 < len(steps):
        gate, after = steps[i], steps[i + 1]
        if isinstance(gate, GateStep) and isinstance(after, DenseStep) and _fusible(partitioned, i):
            gate.epilogue = after.module
            gate.output = after.outputs[0]
            del steps[i + 1]
            fused += 1
        i += 1
    return fused


def _fusible(partitioned: PartitionedGraph, position: int) -> bool:
    gate, after = partitioned.steps[position], partitioned.steps[position + 1]
    if gate.node.target != SKIP_CONV:
        return False
    if after.inputs != [gate.output] or len(after.outputs) != 1:
        return False
    read_later = {v for step in partitioned.steps[position + 2:]
                  for v in (step.inputs if isinstance(step, DenseStep) else [step.input])}
    if gate.output in read_later or gate.output == partitioned.output:
        return False
    shape, fused_shape = partitioned.shapes[gate.output], partitioned.shapes[after.outputs[0]]
    same_pixels = len(fused_shape) == 4 and (fused_shape[0], *fused_shape[2:]) == (shape[0], *shape[2:])
    if len(shape) != 4 or not same_pixels or not is_pointwise(after.module):
        return False
    return _commutes_with_crops(after.module, shape)


@torch.no_grad()
def _commutes_with_crops(module, shape) -> bool:
    """f(x)[crop] == f(x[crop]) for a batch of two crops of a random map."""
    _, channels, height, width = shape
    crop_h, crop_w = min(_CHECK_CROP, height), min(_CHECK_CROP, width)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    corners = ((0, 0), (height - crop_h, width - crop_w))
    crops = torch.cat([x[:, :, r:r + crop_h, c:c + crop_w] for r, c in corners]).contiguous(
        memory_format=torch.channels_last)
    try:
        whole = module(x)[0]
        cropped = module(crops)[0]
    except (RuntimeError, ValueError, IndexError):
        return False  # a shape the step cannot take: something in it depends on the map's size
    expected = torch.cat([whole[:, :, r:r + crop_h, c:c + crop_w] for r, c in corners])
    return cropped.shape == expected.shape and torch.allclose(cropped, expected, rtol=1e-5, atol=1e-6)
