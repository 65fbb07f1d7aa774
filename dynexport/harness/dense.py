"""The dense export of a build's model: every gated layer replaced by its plain convolution
(same weights, every block computed, no gate), built like any model. ``bench`` runs it side
by side with the dynamic plan: it is what an app would ship without dynexport."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn


def dense_counterpart(model):
    """A copy of ``model`` with each SkipConv2d / DStepConv2d replaced by its ``conv``; for a
    .pt2 program, a program with each gate node replaced by its convolution."""
    from dynexport.nn import GatedLayer

    if isinstance(model, torch.export.ExportedProgram):
        from dynexport.nn.exported import ungated_program

        return ungated_program(model)
    dense = copy.deepcopy(model).eval()
    for name, module in list(dense.named_modules()):
        if isinstance(module, GatedLayer):
            parent_name, _, attribute = name.rpartition(".")
            parent = dense.get_submodule(parent_name) if parent_name else dense
            setattr(parent, attribute, module.conv)
    if isinstance(dense, GatedLayer):
        dense = dense.conv
    return dense


def build_dense(model, input_shape, folder: Path, progress=None, backend: str | None = None):
    """Build the dense counterpart into ``folder`` (a one-segment plan and its artifact), for
    ``backend`` or, when None, host's default backends."""
    from dynexport.build import build

    dense = dense_counterpart(model)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(dense, torch.export.ExportedProgram):
        path = folder / "dense_model.pt2"
        torch.export.save(dense, path)
    else:
        path = folder / "dense_model.pt"
        torch.save(dense, path)
    return build(path, folder / "dense", target="host", backend=backend, input_shape=tuple(input_shape),
                 progress=progress)


def model_macs(model, input_shape) -> int:
    """MACs of one dense frame (convolutions and matrix products), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    runnable = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        runnable(torch.zeros(tuple(input_shape)))
    return counter.get_total_flops() // 2
