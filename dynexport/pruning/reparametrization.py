"""Undo ``torch.nn.utils.prune``'s reparametrization: ``weight = weight_orig * weight_mask``
recomputed by a forward pre-hook becomes a plain ``weight`` parameter holding the product.

Invariant: the returned model computes exactly what the masked one did, and no module keeps
a pruning hook, ``*_orig`` parameter or ``*_mask`` buffer.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune as torch_prune


def has_pruning_masks(model: nn.Module) -> bool:
    return any(isinstance(hook, torch_prune.BasePruningMethod)
               for module in model.modules() for hook in module._forward_pre_hooks.values())


def remove_pruning_masks(model: nn.Module) -> nn.Module:
    """In place: every pruned tensor becomes a plain parameter with the mask applied."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                # a PruningContainer (pruned twice) names its tensor like a single method does
                torch_prune.remove(module, hook._tensor_name)
    return model


def copy_without_masks(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with its masks applied and removed; ``model`` keeps its masks.

    A masked tensor is a non-leaf (``orig * mask``) that ``copy.deepcopy`` refuses; it is
    replaced, on ``model``, by its detached value first. That changes nothing it computes:
    the pruning hook recomputes it before every forward, and a gated layer, which reads its
    convolution's weight without calling the convolution, gets the same value.
    """
    import copy

    import torch

    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, torch_prune.BasePruningMethod):
                    name = hook._tensor_name  # a PruningContainer names its tensor too
                    setattr(module, name, getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask"))
    return remove_pruning_masks(copy.deepcopy(model))
