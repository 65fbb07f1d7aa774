"""change_driven: the ungated convolutions of a gated model recompute only the blocks whose
input changed (issue 14: the work between gated layers follows the changes).

Between its gates a Skip-Conv model keeps plain convolutions (a ResNet's strided shortcuts,
a heatmap head after an upsampling): as dense segments they run over the whole map whenever
any block of their input changed, and a strided one ends the change tracking of everything
after it. An input_norm ``SkipConv2d`` at threshold 0 with the same weights computes exactly
what the convolution computes (``convert``'s invariant): a block is skipped only when its
input tile did not change at all, and the runtime decides that exactly (no tie band at
threshold 0, dynrt.h). So the compiler gates them so, and the plan's savings reach them.

Chosen: every ``nn.Conv2d`` outside a gated layer that ``convert`` can represent, except
* a 1x1 convolution of stride 1, which is pointwise in space (an epilogue of the gated layer
  before it, or a change-tracked pointwise run);
* one that reads the model's input: the frame's sensor noise changes every block of it;
and only in a model that has Skip-Conv gates and no D-STEP layer (a plain model is the user's
to gate, ``dynexport gate``; D-STEP outputs change channel-wise, which this does not follow).

Invariant: ``make_change_driven(model, paths)`` computes, frame for frame, what ``model``
computes (up to float rounding of the block-wise convolutions); ``paths`` are recorded in the
build's manifest so that verify and bench stream the same reference.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dynexport.gating.convert import _plain_convolutions, convert, unsupported_reason
from dynexport.nn import DStepConv2d, GatedLayer, SkipConv2d


def change_driven_paths(model: nn.Module, input_shape) -> list[str]:
    """The module paths of ``model``'s convolutions to gate at threshold 0 (see above)."""
    if not isinstance(model, nn.Module) or input_shape is None:
        return []  # a torch.export program: its convolutions are graph nodes, not modules
    layers = [m for m in model.modules() if isinstance(m, GatedLayer)]
    if not any(isinstance(m, SkipConv2d) for m in layers) or any(isinstance(m, DStepConv2d) for m in layers):
        return []
    candidates = [(path, conv) for path, conv in _plain_convolutions(model)
                  if unsupported_reason(conv) is None and not _pointwise_in_space(conv)]
    if not candidates:
        return []
    frame_readers = _convolutions_reading_the_input(model, input_shape, [path for path, _ in candidates])
    return [path for path, _ in candidates if path not in frame_readers]


def make_change_driven(model: nn.Module, paths: list[str]) -> nn.Module:
    """A copy of ``model`` whose convolutions at ``paths`` are input_norm gates at threshold 0."""
    if not paths:
        return model
    return convert(model, gate="input_norm", threshold=0.0, include=list(paths)).model


def _pointwise_in_space(conv: nn.Conv2d) -> bool:
    return tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (0, 0)


def _convolutions_reading_the_input(model: nn.Module, input_shape, paths: list[str]) -> set[str]:
    """Which of the convolutions at ``paths`` take the model's input itself, on one zero frame
    of a copy of the model (the caller's model and its gate state stay as they are)."""
    probe = copy.deepcopy(model).eval()
    frame = torch.zeros(tuple(int(d) for d in input_shape))
    readers, handles = set(), []
    modules = dict(probe.named_modules())

    def record(path):
        def hook(module, args):
            if args and args[0] is frame:
                readers.add(path)
        return hook

    for path in paths:
        handles.append(modules[path].register_forward_pre_hook(record(path)))
    try:
        with torch.no_grad():
            probe(frame)
    finally:
        for handle in handles:
            handle.remove()
    return readers
