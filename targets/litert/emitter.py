"""Emit the frame program's segments as one LiteRT model (.tflite) with one signature per segment.

Each segment is converted by litert-torch inside ``NhwcBoundary``
(``targets/segment_forms/nhwc.py``): 4-D inputs and outputs are NHWC, the plan's physical layout, so the runtime binds
its buffers as they are; litert-torch's layout pass folds the boundary permutes into the
NHWC TFLite kernels (measured: a conv segment is one CONV_2D, no TRANSPOSE). D-STEP
policies are no segments: the runtime computes them (DSTEP_POLICY).

Tile segments get a bounded dynamic batch (``tiles_<segment>``, 1..max_batch) on input 0,
exported with an example *at* the bound. The model stores the batch as -1 (no bound): the C
adapter checks K against the plan's bound and resizes the input when K changes.

A segment the converter refuses fails this backend's build with the segment, the op and the
module path it came from (``CompileError``); ``dynexport build`` then still builds the others.

Invariant: the signatures' keys are the segment names; signature inputs are ``args_<i>`` and
outputs ``output_<i>`` in the segment's operand order (the C adapter maps them by that number,
since the converter sorts a signature's operands by name).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from typing import Callable

from dynexport.errors import CompileError


@contextlib.contextmanager
def _quiet_native_output():
    """The converter's native code logs to the process's stdout/stderr (absl lines, rich
    progress): send both file descriptors to a scratch file while it runs."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _signature_args(artifact):
    import torch

    from targets.segment_forms.nhwc import NhwcBoundary, nhwc_examples_and_dynamic_shapes

    examples, dynamic_shapes = nhwc_examples_and_dynamic_shapes(artifact)
    module = NhwcBoundary(artifact.module).eval()
    with torch.no_grad():
        module.requires_grad_(False)
    return module, examples, dynamic_shapes


_OP = re.compile(r"\b(aten[.:]+[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)")


def _module_path(artifact, op: str | None) -> str:
    """Where in the user's model the refused op came from: the nn_module_stack of the first
    node of the segment's graph calling it, when the segment is a traced graph."""
    graph = getattr(artifact.module, "graph", None)
    if graph is None or op is None:
        return type(artifact.module).__name__
    short = op.split(".")[1] if "." in op else op
    for node in graph.nodes:
        if node.op == "call_function" and short in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, kind = list(stack.values())[-1]
                return f"{path or '<root>'} ({getattr(kind, '__name__', kind)})"
            return f"graph node {node.name}"
    return type(artifact.module).__name__


def _refusal(name: str, artifact, exc: Exception) -> CompileError:
    text = f"{type(exc).__name__}: {exc}".strip()
    match = _OP.search(text)
    op = match.group(1) if match else None
    first = text.splitlines()[0][:400] if text else type(exc).__name__
    return CompileError(f"litert: the converter refused segment {name}"
                        f"{f' at op {op}' if op else ''} (module {_module_path(artifact, op)}): {first}")


def _convert(items) -> bytes:
    import litert_torch

    converter = None
    for name, artifact in items:
        module, examples, dynamic_shapes = _signature_args(artifact)
        sign = litert_torch.signature if converter is None else converter.signature
        converter = sign(name, module, examples, dynamic_shapes=dynamic_shapes)
    return bytes(converter.convert().model_content())


def emit_litert(segments: dict, progress: Callable[[str], None] | None = None) -> bytes:
    """Segments (name -> SegmentArtifact) -> bytes of one .tflite, a signature per segment."""
    say = progress or (lambda message: None)
    say(f"convert {len(segments)} segments to one .tflite")
    items = list(segments.items())
    with _quiet_native_output():
        try:
            return _convert(items)
        except Exception as joint:  # which segment: convert them one by one (only on this path)
            for name, artifact in items:
                try:
                    _convert([(name, artifact)])
                except Exception as exc:
                    refused = _refusal(name, artifact, exc)
                    break
            else:
                refused = CompileError(f"litert: converting the {len(items)} segments together failed, each alone "
                                       f"converts: {type(joint).__name__}: {str(joint).splitlines()[0][:400]}")
    raise refused
