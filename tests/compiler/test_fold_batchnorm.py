import pytest
import torch
from torch import nn

from dynexport.compiler.graph import constant

from dynexport.compiler.passes.fold_batchnorm import fold_batchnorm
from dynexport.nn import DStepConv2d, SkipConv2d
from tests.compiler.conftest import count

BN = torch.ops.aten.batch_norm.default


def test_conv_and_gate_batchnorms_fold_and_numerics_hold(exported):
    gm = exported(nn.Sequential(SkipConv2d(3, 8, 3, padding=1, gate="output_norm", threshold=0.3),
                                nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4)))
    x = torch.randn(1, 3, 16, 16)
    before = gm(x)
    assert count(gm, BN) == 2
    assert fold_batchnorm(gm) is True
    assert count(gm, BN) == 0
    torch.testing.assert_close(gm(x), before, atol=1e-5, rtol=1e-5)


def test_output_norm_threshold_is_rescaled_so_decisions_do_not_change(exported):
    model = nn.Sequential(SkipConv2d(3, 8, 3, padding=1, gate="output_norm", threshold=0.3), nn.BatchNorm2d(8))
    gm = exported(model)
    original_norm = float(model[0].conv.weight.flatten(1).norm(dim=1).max())
    fold_batchnorm(gm)
    gate = next(n for n in gm.graph.nodes if n.target == torch.ops.dynexport.skip_conv2d.default)
    folded_norm = float(constant(gm, gate.args[1]).flatten(1).norm(dim=1).max())
    # ||r|| * max||w'|| > t'  <=>  ||r|| * max||w|| > t
    assert gate.args[14] == pytest.approx(0.3 * folded_norm / original_norm, rel=1e-5)
    assert folded_norm != pytest.approx(original_norm)


def test_leaves_batchnorm_after_add_and_dstep_with_channel_policy_alone(exported):
    class AddThenBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x) + x)

    gm = exported(AddThenBN())
    assert fold_batchnorm(gm) is False and count(gm, BN) == 1
    gm = exported(nn.Sequential(DStepConv2d(3, 4, 3, padding=1, channel=True), nn.BatchNorm2d(4)))
    assert fold_batchnorm(gm) is False and count(gm, BN) == 1
    gm = exported(nn.Sequential(DStepConv2d(3, 4, 3, padding=1, spatial=True, channel=False), nn.BatchNorm2d(4)))
    assert fold_batchnorm(gm) is True and count(gm, BN) == 0


def test_core_aten_batchnorm_form_folds_too():
    """A .pt2 saved after run_decompositions() carries the core ATen batch norm."""
    from dynexport.compiler.frontend import _strip_state_updates
    from tests.compiler.conftest import randomize_batchnorms

    model = randomize_batchnorms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval())
    x = torch.randn(1, 3, 12, 12)
    gm = torch.export.export(model, (x,)).run_decompositions().module()
    _strip_state_updates(gm)
    core = torch.ops.aten._native_batch_norm_legit_no_training.default
    assert count(gm, core) == 1
    assert fold_batchnorm(gm) is True and count(gm, core) == 0
    torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)
