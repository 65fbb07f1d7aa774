"""The prunable channel groups of a model, from torch-pruning's dependency graph: each group
is a set of (layer, output-channel index) slices that must be removed together, indexed by
the channels of the group's root layer. Layers feeding the model output are left out, and so
are groups ``compaction`` could not remove (a grouped convolution, an op that does not keep
zero at zero): zeroing those would cost accuracy and save nothing.

A ``ChannelGroup`` zeroes a channel with ``torch.nn.utils.prune`` masks on every layer that
produces it (weights and bias of convolutions, linear and gated layers; scale and shift of
BatchNorms), so that ``compaction`` can later remove it exactly.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from dynexport.nn import GatedLayer
from dynexport.pruning.gated_pruners import CUSTOMIZED_PRUNERS, depthwise_stand_ins, forget_traced_state


@dataclasses.dataclass
class ChannelGroup:
    root: str
    channels: int
    # per producing module: (module, [(root channel, module channel)])
    producers: list[tuple[nn.Module, list[tuple[int, int]]]]

    def zero(self, root_channels) -> None:
        """Mask (torch.nn.utils.prune.custom_from_mask) the given root channels on every producer."""
        chosen = set(int(c) for c in root_channels)
        for module, pairs in self.producers:
            channels = [own for root, own in pairs if root in chosen]
            if channels:
                _mask_output_channels(module, channels)


def channel_groups(model: nn.Module, input_shape) -> list[ChannelGroup]:
    import dynexport

    dynexport.reset(model)
    with depthwise_stand_ins(model):
        return _channel_groups(model, input_shape)


def _channel_groups(model: nn.Module, input_shape) -> list[ChannelGroup]:
    import torch_pruning as tp

    from dynexport.pruning.compaction import _output_layers, _removable_root_indices

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(tuple(input_shape)),
                                                  customized_pruners=CUSTOMIZED_PRUNERS, verbose=False)
    forget_traced_state(model)
    groups = []
    roots = (nn.Conv2d, nn.Linear, *CUSTOMIZED_PRUNERS)
    for group in graph.get_all_groups(ignored_layers=_output_layers(graph), root_module_types=roots):
        root = group[0].dep.target.module
        if _removable_root_indices(graph, group)[1] is not None:
            continue  # compaction could not remove these channels: zeroing them would cost accuracy for nothing
        producers = []
        for item in group:
            module = item.dep.target.module
            if isinstance(module, nn.Module) and graph.is_out_channel_pruning_fn(item.dep.handler) \
                    and isinstance(module, (nn.Conv2d, nn.Linear, GatedLayer, nn.modules.batchnorm._BatchNorm)):
                producers.append((module, [(int(r), int(i)) for i, r in zip(item.idxs, item.root_idxs)]))
        groups.append(ChannelGroup(graph._module2name.get(root, "?"), graph.get_out_channels(root), producers))
    return groups


def producer_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The tensors whose output-channel slices make a channel (dim 0 of each)."""
    if isinstance(module, GatedLayer):
        module = module.conv
    return [t for t in (module.weight, module.bias) if t is not None]


def _mask_output_channels(module: nn.Module, channels: list[int]) -> None:
    target = module.conv if isinstance(module, GatedLayer) else module
    for name in ("weight", "bias"):
        if getattr(target, name, None) is None:
            continue
        current = getattr(target, name)
        previous = getattr(target, f"{name}_mask", None)
        mask = torch.ones_like(current) if previous is None else previous.clone()
        mask[channels] = 0
        # custom_from_mask combines with an existing mask: the channel stays zero
        torch_prune.custom_from_mask(target, name, mask)
