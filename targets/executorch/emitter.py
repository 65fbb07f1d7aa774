"""Emit the frame program's segments as one ExecuTorch program with one method per segment.

Every segment is exported with channels_last example inputs (the plan's tensors are NHWC, so
XNNPACK converts no layout at the boundary). Tile segments get a bounded dynamic batch dim
1..max_batch and are exported with an example *at* the bound, which is what sizes the planned
memory (a smaller example under-sizes it).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.export import Dim

from dynexport.errors import CompileError


def export_segment(artifact) -> torch.export.ExportedProgram:
    dynamic_shapes = None
    if artifact.max_batch > 1:
        batch = Dim(f"tiles_{artifact.name}", min=1, max=artifact.max_batch)
        dynamic_shapes = ({0: batch},) + tuple(None for _ in artifact.example_inputs[1:])
    try:
        return torch.export.export(artifact.module, artifact.example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise CompileError(f"segment {artifact.name}: torch.export failed: {exc}") from exc


def emit_executorch(segments: dict, progress: Callable[[str], None] | None = None) -> bytes:
    """Segments (name -> SegmentArtifact) -> bytes of a .pte with one method per segment."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    programs = {}
    for name, artifact in segments.items():
        if progress:
            progress(f"export {name}")
        programs[name] = export_segment(artifact)
    if progress:
        progress("lower to XNNPACK")
    try:
        edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
        if progress:
            progress("serialize .pte")
        return bytes(edge.to_executorch().buffer)
    except Exception as exc:
        raise CompileError(f"ExecuTorch lowering failed: {type(exc).__name__}: {exc}") from exc
