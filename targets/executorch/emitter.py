"""Emit the frame program's segments as one ExecuTorch program with one method per segment.

Every segment is exported with channels_last example inputs (the plan's tensors are NHWC, so
XNNPACK converts no layout at the boundary). Tile segments get a bounded dynamic batch dim
1..max_batch and are exported with an example *at* the bound, which is what sizes the planned
memory (a smaller example under-sizes it).

Lowering costs seconds per method whatever its size, so segments are lowered in groups in
parallel worker processes and the programs merged (``merge_programs``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch.export import Dim

from dynexport.errors import CompileError

PARALLEL_FROM = 6  # fewer segments than this lower in-process (a worker costs a torch import)


def export_segment(artifact) -> torch.export.ExportedProgram:
    dynamic_shapes = None
    if artifact.max_batch > 1:
        batch = Dim(f"tiles_{artifact.name}", min=1, max=artifact.max_batch)
        dynamic_shapes = ({0: batch},) + tuple(None for _ in artifact.example_inputs[1:])
    try:
        return torch.export.export(artifact.module, artifact.example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise CompileError(f"segment {artifact.name}: torch.export failed: {exc}") from exc


def lower_segments(segments: dict) -> bytes:
    """Export and lower a group of segments into one .pte (runs in a worker process too)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    programs = {name: export_segment(artifact) for name, artifact in segments.items()}
    try:
        edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
        return bytes(edge.to_executorch().buffer)
    except Exception as exc:
        raise CompileError(f"ExecuTorch lowering failed for {', '.join(segments)}: {type(exc).__name__}: {exc}") from exc


def emit_executorch(segments: dict, progress: Callable[[str], None] | None = None, jobs: int | None = None) -> bytes:
    """Segments (name -> SegmentArtifact) -> bytes of a .pte with one method per segment."""
    from targets.executorch.merge_programs import merge_programs

    say = progress or (lambda message: None)
    jobs = jobs or min(len(segments) // PARALLEL_FROM + 1, os.cpu_count() or 1)
    if jobs <= 1:
        say(f"lower {len(segments)} segments to XNNPACK")
        return lower_segments(segments)
    names = list(segments)
    groups = [{name: segments[name] for name in names[i::jobs]} for i in range(jobs)]
    say(f"lower {len(segments)} segments to XNNPACK in {jobs} processes")
    parts = _lower_in_workers(groups)
    say("merge methods into one program")
    return merge_programs(parts)


def _lower_in_workers(groups: list[dict]) -> list[bytes]:
    """Run ``lower_segments`` on each group in its own Python process (fresh interpreters:
    forking a process that ran torch threads can hang, and multiprocessing's spawn would
    re-run the caller's main script)."""
    with tempfile.TemporaryDirectory(prefix="dynexport-lower-") as tmp:
        workers = []
        for i, group in enumerate(groups):
            request, result = Path(tmp) / f"group{i}.pkl", Path(tmp) / f"group{i}.pte"
            with open(request, "wb") as f:
                pickle.dump(group, f)  # our own segment modules, read back by our own worker
            command = [sys.executable, "-m", "targets.executorch.lower_worker", str(request), str(result)]
            workers.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), result))
        parts, failures = [], []
        for process, result in workers:
            _, stderr = process.communicate()
            if process.returncode != 0:
                failures.append(stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no message)"])
            else:
                parts.append(result.read_bytes())
        if failures:
            raise CompileError("ExecuTorch lowering failed in a worker: " + "; ".join(f[0] for f in failures))
        return parts
