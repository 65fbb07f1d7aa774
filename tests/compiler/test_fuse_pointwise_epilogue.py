"""fuse_pointwise_epilogue: which pointwise steps after a skip-conv gate move into its
segments, and that the fused segments compute what the separate step did."""

import torch
import torch.nn.functional as F
from torch import nn

from dynexport.compiler.frontend import export_graph
from dynexport.compiler.passes.fuse_pointwise_epilogue import fuse_pointwise_epilogue
from dynexport.compiler.passes.partition_at_gates import DenseStep, GateStep, partition_at_gates
from dynexport.compiler.pipeline import compile_model
from dynexport.nn import DStepConv2d, SkipConv2d
from dynexport.plan.frame_program import NO_LAYER, Op

SHAPE = (1, 3, 32, 32)


def partitioned(model, shape=SHAPE):
    return partition_at_gates(export_graph(model.eval(), shape)[0])


def kinds(steps):
    return ["gate" if isinstance(s, GateStep) else "dense" for s in steps]


def test_relu6_between_two_gated_convs_becomes_the_first_ones_epilogue():
    graph = partitioned(nn.Sequential(SkipConv2d(3, 8, 3, padding=1), nn.ReLU6(), SkipConv2d(8, 4, 3, padding=1)))
    assert kinds(graph.steps) == ["gate", "dense", "gate"]
    relu_output = graph.steps[1].outputs[0]
    assert fuse_pointwise_epilogue(graph) == 1
    assert kinds(graph.steps) == ["gate", "gate"]
    first, second = graph.steps
    assert first.epilogue is not None and first.output == relu_output and second.input == relu_output


def test_the_fused_segments_compute_the_convolution_then_the_epilogue():
    model = nn.Sequential(SkipConv2d(3, 8, 3, padding=1, block=8), nn.ReLU6(), SkipConv2d(8, 4, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].conv.weight.mul_(8)  # push part of the output past 6
    compiled = compile_model(model, SHAPE)
    program = compiled.program
    assert "fuse_pointwise_epilogue" in compiled.passes
    ungated = [ins for ins in program.instructions if ins.op == Op.RUN_SEGMENT and ins.b == NO_LAYER
               and not program.segments[ins.a].name.startswith("layer_")]
    assert ungated == []  # no whole-map ReLU6 left
    conv = model[0].conv
    tiles = compiled.segments["layer_0_tiles"].module
    x = torch.randn(5, 3, 10, 10)
    expected = F.relu6(F.conv2d(x, conv.weight, conv.bias))
    assert expected.max() == 6 and expected.min() == 0
    torch.testing.assert_close(tiles(x)[0], expected)
    dense = compiled.segments["layer_0_dense"].module
    x = torch.randn(SHAPE)
    torch.testing.assert_close(dense(x)[0], F.relu6(F.conv2d(x, conv.weight, conv.bias, padding=1)))


class ReadTwice(nn.Module):
    """The gate's output is read by the activation and by the residual add after it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = SkipConv2d(3, 8, 3, padding=1), SkipConv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.relu(y)) + y


class SpatialScale(nn.Module):
    """A constant that varies over space: not pointwise per channel."""

    def __init__(self):
        super().__init__()
        self.a, self.b = SkipConv2d(3, 8, 3, padding=1), SkipConv2d(8, 8, 3, padding=1)
        self.register_buffer("ramp", torch.linspace(0, 1, 32).reshape(1, 1, 1, 32))

    def forward(self, x):
        return self.b(self.a(x) * self.ramp)


def test_not_fused_when_the_gate_output_is_read_again_later():
    graph = partitioned(ReadTwice())
    assert fuse_pointwise_epilogue(graph) == 0


def test_not_fused_when_a_constant_varies_over_space():
    graph = partitioned(SpatialScale())
    assert kinds(graph.steps) == ["gate", "dense", "gate"]
    assert fuse_pointwise_epilogue(graph) == 0


def test_not_fused_after_a_dstep_gate_whose_skipped_channels_are_zero():
    graph = partitioned(nn.Sequential(DStepConv2d(3, 8, 3, padding=1, patch=8), nn.Sigmoid(),
                                      SkipConv2d(8, 4, 3, padding=1)))
    assert fuse_pointwise_epilogue(graph) == 0


def test_not_fused_when_the_step_mixes_pixels():
    graph = partitioned(nn.Sequential(SkipConv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                      SkipConv2d(8, 4, 3, padding=1)))
    assert isinstance(graph.steps[1], DenseStep)
    assert fuse_pointwise_epilogue(graph) == 0


def test_a_1x1_convolution_that_changes_the_channels_is_fused_too():
    """ReLU + a 1x1 convolution 8 -> 2 (a heatmap head's last layer) after the last gated
    layer: pointwise in space, so it becomes the epilogue; the layer's state holds its 2
    channels and is the plan's output. A strided or padded 1x1 convolution mixes pixels and is
    not fused."""
    model = nn.Sequential(SkipConv2d(3, 8, 3, padding=1, block=8), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    compiled = compile_model(model, SHAPE)
    program = compiled.program
    assert [s.name for s in program.segments] == ["layer_0_tiles", "layer_0_dense"]
    layer = program.layers[0]
    assert layer.out_channels == 2 and program.outputs == [layer.output]
    x = torch.randn(5, 3, 10, 10)
    conv, head = model[0].conv, model[2]
    expected = F.conv2d(F.relu(F.conv2d(x, conv.weight, conv.bias)), head.weight, head.bias)
    torch.testing.assert_close(compiled.segments["layer_0_tiles"].module(x)[0], expected)
    for mixing in (nn.Conv2d(8, 2, 1, stride=2), nn.Conv2d(8, 2, 1, padding=1)):
        graph = partitioned(nn.Sequential(SkipConv2d(3, 8, 3, padding=1), nn.ReLU(), mixing))
        assert fuse_pointwise_epilogue(graph) == 0
