import pytest
import torch

from dynexport.compiler.frontend import export_graph


def randomize_batchnorms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return model


def count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target == target)


@pytest.fixture
def exported():
    def make(model, shape=(1, 3, 16, 16)):
        return export_graph(randomize_batchnorms(model.eval()), shape)[0]
    return make
