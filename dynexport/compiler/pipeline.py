"""compile_model: model -> frame program + backend segments. The order of the passes lives
here. ``CompiledModel.passes`` names, in order, the passes that changed something (a graph
pass returns whether it did; a lowering pass did when it lowered at least one gate); a pass
that fails with anything but a CompileError is reported with every pass that ran before it."""

from __future__ import annotations

import dataclasses

from dynexport.compiler.frontend import export_graph
from dynexport.compiler.passes.check_supported_ops import check_supported_ops
from dynexport.compiler.passes.dense_fallback import AUTO, add_dense_fallback, auto_fraction, first_gate
from dynexport.compiler.passes.fold_batchnorm import fold_batchnorm
from dynexport.compiler.passes.fold_constants import fold_constants
from dynexport.compiler.passes.fuse_pointwise_epilogue import fuse_pointwise_epilogue
from dynexport.compiler.passes.lower_dstep import lower_dstep
from dynexport.compiler.passes.lower_skip_conv import lower_skip_conv
from dynexport.compiler.passes.mark_spatial_runs import mark_spatial_runs
from dynexport.compiler.passes.partition_at_gates import DenseStep, partition_at_gates
from dynexport.compiler.graph import DSTEP, SKIP_CONV
from dynexport.compiler.plan_builder import PlanBuilder, SegmentArtifact, SegmentKind, example_tensor
from dynexport.errors import CompileError
from dynexport.gating.change_driven import change_driven_paths, make_change_driven
from dynexport.plan.frame_program import NO_LAYER, FrameProgram, Op, Role
from dynexport.streaming import fallback_count  # the reference's rounding of the fraction

GRAPH_PASSES = (fold_constants, fold_batchnorm, check_supported_ops)
DEFAULT_DENSE_CUTOFF = 0.5


@dataclasses.dataclass
class CompiledModel:
    program: FrameProgram
    segments: dict[str, SegmentArtifact]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    passes: list[str]  # the passes that changed something, in the order they first did
    layer_dense_macs: list[int]
    # module paths of the convolutions gated at threshold 0 (gating/change_driven.py): the
    # reference is make_change_driven(model, change_driven)
    change_driven: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PassLog:
    """Which passes ran and which changed something, for ``CompiledModel.passes`` and for
    naming the passes before a failing one."""

    ran: list[str] = dataclasses.field(default_factory=list)
    changed: list[str] = dataclasses.field(default_factory=list)

    def run(self, graph_pass, *args, changed=bool):
        """``graph_pass(*args)``; ``changed(result)`` says whether it changed anything."""
        name = graph_pass.__name__
        try:
            result = graph_pass(*args)
        except CompileError:
            raise  # already names the model's problem (op, module path, shape) for the user
        except Exception as exc:
            raise CompileError(f"pass {name} failed (after {', '.join(self.ran) or 'none'}): "
                               f"{type(exc).__name__}: {exc}") from exc
        if name not in self.ran:
            self.ran.append(name)
        if changed(result) and name not in self.changed:
            self.changed.append(name)
        return result


def compile_model(model, input_shape=None, dense_cutoff: float = DEFAULT_DENSE_CUTOFF,
                  dense_fallback: float | str | None = None, dense_fallback_hold: int = 0,
                  change_driven: bool = True) -> CompiledModel:
    """``dense_fallback``: a fraction of the first gated layer's blocks above which the rest of
    the frame runs as one dense segment (passes/dense_fallback.py), and ``dense_fallback_hold``
    frames after; None: never; ``"auto"`` (dense_fallback.AUTO): 0.5 where the model allows a
    fallback, else none. ``change_driven``: gate the ungated convolutions of a Skip-Conv model
    at threshold 0 (exact: gating/change_driven.py)."""
    if not 0.0 <= dense_cutoff <= 1.0:
        raise CompileError(f"dense cut-off must be a fraction of blocks in [0, 1], got {dense_cutoff}")
    if isinstance(dense_fallback, str) and dense_fallback != AUTO:
        raise CompileError(f"dense fallback must be a fraction, '{AUTO}' or None, got '{dense_fallback}'")
    if dense_fallback not in (None, AUTO) and not 0.0 <= dense_fallback < 1.0:
        raise CompileError(f"dense fallback must be a fraction of the first gated layer's blocks in [0, 1), "
                           f"got {dense_fallback}")
    if dense_fallback_hold < 0:
        raise CompileError(f"dense fallback hold must be a number of frames >= 0, got {dense_fallback_hold}")
    driven = change_driven_paths(model, input_shape) if change_driven else []
    gm, input_shape = export_graph(make_change_driven(model, driven), input_shape)
    log = PassLog()
    for graph_pass in GRAPH_PASSES:
        log.run(graph_pass, gm)
    partitioned = log.run(partition_at_gates, gm, changed=lambda result: True)
    log.run(fuse_pointwise_epilogue, partitioned, changed=lambda fused: fused > 0)
    builder = PlanBuilder()
    frame = builder.tensor("input", input_shape, Role.INPUT)
    builder.bind_value(partitioned.input, frame, input_shape)
    builder.program.inputs = [frame]
    lowerings = {SKIP_CONV: lower_skip_conv, DSTEP: lower_dstep}
    if dense_fallback == AUTO:
        dense_fallback = auto_fraction(partitioned)
    first = first_gate(partitioned) if dense_fallback is not None else None
    busy_branch = holding_branch = None
    for i, step in enumerate(partitioned.steps):
        if i == first and dense_fallback_hold > 0:
            holding_branch = builder.emit(Op.BRANCH_IF_HOLDING, len(builder.program.layers))
        if isinstance(step, DenseStep):
            _lower_dense_step(builder, step, partitioned)
        else:
            # a lowering pass returns the index of the layer it added: it changed the plan
            log.run(lowerings[step.node.target], builder, step, gm, dense_cutoff, changed=lambda index: True)
        if i == first:
            count = fallback_count(dense_fallback, builder.program.layers[0].grid.num_blocks)
            busy_branch = builder.emit(Op.BRANCH_IF_BUSY, 0, 0, count, dense_fallback_hold)
    output = builder.value_tensors[partitioned.output]
    if builder.program.tensors[output].role == Role.SCRATCH:
        builder.program.tensors[output].role = Role.OUTPUT
    builder.program.outputs = [output]
    if busy_branch is not None:
        log.run(add_dense_fallback, builder, partitioned, first, busy_branch, holding_branch,
                changed=lambda result: True)
    mark_spatial_runs(builder)
    builder.program.validate()
    return CompiledModel(builder.program, builder.segments, input_shape, partitioned.shapes[partitioned.output],
                         log.changed, builder.layer_dense_macs, driven)


def _lower_dense_step(builder: PlanBuilder, step: DenseStep, partitioned) -> None:
    inputs = [builder.value_tensors[v] for v in step.inputs]
    outputs = []
    for value in step.outputs:
        shape = partitioned.shapes[value]
        tensor = builder.tensor(value, shape, Role.SCRATCH)
        builder.bind_value(value, tensor, shape)
        outputs.append(tensor)
    examples = tuple(example_tensor(builder.value_shapes[v]) for v in step.inputs)
    index = builder.add_segment(SegmentArtifact(step.name, step.module, examples, kind=SegmentKind.DENSE), inputs,
                                outputs)
    builder.emit(Op.RUN_SEGMENT, index, NO_LAYER)
