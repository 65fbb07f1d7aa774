import torch
from torch import nn
from torch.nn.utils import prune

from dynexport.compiler.passes.fold_constants import fold_constants
from tests.compiler.conftest import count


def test_pruning_reparametrization_becomes_a_plain_weight(exported):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    prune.l1_unstructured(model[0], "weight", amount=0.6)
    prune.ln_structured(model[2], "weight", amount=0.5, n=2, dim=0)
    gm = exported(model)
    x = torch.randn(1, 3, 16, 16)
    before = gm(x)
    assert count(gm, torch.ops.aten.mul.Tensor) == 2
    assert fold_constants(gm) is True
    assert count(gm, torch.ops.aten.mul.Tensor) == 0
    torch.testing.assert_close(gm(x), before, atol=0, rtol=0)
    conv = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default)
    weight = getattr(gm, conv.args[1].target)
    assert (weight == 0).float().mean() >= 0.59  # the zeros of the mask are in the weight


def test_graph_without_constant_arithmetic_is_unchanged(exported):
    gm = exported(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    code = gm.code
    assert fold_constants(gm) is False
    assert gm.code == code
