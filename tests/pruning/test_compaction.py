"""compact: zeroed channels are removed through every coupling, and the result equals the
masked model within 1e-5 on streamed frames."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import dynexport
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
