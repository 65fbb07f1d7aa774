"""dynexport.prune.magnitude / synflow leave the requested fraction of channels zero, as
torch.nn.utils.prune masks."""

import pytest
import torch

import dynexport
from dynexport.errors import CompileError
from dynexport.pruning.channel_groups import channel_groups
from dynexport.pruning.compaction import zero_channels
from tests.pruning.models import SHAPE, make


def _zero_fraction(model):
    groups = channel_groups(model, SHAPE)
    total = sum(g.channels for g in groups)
    zero = 0
    for group in groups:
        module, pairs = group.producers[0]
        conv = getattr(module, "conv", module)
        weight = conv.weight.detach().flatten(1)
        zero += sum(1 for _, own in pairs if bool((weight[own] == 0).all()))
    return zero / total


@pytest.mark.parametrize("method", ["magnitude", "synflow"])
@pytest.mark.parametrize("name", ["plain", "gated", "gated_depthwise"])
def test_requested_fraction_of_channels_is_zero(method, name):
    model = make(name)
    assert zero_channels(model) == 0
    count = getattr(dynexport.prune, method)(model, 0.5, input_shape=SHAPE)
    assert count > 0
    assert _zero_fraction(model) == pytest.approx(0.5, abs=0.05)
    assert any(hasattr(m, "weight_mask") for m in model.modules())


def test_magnitude_zeroes_the_smallest_channels():
    model = make("plain")
    with torch.no_grad():
        model[0].weight[[1, 5]] *= 1e-3
    dynexport.prune.magnitude(model, 0.25, input_shape=SHAPE)
    zero = (model[0].weight.detach().flatten(1) == 0).all(1).nonzero().flatten().tolist()
    assert zero == [1, 5]


def test_synflow_never_empties_a_layer():
    model = make("plain")
    dynexport.prune.synflow(model, 0.9, input_shape=SHAPE, iterations=5)
    for layer in (model[0], model[3]):
        assert not (layer.weight.detach().flatten(1) == 0).all(1).all()


@pytest.mark.parametrize("amount, structured", [(1.0, True), (-0.1, True), (0.5, False)])
def test_bad_arguments_name_the_fix(amount, structured):
    with pytest.raises(CompileError, match="prune"):
        dynexport.prune.magnitude(make("plain"), amount, structured=structured)


@pytest.mark.parametrize("method", ["magnitude", "synflow"])
def test_round_to_keeps_a_multiple_of_the_simd_width(method):
    model = make("plain")  # 8 and 12 channels
    assert getattr(dynexport.prune, method)(model, 0.5, input_shape=SHAPE, round_to=4) > 0
    kept = [int((layer.weight.detach().flatten(1) != 0).any(1).sum()) for layer in (model[0], model[3])]
    assert all(k % 4 == 0 and k > 0 for k in kept), kept
    if method == "magnitude":  # per group: 50 % of 8 and of 12, rounded up to multiples of 4
        assert kept == [4, 8]
    narrow = make("plain")  # a group narrower than round_to is left whole
    assert getattr(dynexport.prune, method)(narrow, 0.5, input_shape=SHAPE, round_to=16) == 0
