"""Channels and dense MACs of every convolution and linear layer, measured by one eval
forward at the build's input shape (so strides, upsampling and padding are the model's own).

A gated layer (``dynexport.nn.GatedLayer``) counts as one layer, its dense convolution's
MACs; the convolutions inside it are not counted again.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dynexport.nn import GatedLayer


@dataclasses.dataclass(frozen=True)
class LayerSize:
    name: str
    in_channels: int
    out_channels: int
    macs: int


def _conv_of(module: nn.Module):
    return module.conv if isinstance(module, GatedLayer) else module


def measured_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv/linear layers and gated layers, outermost first, excluding modules inside a gated layer."""
    inside_gated = {id(sub) for m in model.modules() if isinstance(m, GatedLayer) for sub in m.modules() if sub is not m}
    return [(name, m) for name, m in model.named_modules()
            if id(m) not in inside_gated and isinstance(m, (GatedLayer, nn.Conv2d, nn.Linear))]


def layer_sizes(model: nn.Module, input_shape) -> dict[str, LayerSize]:
    import dynexport

    sizes: dict[str, LayerSize] = {}
    hooks = []
    for name, module in measured_layers(model):
        def record(module, inputs, output, name=name):
            if isinstance(output, tuple):
                output = output[0]
            conv = _conv_of(module)
            if isinstance(conv, nn.Linear):
                positions = output.numel() // output.shape[-1]
                sizes[name] = LayerSize(name, conv.in_features, conv.out_features,
                                        positions * conv.in_features * conv.out_features)
                return
            kh, kw = conv.weight.shape[-2:]
            positions = output.shape[0] * output.shape[-2] * output.shape[-1]
            sizes[name] = LayerSize(name, conv.in_channels, conv.out_channels,
                                    positions * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw)
        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        dynexport.reset(model)
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
        dynexport.reset(model)
        model.train(was_training)
    return sizes
