"""The modules users train with. Each gated layer has an eval-mode *reference semantics*
(documented in its module) that every compiled artifact is checked against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynexport.nn.block_grid import BlockGrid
from dynexport.nn.dstep import ChannelPolicy, SpatialPolicy
from dynexport.errors import ExportError
from dynexport.nn.dstep_module import DStepConv2d
from dynexport.nn.exported import ExportedGate, ExportedModel
from dynexport.nn.gated import GatedLayer, LayerFrameStats
from dynexport.nn.residual import Residual
from dynexport.nn.skip_conv_module import SkipConv2d

__all__ = [
    "BlockGrid", "ChannelPolicy", "DStepConv2d", "ExportedGate", "ExportedModel", "GatedLayer",
    "LayerFrameStats", "Residual",
    "SkipConv2d", "SpatialPolicy", "gated_layers", "mac_loss",
]


def gated_layers(model: nn.Module) -> list[tuple[str, GatedLayer | ExportedGate]]:
    """(module path, layer) of each gated layer: the GatedLayer modules of ``model``, or the
    gate nodes of an ``ExportedModel`` in graph order."""
    if isinstance(model, ExportedModel):
        return [(gate.name, gate) for gate in model.gates]
    if isinstance(model, torch.export.ExportedProgram):
        raise ExportError("a torch.export program (.pt2) has no modules to stream: run it as "
                          "dynexport.nn.ExportedModel(program), which keeps its gate state between frames")
    return [(name, m) for name, m in model.named_modules() if isinstance(m, GatedLayer)]


def mac_loss(model: nn.Module, budget: float = 0.0) -> Tensor:
    """The gate loss of Skip-Convolutions: executed MACs over dense MACs of all gated layers,
    averaged over the training frames run since the last call (which it then forgets), each
    layer weighted by its dense MACs. With ``budget`` > 0 only the excess above that fraction
    counts. Differentiable through Gumbel gates and D-STEP policies."""
    executed_total, dense_total = None, 0
    for _, layer in gated_layers(model):
        terms = layer._mac_terms
        if not terms:
            continue
        executed = torch.stack([t[0] for t in terms]).mean()
        dense = sum(t[1] for t in terms) / len(terms)
        executed_total = executed if executed_total is None else executed_total + executed
        dense_total += dense
        layer._mac_terms = []
    if executed_total is None:
        raise RuntimeError("mac_loss: no gated layer ran in training mode since the last call")
    fraction = executed_total / dense_total
    return (fraction - budget).clamp_min(0) if budget > 0 else fraction
