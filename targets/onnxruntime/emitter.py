"""Emit the frame program's segments as ONNX models (one per segment) packed into one file.

Each segment is exported with ``torch.onnx.export(..., dynamo=True)`` inside a wrapper whose
4-D inputs and outputs are NHWC, the plan's physical layout: the wrapper permutes NHWC ->
NCHW after each 4-D input and back before each 4-D output, so the runtime binds its buffers
as they are, and ONNX Runtime's layout transformer (ORT_ENABLE_ALL) cancels those transposes
against the NHWC kernels it picks. Tile segments get a symbolic batch (1..max_batch) on
input 0 and output 0, exported with an example *at* the bound.

Invariant: the pack's segment order is the order of ``segments``; its bytes are
``targets/onnxruntime/pack.py``'s format, which the C adapter reads back.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import torch

from dynexport.errors import CompileError
from targets.onnxruntime.pack import pack_segments

OPSET = 18


class NhwcBoundary(torch.nn.Module):
    """``module`` with NHWC 4-D inputs and outputs (other ranks unchanged)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *inputs):
        logical = [x.permute(0, 3, 1, 2) if x.dim() == 4 else x for x in inputs]
        outputs = self.module(*logical)
        single = isinstance(outputs, torch.Tensor)
        outputs = (outputs,) if single else tuple(outputs)
        physical = tuple(y.permute(0, 2, 3, 1) if y.dim() == 4 else y for y in outputs)
        return physical[0] if single else physical


def nhwc_example(x: torch.Tensor) -> torch.Tensor:
    """The plan's physical form of an example input: NHWC for 4-D, contiguous."""
    return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x).contiguous()


def export_segment(artifact) -> bytes:
    """One segment as ONNX model bytes, NHWC at its boundary."""
    examples = tuple(nhwc_example(x) for x in artifact.example_inputs)
    dynamic_shapes = None
    if artifact.max_batch > 1:
        batch = torch.export.Dim(f"tiles_{artifact.name}", min=1, max=artifact.max_batch)
        # one entry: forward's *inputs, a tuple of per-input specs
        dynamic_shapes = (({0: batch},) + tuple(None for _ in examples[1:]),)
    wrapped = NhwcBoundary(artifact.module).eval()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapped, examples, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        opset_version=OPSET, optimize=True, verbose=False,
                                        report=False, external_data=False)
        model = program.model_proto.SerializeToString()
    except Exception as exc:
        raise CompileError(f"segment {artifact.name}: torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        quiet.setLevel(level)
    return model


def emit_onnxruntime(segments: dict, progress: Callable[[str], None] | None = None) -> bytes:
    """Segments (name -> SegmentArtifact) -> bytes of the pack: one ONNX model per segment."""
    say = progress or (lambda message: None)
    say(f"export {len(segments)} segments to ONNX")
    return pack_segments({name: export_segment(artifact) for name, artifact in segments.items()})
