"""D-STEP's policy weights in a plan's constants, for DSTEP_POLICY (format 2.4): one place for
their layout, which the compiler writes, the interpreter and both validators read, and the C
runtime (gates.c: dynrt_dstep_policy) mirrors.

A D-STEP layer's ``gate_weight`` (constants offset) and ``gate_weight_count`` hold, in order:

    spatial policy (when the layer has spatial logits)   weight [2, 2, 3, 3], bias [2]
    channel policy (when the layer has channel logits)   w1 [hidden, 2 * Cin], b1 [hidden],
                                                          w2 [3 * Cout, hidden], b2 [3 * Cout]

every array row-major float32. ``hidden`` is not stored: it follows from the count.
"""

from __future__ import annotations

import torch

SPATIAL_VALUES = 2 * 2 * 3 * 3 + 2


def pack_policies(spatial, channel) -> list[float]:
    """(weight, bias) or None, (w1, b1, w2, b2) or None -> the constants, in layout order."""
    parts = list(spatial or ()) + list(channel or ())
    return [float(v) for part in parts for v in part.detach().float().flatten().tolist()]


def policy_hidden(count: int, has_spatial: bool, has_channel: bool, in_channels: int, out_channels: int) -> int | None:
    """The channel policy's hidden width that ``count`` constants imply (0 without a channel
    policy), or None when no width fits them."""
    rest = count - (SPATIAL_VALUES if has_spatial else 0)
    if not has_channel:
        return 0 if rest == 0 else None
    per_hidden = 2 * in_channels + 1 + 3 * out_channels
    hidden, left = divmod(rest - 3 * out_channels, per_hidden)
    return hidden if hidden >= 1 and left == 0 else None


def unpack_policies(constants, layer, has_spatial: bool, has_channel: bool):
    """The layer's (spatial, channel) weights as tensors, as ``pack_policies`` took them."""
    values = torch.tensor(constants[layer.gate_weight:layer.gate_weight + layer.gate_weight_count], dtype=torch.float32)
    hidden = policy_hidden(layer.gate_weight_count, has_spatial, has_channel, layer.in_channels, layer.out_channels)
    shapes = ([(2, 2, 3, 3), (2,)] if has_spatial else []) + (
        [(hidden, 2 * layer.in_channels), (hidden,), (3 * layer.out_channels, hidden), (3 * layer.out_channels,)]
        if has_channel else [])
    arrays, at = [], 0
    for shape in shapes:
        size = int(torch.Size(shape).numel())
        arrays.append(values[at:at + size].reshape(shape))
        at += size
    spatial = tuple(arrays[:2]) if has_spatial else None
    channel = tuple(arrays[2 if has_spatial else 0:]) if has_channel else None
    return spatial, channel
