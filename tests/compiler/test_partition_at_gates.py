import torch
from torch import nn

from dynexport.compiler.passes.partition_at_gates import DenseStep, GateStep, partition_at_gates
from dynexport.nn import Residual, SkipConv2d


def run_steps(partitioned, x):
    """Execute the steps in order, gates by their eager op: must reproduce the graph."""
    values = {partitioned.input: x}
    gm = partitioned.graph_module
    for step in partitioned.steps:
        if isinstance(step, DenseStep):
            outs = step.module(*[values[v] for v in step.inputs])
            values.update(zip(step.outputs, outs))
        else:
            args = torch.fx.node.map_arg(step.node.args, lambda n: values[n.name] if n.op != "get_attr"
                                         else gm.get_buffer(n.target) if n.target in dict(gm.named_buffers())
                                         else gm.get_parameter(n.target))
            values[step.output] = step.node.target(*args)[0]
    return values[partitioned.output]


def test_residual_model_cuts_into_dense_gate_dense_gate_dense(exported):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1), nn.ReLU(), SkipConv2d(8, 8, 3, padding=1))),
        nn.Conv2d(8, 2, 1),
    )
    gm = exported(model)
    partitioned = partition_at_gates(gm)
    kinds = [type(s).__name__ for s in partitioned.steps]
    assert kinds == ["DenseStep", "GateStep", "DenseStep", "GateStep", "DenseStep"]
    first, relu_between, last = partitioned.steps[0], partitioned.steps[2], partitioned.steps[4]
    assert first.inputs == [partitioned.input]
    # the residual's skip value leaves the first segment and is read by the last one
    assert len(first.outputs) == 1 and first.outputs[0] in last.inputs
    assert len(last.inputs) == 2 and last.outputs == [partitioned.output]
    assert relu_between.inputs == [partitioned.steps[1].output]
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(run_steps(partitioned, x), gm(x))
    assert all(len(partitioned.shapes[v]) == 4 for s in partitioned.steps if isinstance(s, DenseStep) for v in s.outputs)


def test_model_without_gates_is_one_dense_step(exported):
    gm = exported(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    partitioned = partition_at_gates(gm)
    assert len(partitioned.steps) == 1 and isinstance(partitioned.steps[0], DenseStep)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(run_steps(partitioned, x), gm(x))


def test_gate_as_first_and_last_layer(exported):
    gm = exported(nn.Sequential(SkipConv2d(3, 4, 3, padding=1), SkipConv2d(4, 4, 3, padding=1)))
    partitioned = partition_at_gates(gm)
    assert [type(s) for s in partitioned.steps] == [GateStep, GateStep]
    assert partitioned.steps[0].input == partitioned.input
    assert partitioned.steps[1].output == partitioned.output
