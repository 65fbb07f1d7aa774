"""The small models every backend's tests build (24x24 RGB frames, a few segments each, so a
build takes seconds):

- ``mixed`` (``small_model``): two skip convolutions (one takes the tile path, the strided one
  the dense path) and a D-STEP block in a residual (rank-3 and int32 operands, both policies
  deciding something): one build covers every kind of segment a backend emits;
- ``skipconv_residual``: a skip convolution inside a residual (the output-norm gate), after a
  block-norm one;
- ``dstep``: a D-STEP convolution with both policies, outside any residual, between plain
  convolutions."""

import torch
from torch import nn

from dynexport.nn import DStepConv2d, Residual, SkipConv2d

INPUT_SHAPE = (1, 3, 24, 24)


def _deciding(dstep: DStepConv2d) -> DStepConv2d:
    with torch.no_grad():  # make the policies decide something (zero-initialised, they compute everything)
        dstep.spatial_policy.conv.weight.normal_(0, 5)
        dstep.spatial_policy.conv.bias.zero_()
        dstep.channel_policy.fc2.bias.normal_(0, 1)
    return dstep


def small_model() -> nn.Module:
    torch.manual_seed(0)
    dstep = _deciding(DStepConv2d(8, 8, 3, padding=1, patch=4))
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, block=4, threshold=0.3), nn.ReLU(),
        SkipConv2d(8, 8, 3, stride=2, padding=1, block=4, threshold=0.3), nn.ReLU(),
        Residual(dstep), nn.Conv2d(8, 4, 1)).eval()


def skipconv_residual_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, block=4, threshold=0.2), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, block=4, threshold=0.1, gate="output_norm"), nn.ReLU())),
        nn.Conv2d(8, 4, 1)).eval()


def dstep_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        _deciding(DStepConv2d(8, 8, 3, padding=1, patch=4)), nn.ReLU(),
        nn.Conv2d(8, 2, 1)).eval()


MODELS = {"mixed": small_model, "skipconv_residual": skipconv_residual_model, "dstep": dstep_model}
