"""Tiny architectures for the pruning tests: each exercises one coupling torch-pruning's
dependency graph must propagate (BatchNorm, residual add, concatenation, depthwise, gated)."""

import torch
from torch import nn

from dynexport.nn import DStepConv2d, Residual, SkipConv2d

SHAPE = (1, 3, 16, 16)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Conv2d(14, 4, 3, padding=1)

    def forward(self, x):
        return self.head(torch.cat([self.left(x), self.right(x)], 1))


def plain():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 4, 1))


def residual():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                                nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))),
                         nn.Conv2d(8, 4, 1))


def depthwise():
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 4, 1))


def gated():
    def skip(cin, cout, gate):
        return SkipConv2d(cin, cout, 3, padding=1, bias=False, gate=gate, block=4)
    return nn.Sequential(skip(3, 8, "gumbel"), nn.BatchNorm2d(8), nn.ReLU(),
                         Residual(nn.Sequential(skip(8, 8, "input_norm"), nn.BatchNorm2d(8), nn.ReLU(),
                                                skip(8, 8, "output_norm"), nn.BatchNorm2d(8))),
                         DStepConv2d(8, 12, 3, padding=1, spatial=False, channel=True, patch=4), nn.ReLU(),
                         nn.Conv2d(12, 4, 1))


def gated_depthwise():
    """Inverted residuals whose depthwise convolutions are gated: a norm gate, a Gumbel gate (a
    dense conv over the input channels) and a D-STEP channel policy (rows per output channel,
    columns per input channel), each tying input channel c to output channel c."""
    def block(hidden, middle):
        return Residual(nn.Sequential(nn.Conv2d(8, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                                      middle, nn.BatchNorm2d(hidden), nn.ReLU6(),
                                      nn.Conv2d(hidden, 8, 1, bias=False), nn.BatchNorm2d(8)),
                        activation=nn.Identity())
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        block(16, SkipConv2d(16, 16, 3, padding=1, groups=16, bias=False, gate="input_norm", block=4)),
        block(12, SkipConv2d(12, 12, 3, padding=1, groups=12, gate="gumbel", block=4)),
        block(16, DStepConv2d(16, 16, 3, padding=1, groups=16, spatial=False, channel=True, patch=4)),
        nn.Conv2d(8, 4, 1))


ARCHITECTURES = {"plain": plain, "residual": residual, "concat": Concat, "depthwise": depthwise, "gated": gated,
                 "gated_depthwise": gated_depthwise}


def make(name: str, seed: int = 0) -> nn.Module:
    """The architecture with random BatchNorm statistics (so a BatchNorm's zero-in is not zero-out)."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[name]().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model
