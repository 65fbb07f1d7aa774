"""torch-pruning pruners for dynexport's gated layers, registered as ``customized_pruners`` so
that the dependency graph treats a gated layer as one node (its inner modules are not traced
on their own) and prunes everything that is sized by its channels together:

- ``SkipConv2d``: the convolution; on input channels also the Gumbel gate's convolution.
- ``DStepConv2d``: the convolution; the channel policy's ``fc2`` rows (three logits per
  output channel) and ``fc1`` columns (pooled current and previous input, per input channel).

Both drop the layer's inter-frame state: it is re-allocated at the new channel count on the
next frame (``GatedLayer._ensure_state``), which starts unprimed; the block grid depends only
on the input size and kernel, not on channels, so it stays as it was.

Depthwise gated layers (``groups == in_channels == out_channels``): torch-pruning ties a
layer's input channels to its output channels when its pruner's ``prune_in_channels`` *is*
its ``prune_out_channels`` (its ``DepthwiseConvPruner`` for ``nn.Conv2d``), and it looks
pruners up by the module's class. So while a graph is built and pruned
(``depthwise_stand_ins``), every depthwise gated layer's class is temporarily a subclass
registered with a depthwise pruner, and restored afterwards.

What these pruners cannot express is listed by ``blocked_reason`` and checked before a group
is pruned: a grouped convolution that is not depthwise (1 < groups < channels; its in-channel
slices are per group, which torch-pruning's ``ConvPruner`` does not keep aligned), gated or
not; and a D-STEP spatial policy averages its input over channels, so removing even an
all-zero input channel changes its decision.
"""

from __future__ import annotations

import contextlib

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


def is_depthwise(conv: nn.Conv2d) -> bool:
    """One filter per input channel, one output per filter: channel c in is channel c out."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


class _DepthwiseSkipConv2d(SkipConv2d):
    """Stand-in class of a depthwise SkipConv2d while a dependency graph is built and pruned."""


class _DepthwiseDStepConv2d(DStepConv2d):
    """Stand-in class of a depthwise DStepConv2d while a dependency graph is built and pruned."""


class DepthwiseSkipConvPruner(SkipConvPruner):
    TARGET_MODULES = (_DepthwiseSkipConv2d,)

    def prune_out_channels(self, layer: SkipConv2d, idxs):
        tp.prune_depthwise_conv_out_channels(layer.conv, list(idxs))  # also in_channels and groups
        if layer.gate_conv is not None:  # the Gumbel gate is a dense conv over the input channels
            tp.prune_conv_in_channels(layer.gate_conv, list(idxs))
        _forget_state(layer)
        return layer

    prune_in_channels = prune_out_channels  # the same function: torch-pruning couples in and out


class DepthwiseDStepPruner(DStepPruner):
    TARGET_MODULES = (_DepthwiseDStepConv2d,)

    def prune_out_channels(self, layer: DStepConv2d, idxs):
        before = layer.conv.in_channels
        tp.prune_depthwise_conv_out_channels(layer.conv, list(idxs))
        policy = layer.channel_policy
        if policy is not None:
            tp.prune_linear_out_channels(policy.fc2, [3 * i + k for i in idxs for k in range(3)])
            _linear_in_columns(policy.fc1, [i for i in idxs] + [before + i for i in idxs])
            policy.channels = policy.out_channels = layer.conv.out_channels
        if layer.spatial_policy is not None:
            layer.spatial_policy.channels = layer.conv.in_channels
        _forget_state(layer)
        return layer

    prune_in_channels = prune_out_channels


CUSTOMIZED_PRUNERS = {SkipConv2d: SkipConvPruner(), DStepConv2d: DStepPruner(),
                      _DepthwiseSkipConv2d: DepthwiseSkipConvPruner(), _DepthwiseDStepConv2d: DepthwiseDStepPruner()}
_STAND_INS = {SkipConv2d: _DepthwiseSkipConv2d, DStepConv2d: _DepthwiseDStepConv2d}
DEPTHWISE_STAND_INS = tuple(_STAND_INS.values())


@contextlib.contextmanager
def depthwise_stand_ins(model: nn.Module):
    """Within the block, every depthwise gated layer of ``model`` has its stand-in class (see
    the module docstring); the original classes are back afterwards, even on an error."""
    swapped = []
    for layer in model.modules():
        stand_in = _STAND_INS.get(type(layer))
        if stand_in is not None and is_depthwise(layer.conv):
            swapped.append((layer, type(layer)))
            layer.__class__ = stand_in
    try:
        yield
    finally:
        for layer, original in swapped:
            layer.__class__ = original


def blocked_reason(layer: nn.Module, input_side: bool) -> str | None:
    """Why removing channels of ``layer`` (its inputs if ``input_side``) cannot be done
    exactly, or None when it can."""
    conv = layer.conv if isinstance(layer, GatedLayer) else layer
    if not isinstance(conv, nn.Conv2d):
        return None
    if conv.groups != 1 and not is_depthwise(conv):
        return (f"{type(layer).__name__} with groups={conv.groups} ({conv.in_channels} in, {conv.out_channels} out) "
                f"is grouped but not depthwise: its per-group channel slices are not kept aligned by torch-pruning")
    if not isinstance(layer, GatedLayer):
        return None
    # a depthwise layer's input channel is its output channel
    input_side = input_side or is_depthwise(conv)
    if input_side and isinstance(layer, DStepConv2d) and layer.spatial_policy is not None:
        return "DStepConv2d spatial policy averages its input over channels: removing an input channel changes it"
    return None
