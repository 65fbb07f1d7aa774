"""mark_spatial_runs: RUN_SEGMENT hints that let the runtime track changes through ungated
dense steps (issue 14).

A gated layer after a dense step scores only the blocks whose input changed, which it knows
from the change map of its input (session_internal.h). A dense step's output is a whole write
unless its run says how its output pixels depend on its input pixels:

* ``RunFlag.POINTWISE``: only ``POINTWISE_OPS`` (activations, residual adds, BatchNorm), every
  operand a map of one size: output pixel (y, x) comes from input pixel (y, x);
* ``RunFlag.NEAREST_UPSAMPLE``: pointwise ops and nearest upsampling by whole factors, the
  outputs fy x fx times the inputs: output pixel (y, x) comes from input pixel (y // fy,
  x // fx) (the heatmap head's ``nn.Upsample``).

Invariant after: a flagged run's outputs change, pixel for pixel, only where the input pixels
they come from changed. The ops are checked by name, and the dependence by probing: a change
of one input pixel, at a few places, must change exactly the output pixels it maps to and
nothing else (which catches an upsampling that is not nearest or not aligned to the pixel
grid). Hints never change what a plan computes (a runtime that ignores them computes the
same); run once the plan is complete.
"""

from __future__ import annotations

import torch

from dynexport.compiler.passes.fuse_pointwise_epilogue import POINTWISE_OPS, is_pointwise
from dynexport.compiler.plan_builder import PlanBuilder, SegmentKind
from dynexport.plan.frame_program import NO_LAYER, DType, Layout, Op, RunFlag

_aten = torch.ops.aten
NEAREST_UPSAMPLE_OPS = {_aten.upsample_nearest2d.vec, _aten.upsample_nearest2d.default}


def mark_spatial_runs(builder: PlanBuilder) -> int:
    """Sets the flags on the plan's fixed dense runs; returns how many it flagged."""
    program, flagged = builder.program, 0
    for ins in program.instructions:
        if ins.op != Op.RUN_SEGMENT or ins.b != NO_LAYER:
            continue
        segment = program.segments[ins.a]
        artifact = builder.segments[segment.name]
        if artifact.kind != SegmentKind.DENSE or not hasattr(artifact.module, "graph"):
            continue
        inputs = [program.tensors[t] for t in program.segment_inputs(segment)]
        outputs = [program.tensors[t] for t in program.segment_outputs(segment)]
        if not inputs or not all(t.rank == 4 and t.layout == Layout.NHWC and t.dtype == DType.FLOAT32 and
                                 t.dims[0] == 1 for t in inputs + outputs):
            continue
        in_sizes = {tuple(t.dims[1:3]) for t in inputs}
        out_sizes = {tuple(t.dims[1:3]) for t in outputs}
        if len(in_sizes) != 1 or len(out_sizes) > 1:
            continue
        (height, width), = in_sizes
        (out_h, out_w), = out_sizes or in_sizes
        if (out_h, out_w) == (height, width) and is_pointwise(artifact.module):
            ins.c |= int(RunFlag.POINTWISE)
            flagged += 1
        elif out_h % height == 0 and out_w % width == 0 and _is_nearest_upsampling(artifact, out_h // height,
                                                                                   out_w // width):
            ins.c |= int(RunFlag.NEAREST_UPSAMPLE)
            flagged += 1
    return flagged


def _is_nearest_upsampling(artifact, fy: int, fx: int) -> bool:
    targets = {node.target for node in artifact.module.graph.nodes if node.op == "call_function"}
    if not targets & NEAREST_UPSAMPLE_OPS or not targets <= POINTWISE_OPS | NEAREST_UPSAMPLE_OPS:
        return False
    return _changes_stay_in_their_images(artifact.module, artifact.example_inputs, fy, fx)


@torch.no_grad()
def _changes_stay_in_their_images(module, examples, fy: int, fx: int) -> bool:
    """Changing input pixel (y, x) of every input changes output pixels [y*fy, (y+1)*fy) x
    [x*fx, (x+1)*fx) and no other, at the corners and the middle of the map."""
    generator = torch.Generator().manual_seed(0)
    base = [torch.randn(e.shape, generator=generator).contiguous(memory_format=torch.channels_last)
            for e in examples]
    try:
        before = module(*base)[0]
        _, _, height, width = base[0].shape
        for y, x in ((0, 0), (height - 1, width - 1), (height // 2, width // 2)):
            probed = [b.clone() for b in base]
            for p in probed:
                p[:, :, y, x] += 1.0 + p[:, :, y, x].abs()
            changed = (module(*probed)[0] != before).any(dim=1)[0]
            expected = torch.zeros_like(changed)
            expected[y * fy:(y + 1) * fy, x * fx:(x + 1) * fx] = True
            if changed.shape != expected.shape or not torch.equal(changed, expected):
                return False
    except (RuntimeError, ValueError, IndexError):
        return False
    return True
