"""convert: plain torch networks -> norm-gated SkipConv2d layers with the same weights; at
threshold 0 the converted model streams the same outputs as the original, frame by frame."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import dynexport
from architectures import ARCHITECTURES, resnet_like, unet_like
from dynexport import video
from dynexport.errors import ConversionError, DynexportError
from dynexport.nn import SkipConv2d, gated_layers


def static_camera(frames=8, size=32):
    clip = video.generate("static_camera", seed=3, frames=frames, height=size, width=size)
    return torch.from_numpy(clip.as_float())


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("gate", ["input_norm", "output_norm"])
def test_threshold_zero_equals_the_original_on_every_frame(architecture, gate):
    original = ARCHITECTURES[architecture]()
    conversion = dynexport.convert(original, gate=gate, block=4, threshold=0.0)
    convs = [m for m in original.modules() if isinstance(m, nn.Conv2d)]
    assert len(conversion.converted) == len(convs) and not conversion.skipped
    assert not any(isinstance(m, SkipConv2d) for m in original.modules()), "not in place: the original is untouched"
    clip = static_camera()
    # a still pair of frames, so some blocks are really skipped and the equality means something
    clip = torch.cat([clip[:4], clip[3:4], clip[4:]])
    skipped_blocks = 0
    with torch.no_grad():
        for t, output in enumerate(dynexport.stream(conversion.model, clip)):
            expected = original(clip[t:t + 1])
            assert torch.allclose(output, expected, rtol=0, atol=1e-5), (architecture, t)
            skipped_blocks += sum(int((~layer.last_decisions).sum()) for _, layer in gated_layers(conversion.model))
    assert skipped_blocks > 0


def test_weights_are_carried_and_geometry_kept():
    original = resnet_like()
    conversion = dynexport.convert(original, input_shape=(1, 3, 32, 32))
    by_path = {layer.path: layer for layer in conversion.converted}
    for path, conv in original.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        gated = conversion.model.get_submodule(path)
        assert isinstance(gated, SkipConv2d)
        assert torch.equal(gated.weight, conv.weight)
        assert (gated.bias is None) == (conv.bias is None)
        assert gated.conv.stride == conv.stride and gated.conv.dilation == conv.dilation
        assert gated.conv.groups == conv.groups and gated.conv.padding == conv.padding
        assert by_path[path].grid is not None
    kinds = {layer.kind for layer in conversion.converted}
    assert {"dense", "pointwise", "grouped"} <= kinds
    stem = by_path["0.0"]
    assert stem.grid.input_size == (32, 32) and stem.grid.output_size == (16, 16) and stem.grid.blocks == (2, 2)


def test_depthwise_is_reported_with_its_gate_cost():
    conversion = dynexport.convert(ARCHITECTURES["mobilenet_v2_like"]())
    depthwise = [layer for layer in conversion.converted if layer.kind == "depthwise"]
    assert depthwise and all(layer.gate_cost == 1.0 for layer in depthwise)
    assert all(layer.gate_cost < 1.0 for layer in conversion.converted if layer.kind != "depthwise")


def test_inplace_replaces_the_model_s_own_layers_and_shares_parameters():
    model = unet_like()
    weight = model.enc1[0].weight
    conversion = dynexport.convert(model, inplace=True)
    assert conversion.model is model
    assert isinstance(model.enc1[0], SkipConv2d) and model.enc1[0].weight is weight


def test_include_exclude_and_thresholds_per_path():
    model = unet_like()
    conversion = dynexport.convert(model, include=["enc1.*", "dec*"], exclude=["dec1.*"],
                                   threshold={"enc1.0": 0.25})
    assert conversion.paths == ["enc1.0", "dec2.0"]
    assert conversion.model.enc1[0].threshold == 0.25 and conversion.model.dec2[0].threshold == 0.0
    reasons = {s.path: s.reason for s in conversion.skipped}
    assert reasons["dec1.0"] == "matched by exclude" and reasons["head"] == "not matched by include"
    by_predicate = dynexport.convert(model, exclude=lambda path, conv: conv.groups > 1 or conv.kernel_size == (1, 1))
    assert "head" not in by_predicate.paths and "enc1.0" in by_predicate.paths


def test_unconvertible_convolutions_are_left_alone_with_the_reason():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                          nn.Conv2d(4, 4, 4, padding="same"), nn.Conv2d(4, 4, 3, padding="same"))
    pruned = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    prune.l1_unstructured(pruned[1], "weight", amount=0.5)
    conversion = dynexport.convert(model)
    reasons = {s.path: s.reason for s in conversion.skipped}
    assert "padding_mode 'reflect'" in reasons["0"]
    assert "padding='same'" in reasons["2"]
    assert conversion.paths == ["3"] and conversion.model[3].conv.padding == (1, 1)
    assert "prune.remove" in {s.path: s.reason for s in dynexport.convert(pruned, inplace=True).skipped}["1"]
    with pytest.raises(ConversionError, match="cannot be copied.*inplace=True"):
        dynexport.convert(pruned)


def test_named_errors_for_what_the_user_asked():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.Conv2d(4, 4, 1))
    with pytest.raises(ConversionError, match=r"'0' \(named by include\) cannot be gated: padding_mode"):
        dynexport.convert(model, include=["0"])
    with pytest.raises(ConversionError, match="pattern 'layer9.*' matches no nn.Conv2d; the convolutions are: 0, 1"):
        dynexport.convert(model, exclude=["layer9.*"])
    with pytest.raises(ConversionError, match="has no nn.Conv2d"):
        dynexport.convert(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ConversionError, match="gate 'gumbel'"):
        dynexport.convert(model, gate="gumbel")
    with pytest.raises(ConversionError, match="block 0"):
        dynexport.convert(model, block=0)
    with pytest.raises(DynexportError, match="input_shape"):
        dynexport.convert(model, input_shape=(1, 5, 8, 8))


def test_already_gated_layers_are_not_converted_again():
    model = nn.Sequential(SkipConv2d(3, 4, 3, padding=1, gate="gumbel"), nn.Conv2d(4, 2, 1))
    before = copy.deepcopy(model[0].conv.weight)
    conversion = dynexport.convert(model)
    assert conversion.paths == ["1"]
    assert conversion.model[0].gate == "gumbel" and torch.equal(conversion.model[0].weight, before)
