"""A segment at the plan's boundary: 4-D operands NHWC (the physical layout of every runtime
buffer), a tile segment's batch bounded 1..max_batch, exported with an example *at* the bound.

The wrapper permutes NHWC -> NCHW after each 4-D input and back before each 4-D output; the
converters (ONNX Runtime's layout transformer, LiteRT's, Core ML's MIL passes) cancel those
transposes against their NHWC kernels, so the runtime binds its buffers as they are.

Invariant: ``NhwcBoundary(m)(*map(nhwc_example, xs))`` equals ``m(*xs)`` with its 4-D outputs
permuted to NHWC; nothing else about ``m`` changes (the segments are shared by every backend
of a build).
"""

from __future__ import annotations

import torch


class NhwcBoundary(torch.nn.Module):
    """``module`` with NHWC 4-D inputs and outputs (other ranks unchanged). A single output
    stays a tensor unless ``tuple_outputs`` (Core ML names outputs by position of a tuple)."""

    def __init__(self, module: torch.nn.Module, tuple_outputs: bool = False):
        super().__init__()
        self.module = module
        self.tuple_outputs = tuple_outputs

    def forward(self, *inputs):
        logical = [x.permute(0, 3, 1, 2) if x.dim() == 4 else x for x in inputs]
        outputs = self.module(*logical)
        single = isinstance(outputs, torch.Tensor)
        outputs = (outputs,) if single else tuple(outputs)
        physical = tuple(y.permute(0, 2, 3, 1) if y.dim() == 4 else y for y in outputs)
        return physical[0] if single and not self.tuple_outputs else physical


def nhwc_example(x: torch.Tensor) -> torch.Tensor:
    """The plan's physical form of an example input: NHWC for 4-D, contiguous."""
    return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x).contiguous()


def nhwc_examples_and_dynamic_shapes(artifact) -> tuple[tuple[torch.Tensor, ...], tuple | None]:
    """``artifact``'s example inputs in NHWC and, for a tile segment (``max_batch`` > 1), the
    ``dynamic_shapes`` that bound input 0's batch to 1..max_batch (None for a dense segment)."""
    examples = tuple(nhwc_example(x) for x in artifact.example_inputs)
    if artifact.max_batch <= 1:
        return examples, None
    batch = torch.export.Dim(f"tiles_{artifact.name}", min=1, max=artifact.max_batch)
    # one entry: forward's *inputs, a tuple of per-input specs
    return examples, (({0: batch},) + tuple(None for _ in examples[1:]),)
