"""Exporting a gated model with ``torch.export``: the one place that does it, for
``dynexport.export`` (a ``.pt2`` of the user's own model classes) and for ``build``.

A gated layer's state buffers are allocated by its first eval frame, at that frame's shape;
export needs them allocated at the export shape (it lifts them to graph inputs and records
their updates), so one frame at that shape runs first and a reset follows: the exported
program starts a new stream, like a freshly reset module.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Sequence

import torch
from torch import nn

from dynexport.errors import CompileError


def export_program(model: nn.Module, input_shape: Sequence[int]) -> torch.export.ExportedProgram:
    """``model`` (put in eval mode) exported at ``input_shape``, its gate state allocated at
    that shape and reset. Raises CompileError when the model does not run or export."""
    import dynexport

    shape = "x".join(map(str, input_shape))
    model = model.eval()
    example = torch.zeros(tuple(input_shape))
    try:
        dynexport.reset(model)
        dynexport.step(model, example)  # allocates every gate's state at this resolution
        dynexport.reset(model)
    except Exception as exc:
        raise CompileError(f"the model does not run on a {shape} input: {exc}") from exc
    try:
        with _pruning_assignments_silenced(model):
            return torch.export.export(model, (example,), strict=False)
    except Exception as exc:
        raise CompileError(
            f"torch.export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Data-dependent Python control flow outside dynexport gates cannot be compiled; "
            "express it with dynexport.nn modules or torch.cond"
        ) from exc


def export(model: nn.Module, input_shape: Sequence[int] | str, path: str | os.PathLike) -> torch.export.ExportedProgram:
    """Export ``model`` at ``input_shape`` (``(1, C, H, W)`` or ``"1xCxHxW"``) and save it to
    ``path`` (a ``.pt2`` for ``dynexport build``, which needs neither the model's classes nor
    ``--allow-pickle``). Returns the program."""
    from dynexport.compiler.frontend import parse_input_shape

    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 4 or min(input_shape) < 1 or input_shape[0] != 1:
        raise CompileError(f"dynexport.export: input_shape must be (1, C, H, W) (one stream), got {input_shape}")
    program = export_program(model, input_shape)
    torch.export.save(program, path)
    return program


@contextlib.contextmanager
def _pruning_assignments_silenced(model: nn.Module):
    """Silence torch's "tensor attributes ... were assigned during export" warning when the
    attributes it names are only ``torch.nn.utils.prune``'s: pruning recomputes ``weight``
    from ``weight_orig * weight_mask`` on every call, as designed. Any other assigned tensor
    attribute (state kept outside buffers, which export would drop) still warns."""
    from torch.nn.utils import prune

    pruned = [f"self.{path + '.' if path else ''}{hook._tensor_name}"
              for path, module in model.named_modules() for hook in module._forward_pre_hooks.values()
              if isinstance(hook, prune.BasePruningMethod)]
    with warnings.catch_warnings():
        if pruned:
            name = "(?:" + "|".join(re.escape(p) for p in pruned) + ")"
            warnings.filterwarnings(
                "ignore", category=UserWarning,
                message=rf"The tensor attributes? {name}(?:, {name})* (?:was|were) assigned during export\.")
        yield
