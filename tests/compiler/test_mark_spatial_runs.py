"""mark_spatial_runs: which dense runs carry the POINTWISE / NEAREST_UPSAMPLE hints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynexport.compiler.pipeline import compile_model
from dynexport.nn import Residual, SkipConv2d
from dynexport.plan.frame_program import NO_LAYER, Op, RunFlag


def _model(upsample: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    body = nn.Sequential(SkipConv2d(8, 8, 3, padding=1, block=4), nn.ReLU(), SkipConv2d(8, 8, 3, padding=1, block=4))
    return nn.Sequential(SkipConv2d(3, 8, 3, stride=2, padding=1, block=4), Residual(body), upsample,
                         SkipConv2d(8, 4, 3, padding=1, block=4)).eval()


def _flags(model) -> dict[str, int]:
    compiled = compile_model(model, (1, 3, 24, 32), change_driven=False)
    program = compiled.program
    return {program.segments[i.a].name: i.c for i in program.instructions
            if i.op == Op.RUN_SEGMENT and i.b == NO_LAYER and program.segments[i.a].name.startswith("segment_")}


def test_a_residual_add_then_a_nearest_upsampling_is_one_flagged_run():
    """add + ReLU + nearest x2 (12x16 -> 24x32) in one dense step: NEAREST_UPSAMPLE."""
    assert list(_flags(_model(nn.Upsample(scale_factor=2, mode="nearest"))).values()) == [
        int(RunFlag.NEAREST_UPSAMPLE)]


@pytest.mark.parametrize("upsample", [nn.Upsample(scale_factor=2, mode="bilinear"),
                                      nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)],
                         ids=["bilinear", "bilinear_aligned"])
def test_an_upsampling_that_mixes_pixels_is_not_flagged(upsample):
    assert list(_flags(_model(upsample)).values()) == [0]


def test_a_pointwise_step_keeps_its_flag():
    assert list(_flags(_model(nn.ReLU6())).values()) == [int(RunFlag.POINTWISE)]


def test_the_probe_catches_an_upsampling_off_the_pixel_grid():
    """The probe behind the op check: one changed input pixel must change exactly its fy x fx
    image; a nearest x2 shifted by one output pixel does not."""
    import torch.nn.functional as F

    from dynexport.compiler.passes.mark_spatial_runs import _changes_stay_in_their_images

    class Nearest(nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def forward(self, x):
            return (torch.roll(F.interpolate(x, scale_factor=2, mode="nearest"), self.shift, dims=3),)

    example = (torch.zeros(1, 4, 6, 8),)
    assert _changes_stay_in_their_images(Nearest(0), example, 2, 2)
    assert not _changes_stay_in_their_images(Nearest(1), example, 2, 2)
    assert not _changes_stay_in_their_images(Nearest(0), example, 2, 1)
