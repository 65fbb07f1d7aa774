"""Small plain-torch networks of the shapes users bring (no dynexport.nn inside): a ResNet-style
block net, a MobileNetV2-style net and a U-Net-style net. The first two are made of torch.nn
modules and ``dynexport.nn.Residual`` only, so a saved copy loads without --allow-pickle."""

from __future__ import annotations

import torch
from torch import nn

from dynexport.nn import Residual


def conv_bn(cin, cout, kernel=3, stride=1, groups=1, dilation=1, activation=nn.ReLU):
    padding = dilation * (kernel // 2)
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=False), nn.BatchNorm2d(cout)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Eval-mode BatchNorm with non-trivial statistics, as a trained network has."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


def basic_block(cin, cout, stride=1, dilation=1):
    body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, dilation=dilation, activation=None))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = conv_bn(cin, cout, kernel=1, stride=stride, activation=None)
    return Residual(body, shortcut)


def resnet_like(width: int = 8, outputs: int = 4) -> nn.Module:
    """Stem, basic blocks with BatchNorm and residual adds (one strided, one dilated, one grouped
    conv), a 1x1 head."""
    model = nn.Sequential(
        conv_bn(3, width, stride=2),
        basic_block(width, width),
        basic_block(width, 2 * width, stride=2),
        basic_block(2 * width, 2 * width, dilation=2),
        conv_bn(2 * width, 2 * width, groups=4),
        nn.Conv2d(2 * width, outputs, 1),
    )
    return randomize_batchnorm(model)


def inverted_residual(cin, cout, stride, expand):
    hidden = cin * expand
    body = nn.Sequential(
        conv_bn(cin, hidden, kernel=1, activation=nn.ReLU6),
        conv_bn(hidden, hidden, stride=stride, groups=hidden, activation=nn.ReLU6),  # depthwise
        conv_bn(hidden, cout, kernel=1, activation=None),
    )
    if stride == 1 and cin == cout:
        return Residual(body, activation=nn.Identity())  # linear bottleneck: no activation after the add
    return body


def mobilenet_v2_like(width: int = 8, outputs: int = 4, settings=None) -> nn.Module:
    """MobileNetV2's shape: a strided stem, inverted residuals (1x1 expand, 3x3 depthwise,
    linear 1x1 project, identity shortcut when the shape allows), a 1x1 head."""
    settings = settings or [(1, width, 1, 1), (4, int(1.5 * width), 2, 2), (4, 2 * width, 2, 2)]
    layers = [conv_bn(3, width, stride=2, activation=nn.ReLU6)]
    cin = width
    for expand, cout, repeats, stride in settings:
        for i in range(repeats):
            layers.append(inverted_residual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers += [conv_bn(cin, 4 * width, kernel=1, activation=nn.ReLU6), nn.Conv2d(4 * width, outputs, 1)]
    return randomize_batchnorm(nn.Sequential(*layers))


class UNetLike(nn.Module):
    """Two strided downsamplings, nearest and bilinear upsampling, skip connections by
    ``torch.cat``."""

    def __init__(self, width: int = 8, outputs: int = 2):
        super().__init__()
        self.enc1 = conv_bn(3, width)
        self.down1 = conv_bn(width, 2 * width, stride=2)
        self.down2 = conv_bn(2 * width, 4 * width, stride=2)
        self.mid = conv_bn(4 * width, 4 * width, dilation=2)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = conv_bn(6 * width, 2 * width)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = conv_bn(3 * width, width)
        self.head = nn.Conv2d(width, outputs, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.down1(e1)
        m = self.mid(self.down2(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


def unet_like(width: int = 8, outputs: int = 2) -> nn.Module:
    return randomize_batchnorm(UNetLike(width, outputs))


ARCHITECTURES = {"resnet_like": resnet_like, "mobilenet_v2_like": mobilenet_v2_like, "unet_like": unet_like}
