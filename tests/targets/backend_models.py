"""The small model every backend's tests build: two skip convolutions (one takes the tile
path, the strided one the dense path) and a D-STEP block (rank-3 and int32 operands, both
policies deciding something), so one build covers every kind of segment a backend emits."""

import torch
from torch import nn

from dynexport.nn import DStepConv2d, Residual, SkipConv2d


def small_model() -> nn.Module:
    torch.manual_seed(0)
    dstep = DStepConv2d(8, 8, 3, padding=1, patch=4)
    with torch.no_grad():  # make the policies decide something
        dstep.spatial_policy.conv.weight.normal_(0, 5)
        dstep.spatial_policy.conv.bias.zero_()
        dstep.channel_policy.fc2.bias.normal_(0, 1)
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, block=4, threshold=0.3), nn.ReLU(),
        SkipConv2d(8, 8, 3, stride=2, padding=1, block=4, threshold=0.3), nn.ReLU(),
        Residual(dstep), nn.Conv2d(8, 4, 1)).eval()
