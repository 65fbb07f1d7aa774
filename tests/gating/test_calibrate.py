"""calibrate: thresholds of a converted model chosen on a clip to meet a MAC budget (the
model's own accounting), with the error against the ungated model on the clip and held apart."""

import pytest
import torch
from torch import nn

import dynexport
from architectures import conv_bn, randomize_batchnorm
from dynexport import video
from dynexport.errors import CalibrationError, FrameError
from dynexport.nn import Residual, gated_layers


def small_net():
    return randomize_batchnorm(nn.Sequential(
        conv_bn(3, 8, stride=2), Residual(conv_bn(8, 8, activation=None)), conv_bn(8, 8, groups=2),
        nn.Conv2d(8, 2, 1)))


def clip(frames=10, size=32, seed=0):
    return torch.from_numpy(video.generate("static_camera", seed=seed, frames=frames, height=size,
                                           width=size).as_float())


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    model = dynexport.convert(small_net(), block=4).model
    return model, dynexport.calibrate(model, clip(), mac_budget=0.3)


def test_budget_is_met_by_the_model_s_own_accounting(calibrated):
    model, report = calibrated
    assert report.calibration.mac_fraction <= 0.3
    assert report.calibration.frames == 5 and report.holdout.frames == 5
    assert report.holdout_source == "second half of the clip"
    # the thresholds are left set on the model, and streaming again reproduces the report
    assert {name: layer.threshold for name, layer in gated_layers(model)} == report.thresholds
    executed = dense = 0
    for t, (_, stats) in enumerate(dynexport.stream(model, clip()[:5], with_stats=True)):
        if t:
            executed += stats.executed_macs
            dense += stats.dense_macs
    assert executed / dense == pytest.approx(report.calibration.mac_fraction)
    per_layer = sum(layer.executed_macs for layer in report.layers) / sum(layer.dense_macs for layer in report.layers)
    assert per_layer == pytest.approx(report.calibration.mac_fraction)
    assert all(layer.gate_macs > 0 and 0 <= layer.active_fraction <= 1 for layer in report.layers)


def test_errors_are_relative_to_the_output_range(calibrated):
    model, report = calibrated
    frames = clip()[:5]
    reference = []
    for frame in frames:
        dynexport.reset(model)
        reference.append(dynexport.step(model, frame))
    reference = torch.cat(reference)
    gated = torch.cat(list(dynexport.stream(model, frames)))
    error = (gated - reference).abs() / (reference.max() - reference.min())
    assert float(error.max()) == pytest.approx(report.calibration.error_max, rel=1e-4)
    assert float(error.mean()) == pytest.approx(report.calibration.error_mean, rel=1e-4)
    assert 0 < report.calibration.error_mean <= report.calibration.error_max
    frozen = (reference - reference[:1]).abs() / (reference.max() - reference.min())
    assert float(frozen.max()) == pytest.approx(report.calibration.change_max, rel=1e-4)
    assert float(frozen.mean()) == pytest.approx(report.calibration.change_mean, rel=1e-4)


def test_a_larger_budget_gives_a_smaller_error():
    model = dynexport.convert(small_net(), block=4).model
    tight = dynexport.calibrate(model, clip(), mac_budget=0.2)
    loose = dynexport.calibrate(model, clip(), mac_budget=0.9)
    assert loose.relative_threshold < tight.relative_threshold
    assert loose.calibration.error_mean < tight.calibration.error_mean
    assert tight.calibration.mac_fraction <= 0.2 < loose.calibration.mac_fraction <= 0.9


def test_refine_spends_the_slack_without_breaking_the_budget():
    model = dynexport.convert(small_net(), block=4).model
    plain = dynexport.calibrate(model, clip(), mac_budget=0.3)
    refined = dynexport.calibrate(model, clip(), mac_budget=0.3, refine=True)
    assert refined.refined and not plain.refined
    assert refined.relative_threshold == plain.relative_threshold
    assert refined.calibration.mac_fraction <= 0.3
    assert refined.calibration.error_mean <= plain.calibration.error_mean
    assert refined.streams == plain.streams + len(refined.layers)
    assert {name: model.get_submodule(name).threshold for name in refined.thresholds} == refined.thresholds
    assert all(refined.thresholds[n] in (plain.thresholds[n], plain.thresholds[n] / 2) for n in plain.thresholds)


def test_a_holdout_clip_is_reported_separately():
    model = dynexport.convert(small_net(), gate="output_norm", block=4).model
    report = dynexport.calibrate(model, clip(6), mac_budget=0.5, holdout=clip(4, seed=7))
    assert report.holdout_source == "holdout clip"
    assert report.calibration.frames == 6 and report.holdout.frames == 4
    assert report.calibration.mac_fraction <= 0.5
    assert report.calibration.mac_fraction <= report.calibration.model_mac_fraction <= 1.0
    assert all(layer.gate == "output_norm" and layer.calibrated for layer in report.layers)


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, "0.3", True])
def test_budget_outside_zero_one_is_named(budget):
    model = dynexport.convert(small_net()).model
    with pytest.raises(CalibrationError, match=r"mac budget .*expected a fraction of the dense MACs in \(0, 1\]"):
        dynexport.calibrate(model, clip(), mac_budget=budget)


def test_models_that_cannot_be_calibrated_are_named():
    with pytest.raises(CalibrationError, match=r"no norm-gated layer to calibrate; convert it first"):
        dynexport.calibrate(small_net(), clip())
    with pytest.raises(CalibrationError, match="no nn.Conv2d either"):
        dynexport.calibrate(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), clip())
    depthwise = dynexport.convert(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3))).model
    with pytest.raises(CalibrationError, match=r"the norm gates alone cost 1.000 .*--no-depthwise"):
        dynexport.calibrate(depthwise, clip())


def test_clips_of_the_wrong_shape_are_named():
    model = dynexport.convert(small_net()).model
    with pytest.raises(FrameError, match=r"clip: expected frames \[T, C, H, W\], got shape \[3, 32, 32\]"):
        dynexport.calibrate(model, clip()[0])
    with pytest.raises(FrameError, match=r"frames have 1 channels, the model takes 3"):
        dynexport.calibrate(model, clip()[:, :1])
    with pytest.raises(FrameError, match="needs >= 4"):
        dynexport.calibrate(model, clip(3))
    with pytest.raises(FrameError, match="uint8 frames"):
        dynexport.calibrate(model, video.generate("static_camera", frames=4, height=16, width=16).frames)
    with pytest.raises(FrameError, match=r"holdout clip: frames \[3, 16, 16\], the clip has \[3, 32, 32\]"):
        dynexport.calibrate(model, clip(4), holdout=clip(4, size=16))
