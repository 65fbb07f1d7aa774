"""torch-pruning pruners for dynexport's gated layers, registered as ``customized_pruners`` so
that the dependency graph treats a gated layer as one node (its inner modules are not traced
on their own) and prunes everything that is sized by its channels together:

- ``SkipConv2d``: the convolution; on input channels also the Gumbel gate's convolution.
- ``DStepConv2d``: the convolution; the channel policy's ``fc2`` rows (three logits per
  output channel) and ``fc1`` columns (pooled current and previous input, per input channel).

Both drop the layer's inter-frame state: it is re-allocated at the new channel count on the
next frame (``GatedLayer._ensure_state``), which starts unprimed; the block grid depends only
on the input size and kernel, not on channels, so it stays as it was.

What these pruners cannot express is listed by ``blocked_reason`` and checked before a group
is pruned: torch-pruning looks pruners up by class, so a grouped or depthwise gated layer
cannot tie its input channels to its output channels the way its ``DepthwiseConvPruner``
does for ``nn.Conv2d``; and a D-STEP spatial policy averages its input over channels, so
removing even an all-zero input channel changes its decision.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from dynexport.nn import DStepConv2d, GatedLayer, SkipConv2d


def _forget_state(layer: GatedLayer) -> None:
    for name in layer.STATE_BUFFERS:
        layer._buffers[name] = torch.zeros(0, device=layer.conv.weight.device)
    layer.reset_state()


def forget_traced_state(model: nn.Module) -> None:
    """After torch-pruning's trace (a forward with autograd on): gated layers' state holds
    autograd graphs, which ``copy.deepcopy`` refuses; drop it (the next frame is dense anyway)."""
    for layer in model.modules():
        if isinstance(layer, GatedLayer):
            _forget_state(layer)
            layer.last_stats = None


def _linear_in_columns(linear: nn.Linear, columns) -> None:
    tp.prune_linear_in_channels(linear, sorted(columns))


class SkipConvPruner(tp.pruner.BasePruningFunc):
    TARGET_MODULES = (SkipConv2d,)

    def prune_out_channels(self, layer: SkipConv2d, idxs):
        tp.prune_conv_out_channels(layer.conv, list(idxs))
        _forget_state(layer)
        return layer

    def prune_in_channels(self, layer: SkipConv2d, idxs):
        tp.prune_conv_in_channels(layer.conv, list(idxs))
        if layer.gate_conv is not None:
            tp.prune_conv_in_channels(layer.gate_conv, list(idxs))
        _forget_state(layer)
        return layer

    def get_out_channels(self, layer: SkipConv2d):
        return layer.conv.out_channels

    def get_in_channels(self, layer: SkipConv2d):
        return layer.conv.in_channels


class DStepPruner(tp.pruner.BasePruningFunc):
    TARGET_MODULES = (DStepConv2d,)

    def prune_out_channels(self, layer: DStepConv2d, idxs):
        tp.prune_conv_out_channels(layer.conv, list(idxs))
        policy = layer.channel_policy
        if policy is not None:
            tp.prune_linear_out_channels(policy.fc2, [3 * i + k for i in idxs for k in range(3)])
            policy.out_channels = layer.conv.out_channels
        _forget_state(layer)
        return layer

    def prune_in_channels(self, layer: DStepConv2d, idxs):
        before = layer.conv.in_channels
        tp.prune_conv_in_channels(layer.conv, list(idxs))
        policy = layer.channel_policy
        if policy is not None:
            _linear_in_columns(policy.fc1, [i for i in idxs] + [before + i for i in idxs])
            policy.channels = layer.conv.in_channels
        if layer.spatial_policy is not None:
            layer.spatial_policy.channels = layer.conv.in_channels
        _forget_state(layer)
        return layer

    def get_out_channels(self, layer: DStepConv2d):
        return layer.conv.out_channels

    def get_in_channels(self, layer: DStepConv2d):
        return layer.conv.in_channels


CUSTOMIZED_PRUNERS = {SkipConv2d: SkipConvPruner(), DStepConv2d: DStepPruner()}


def blocked_reason(layer: nn.Module, input_side: bool) -> str | None:
    """Why removing channels of ``layer`` (its inputs if ``input_side``) cannot be done
    exactly, or None when it can."""
    if not isinstance(layer, GatedLayer):
        return None
    if layer.conv.groups != 1:
        return (f"{type(layer).__name__} with groups={layer.conv.groups}: torch-pruning's per-class pruner lookup "
                f"cannot couple a gated grouped/depthwise layer's input and output channels")
    if input_side and isinstance(layer, DStepConv2d) and layer.spatial_policy is not None:
        return "DStepConv2d spatial policy averages its input over channels: removing an input channel changes it"
    return None
