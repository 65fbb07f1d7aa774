"""compact: zeroed channels are removed through every coupling, and the result equals the
masked model within 1e-5 on streamed frames."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import dynexport
from dynexport.nn import DStepConv2d, SkipConv2d
from dynexport.errors import CompileError
from dynexport.pruning.compaction import compact, max_output_difference
from tests.pruning.models import ARCHITECTURES, SHAPE, make


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_compacted_model_equals_the_masked_one(name):
    model = make(name)
    zeroed = dynexport.prune.magnitude(model, 0.5, input_shape=SHAPE)
    assert zeroed > 0
    result = compact(model, SHAPE)
    assert result.removed_channels == zeroed
    assert sum(s.macs for s in result.after.values()) < sum(s.macs for s in result.before.values())
    # checked independently of compact's own check, on more frames and another clip
    assert max_output_difference(model, result.model, SHAPE, frames=4, seed=7) <= 1e-5
    # the masked model itself keeps its masks
    assert any(hasattr(m, "weight_mask") for m in model.modules())


def test_ln_structured_masks_on_convs_without_batchnorm_are_removed():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    for layer in (model[0], model[2]):
        torch_prune.ln_structured(layer, "weight", amount=0.5, n=2, dim=0)
        torch_prune.custom_from_mask(layer, "bias", layer.weight_mask.flatten(1).any(1).float())
    result = compact(model, SHAPE)
    assert result.removed_channels == 8
    assert [result.after[n].out_channels for n in ("0", "2", "4")] == [4, 4, 4]


def test_zero_conv_channel_before_a_shifting_batchnorm_is_kept():
    model = make("plain")
    with torch.no_grad():
        model[0].weight[:3] = 0
        model[0].bias[:3] = 0  # BatchNorm 1 still shifts these channels to non-zero constants
    result = compact(model, SHAPE)
    assert result.removed_channels == 0
    assert result.after["0"].out_channels == 8


def test_an_op_that_does_not_keep_zero_blocks_its_group():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sigmoid(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 0
        model[0].bias[:4] = 0
    result = compact(model, SHAPE)
    assert result.removed_channels == 0 and result.kept_zero_channels
    assert max_output_difference(model, result.model, SHAPE, frames=2, seed=0) <= 1e-5


def test_model_without_zero_channels_is_unchanged():
    model = make("residual")
    result = compact(model, SHAPE)
    assert not result.changed
    assert {n: (s.in_channels, s.out_channels) for n, s in result.after.items()} == \
        {n: (s.in_channels, s.out_channels) for n, s in result.before.items()}


def test_depthwise_gated_layers_lose_their_channels_in_and_out():
    model = make("gated_depthwise")
    dynexport.prune.magnitude(model, 0.5, input_shape=SHAPE)
    result = compact(model, SHAPE)
    for name, hidden in (("3.body.3", 16), ("4.body.3", 12), ("5.body.3", 16)):
        layer = result.model.get_submodule(name)
        assert layer.conv.groups == layer.conv.in_channels == layer.conv.out_channels == hidden // 2
        assert result.after[name].macs == result.before[name].macs // 2
    assert type(result.model.get_submodule("3.body.3")) is SkipConv2d  # the stand-in class is gone
    assert type(model.get_submodule("5.body.3")) is DStepConv2d
    assert result.model.get_submodule("4.body.3").gate_conv.in_channels == 6
    assert max_output_difference(model, result.model, SHAPE, frames=4, seed=7) <= 1e-5


def test_grouped_and_spatial_policy_layers_keep_their_channels_and_say_why():
    hidden = 16
    grouped = nn.Sequential(nn.Conv2d(3, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1, groups=4),
                            nn.ReLU(), nn.Conv2d(hidden, 4, 1)).eval()
    spatial = nn.Sequential(nn.Conv2d(3, hidden, 1), nn.ReLU(),
                            DStepConv2d(hidden, hidden, 3, padding=1, groups=hidden, spatial=True, channel=False,
                                        patch=4), nn.ReLU(), nn.Conv2d(hidden, 4, 1)).eval()
    for model, reason in ((grouped, "grouped but not depthwise"), (spatial, "spatial policy")):
        assert dynexport.prune.magnitude(model, 0.5, input_shape=SHAPE) == 0  # nothing zeroed that cannot go
        with torch.no_grad():  # every producer of channels 0-3 zero, as dynexport.prune would leave them
            for layer in (model[0], getattr(model[2], "conv", model[2])):
                layer.weight[:4] = 0
                layer.bias[:4] = 0
        result = compact(model, SHAPE)
        assert result.removed_channels == 0
        assert any(reason in why for why in result.kept_zero_channels.values()), result.kept_zero_channels
        assert max_output_difference(model, result.model, SHAPE, frames=2, seed=0) <= 1e-5
