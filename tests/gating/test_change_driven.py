"""change_driven: which ungated convolutions of a gated model the compiler gates at threshold 0,
and that the result computes what the model computes."""

from __future__ import annotations

import torch
from torch import nn

import dynexport
from dynexport import video
from dynexport.gating.change_driven import change_driven_paths, make_change_driven
from dynexport.nn import DStepConv2d, Residual, SkipConv2d

SHAPE = (1, 3, 32, 40)


def heatmap_like() -> nn.Module:
    """A gated stem, a residual block with a strided 1x1 shortcut, an upsampling head: the
    shapes of examples/skipconv_heatmap, small."""
    torch.manual_seed(0)
    body = nn.Sequential(SkipConv2d(8, 16, 3, stride=2, padding=1, block=4, threshold=0.1), nn.ReLU(),
                         SkipConv2d(16, 16, 3, padding=1, block=4, threshold=0.1))
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, block=4, threshold=0.1), nn.ReLU(),
        Residual(body, nn.Conv2d(8, 16, 1, stride=2)),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 2, 1),
    ).eval()


def test_the_strided_shortcut_and_the_head_are_chosen():
    """The 1x1 stride-2 shortcut and the 3x3 head are; the 1x1 stride-1 output conv (pointwise
    in space) is not."""
    assert change_driven_paths(heatmap_like(), SHAPE) == ["2.shortcut", "4"]


def test_a_convolution_reading_the_frame_stays_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SkipConv2d(8, 8, 3, padding=1, block=4),
                          nn.Conv2d(8, 8, 3, padding=1)).eval()
    assert change_driven_paths(model, SHAPE) == ["2"]


def test_plain_and_dstep_models_are_left_alone():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    assert change_driven_paths(plain, SHAPE) == []
    dstep = nn.Sequential(SkipConv2d(3, 8, 3, padding=1, block=4), DStepConv2d(8, 8, 3, padding=1),
                          nn.Conv2d(8, 8, 3, padding=1)).eval()
    assert change_driven_paths(dstep, SHAPE) == []
    assert change_driven_paths(heatmap_like(), None) == []  # no shape: nothing to probe


def test_the_change_driven_model_computes_what_the_model_computes():
    """Frame by frame on a clip with still stretches and motion: the same outputs, and the
    threshold-0 layers skip blocks (their input did not change there)."""
    model = heatmap_like()
    paths = change_driven_paths(model, SHAPE)
    driven = make_change_driven(model, paths)
    assert isinstance(driven[4], SkipConv2d) and isinstance(model[4], nn.Conv2d)
    frames = torch.from_numpy(video.generate("small_objects", seed=1, height=32, width=40, frames=8).as_float())
    dynexport.reset(model)
    dynexport.reset(driven)
    skipped = 0
    for frame in frames:
        want = dynexport.step(model, frame[None])
        got = dynexport.step(driven, frame[None])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        head = driven[4]
        skipped += int((~head.last_decisions[0]).sum())
    assert skipped > 0, "the head must skip the blocks whose input did not change"
