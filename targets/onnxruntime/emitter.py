"""Emit the frame program's segments as ONNX models (one per segment) packed into one file.

Each segment is exported with ``torch.onnx.export(..., dynamo=True)`` inside ``NhwcBoundary``
(``targets/segment_forms/nhwc.py``: 4-D operands NHWC, the plan's physical layout; ONNX
Runtime's layout transformer, ORT_ENABLE_ALL, cancels its transposes against the NHWC kernels
it picks). Tile segments get a symbolic batch (1..max_batch) on input 0 and output 0.

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
from targets.segment_forms.nhwc import NhwcBoundary, nhwc_examples_and_dynamic_shapes

OPSET = 18


def export_segment(artifact) -> bytes:
    """One segment as ONNX model bytes, NHWC at its boundary."""
    examples, dynamic_shapes = nhwc_examples_and_dynamic_shapes(artifact)
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
