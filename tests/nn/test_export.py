"""In eval mode every gate is exactly one custom-op node in torch.export's graph, with its
parameters and state as explicit inputs, and the exported program computes the reference."""

import torch
from torch import nn

import dynexport
from dynexport.nn import DStepConv2d, Residual, SkipConv2d

GATE_OPS = {torch.ops.dynexport.skip_conv2d.default: "skip", torch.ops.dynexport.dstep_conv2d.default: "dstep"}


def small_model():
    return nn.Sequential(
        SkipConv2d(3, 8, 3, stride=2, padding=1, gate="gumbel"), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, gate="input_norm"), nn.ReLU(),
                               SkipConv2d(8, 8, 3, padding=2, dilation=2, groups=8, gate="output_norm"))),
        DStepConv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()


def export(model, x):
    dynexport.reset(model)
    dynexport.step(model, x)  # allocates state at this resolution
    dynexport.reset(model)
    return torch.export.export(model, (x,))


def gate_nodes(program):
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target in GATE_OPS]


def test_one_custom_op_node_per_gate():
    model = small_model()
    program = export(model, torch.randn(1, 3, 37, 29))
    nodes = gate_nodes(program)
    assert [GATE_OPS[n.target] for n in nodes] == ["skip", "skip", "skip", "dstep"]
    # no gate arithmetic leaked into the graph: only the gate ops touch the state buffers
    state_inputs = {spec.arg.name for spec in program.graph_signature.input_specs
                    if spec.target and any(s in spec.target for s in ("reference_tiles", "previous_output", "previous_pooled"))}
    assert len(state_inputs) == 3 * 2 + 2
    for node in program.graph.nodes:
        if any(getattr(a, "name", None) in state_inputs for a in node.args) and node.target not in GATE_OPS:
            assert node.target == torch.ops.aten.copy_.default, node.format_node()


def test_gate_node_carries_parameters_and_state():
    model = small_model()
    program = export(model, torch.randn(1, 3, 32, 32))
    first = gate_nodes(program)[0]
    names = [getattr(a, "name", a) for a in first.args]
    assert names[0] in ("x", "input")  # the user input
    assert "conv_weight" in names[1] and "gate_conv_weight" in names[3]
    assert "reference_tiles" in names[5] and "previous_output" in names[6] and "primed" in names[7]
    assert names[8:] == [[2, 2], [1, 1], [1, 1], 1, 8, "gumbel", 0.5]


def test_exported_program_streams_like_the_module():
    model = small_model()
    x = torch.randn(1, 3, 32, 32)
    program = export(model, x)
    module = program.module()
    clip = [x + 0.05 * t * (torch.arange(32) > 16).float() for t in range(4)]
    with torch.no_grad():
        want = list(dynexport.stream(model, clip))
        got = [module(frame) for frame in clip]
    for t, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"frame {t}")
