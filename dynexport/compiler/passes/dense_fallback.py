"""add_dense_fallback: when the first gated layer computes most of its blocks (the camera
moves), run the rest of the frame as one dense segment instead of layer by layer.

Emits, around the first gated layer F's instructions and after the end of the plan::

        BRANCH_IF_HOLDING F -> held           with a hold only: one of the `hold` frames after
                                              a busy one (every block of F active, unscored)
        ...F's block...
        BRANCH_IF_BUSY F count hold -> fallback   more than `count` of F's blocks active
        ...every later instruction...
        JUMP end
    held:                                     with a hold only
        ...F's last path (dense; tiles on a grid small enough for one batch): every block
           of F computed and stored as its reference...
    fallback:
        RUN_SEGMENT dense_fallback            F's output (and whatever else the rest reads) ->
                                              the model output, every later gate a plain conv
        FORGET_LAYERS 1 n-1                   later layers: all blocks computed, unprimed
    end:

On a busy frame that costs one backend call for the whole network after F, and none of the
per-layer work (scores, gathers, copies, reference tiles): that work would save nothing,
as most blocks change. Its price is the next frame: the later layers kept no state, so it
computes them densely (layer by layer, storing their state again). A held frame does not
even score F: a shaking camera keeps shaking, and scoring a frame that runs densely anyway
kept a held deep net's frame ~20 % above its dense export's. (One segment for F and the rest
together, instead of F's own dense segment, measured no faster and builds the network a
third time: F's call and copy are small next to the reference store that stays.)

Before: every step lowered; the steps after F are skip-conv gates and dense steps (a D-STEP
layer is not dense when unprimed: its policies still decide). After: the reference semantics
are those of ``dynexport.streaming.step(..., dense_fallback=DenseFallback(fraction, hold))``:
above the count, every later gated layer computes densely this frame and is then unprimed;
on a held frame F computes every block and keeps them (hold_skips_gate), so the outputs equal
the reference's up to float rounding of the convolutions, and so do the block decisions.
"""

from __future__ import annotations

from dynexport.compiler.graph import SKIP_CONV
from dynexport.compiler.passes.partition_at_gates import DenseStep, GateStep
from dynexport.compiler.plan_builder import PlanBuilder, SegmentArtifact, SegmentKind, example_tensor
from dynexport.compiler.segment_modules import DenseTail
from dynexport.errors import CompileError
from dynexport.plan.frame_program import NO_LAYER, Op

SEGMENT_NAME = "dense_fallback"

# ``dense_fallback=AUTO`` (what ``dynexport build`` does unless told otherwise): a fallback
# above AUTO_FRACTION of the first gated layer's blocks wherever the model allows one, none
# elsewhere. Measured on the heatmap example, handheld clip, 150x200, 1 thread: layer by layer
# the plan ran 0.62x of its dense export (every layer dense, each scoring its blocks and storing
# its reference), with the fallback 0.97x; the static and small-object clips never reach it.
AUTO = "auto"
AUTO_FRACTION = 0.5


def first_gate(partitioned) -> int:
    """Index in ``partitioned.steps`` of the first gate step, after checking that the dense
    fallback can cover what follows it."""
    reason = _why_no_fallback(partitioned)
    if reason is not None:
        raise CompileError(f"--dense-fallback needs {reason}")
    return next(i for i, step in enumerate(partitioned.steps) if isinstance(step, GateStep))


def auto_fraction(partitioned) -> float | None:
    """AUTO's fraction for this model: AUTO_FRACTION, or None where no fallback can be built."""
    return AUTO_FRACTION if _why_no_fallback(partitioned) is None else None


def _why_no_fallback(partitioned) -> str | None:
    gates = [i for i, step in enumerate(partitioned.steps) if isinstance(step, GateStep)]
    if len(gates) < 2:
        return (f"two or more gated layers (the first one decides, the dense segment runs the others); this model "
                f"has {len(gates)}")
    for i in gates:
        node = partitioned.steps[i].node
        if node.target != SKIP_CONV:
            return (f"skip-conv layers only: a D-STEP layer ({node.name}) is not dense when unprimed (its policies "
                    f"decide even on a reset frame); build without it")
    if partitioned.output not in _dense_run(partitioned.steps[gates[0] + 1:])[1]:
        return ("a model output computed after its first gated layer; here it is computed before that layer ends, so "
                "there is nothing to run densely after it; build without it")
    return None


def add_dense_fallback(builder: PlanBuilder, partitioned, first: int, branch_pc: int,
                       holding_pc: int | None = None) -> None:
    """Append the fallback block and point ``branch_pc`` (F's BRANCH_IF_BUSY) at it; with
    ``holding_pc`` (F's BRANCH_IF_HOLDING, just before its SKIP_GATE), the held block before
    it, which runs into it."""
    inputs, _produced = _dense_run(partitioned.steps[first + 1:])  # first_gate checked that they give the output
    tail = partitioned.steps[first + 1:]
    convs = {step.output: builder.gated_convs[step.output].dense_module() for step in tail if isinstance(step, GateStep)}
    module = DenseTail(tail, convs, inputs, partitioned.output)
    examples = tuple(example_tensor(builder.value_shapes[v]) for v in inputs)
    segment = builder.add_segment(SegmentArtifact(SEGMENT_NAME, module, examples, kind=SegmentKind.DENSE),
                                  [builder.value_tensors[v] for v in inputs],
                                  [builder.value_tensors[partitioned.output]])
    to_end = builder.emit(Op.JUMP)
    if holding_pc is not None:
        builder.patch_target(holding_pc, builder.pc)
        for ins in every_block_path(builder.program.instructions, holding_pc + 1, branch_pc):
            builder.emit(Op(ins.op), ins.a, ins.b, ins.c, ins.d)
    builder.patch_target(branch_pc, builder.pc)
    builder.emit(Op.RUN_SEGMENT, segment, NO_LAYER)
    builder.emit(Op.FORGET_LAYERS, 1, len(builder.program.layers) - 1)
    builder.patch_target(to_end, builder.pc)


def every_block_path(instructions, gate_pc: int, end_pc: int) -> list:
    """The instructions of F's block (``gate_pc``, its SKIP_GATE, to ``end_pc``) that compute
    and store every block: its dense path, which lower_skip_conv puts last, or its only path
    (tiles, on a grid small enough that its tile batch holds every block). They contain no
    branch: copied after a BRANCH_IF_HOLDING, they run straight through."""
    block = instructions[gate_pc:end_pc]
    start = next((ins.b for ins in block if ins.op == Op.BRANCH_IF_DENSE),
                 next(gate_pc + i + 1 for i, ins in enumerate(block) if ins.op == Op.BRANCH_IF_NONE))
    path = instructions[start:end_pc]
    if any(ins.op not in (Op.RUN_SEGMENT, Op.COPY_BLOCKS, Op.GATHER_TILES, Op.SCATTER_TILES, Op.STORE_REFERENCE)
           for ins in path):
        raise AssertionError(f"dense fallback: the first gate's last path has control flow: {path}")
    return path


def _dense_run(steps) -> tuple[list[str], set[str]]:
    """What ``steps`` read from before them (in order) and what they produce."""
    produced, inputs = set(), []
    for step in steps:
        reads = step.inputs if isinstance(step, DenseStep) else [step.input]
        inputs.extend(v for v in reads if v not in produced and v not in inputs)
        produced.update(step.outputs if isinstance(step, DenseStep) else [step.output])
    return inputs, produced
