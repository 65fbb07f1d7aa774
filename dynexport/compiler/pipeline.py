"""compile_model: model -> frame program + backend segments. The order of the passes lives
here; a failing pass is reported with the ones that ran before it."""

from __future__ import annotations

import dataclasses

from dynexport.compiler.frontend import export_graph
from dynexport.compiler.passes.check_supported_ops import check_supported_ops
from dynexport.compiler.passes.fold_batchnorm import fold_batchnorm
from dynexport.compiler.passes.fold_constants import fold_constants
from dynexport.compiler.passes.lower_dstep import lower_dstep
from dynexport.compiler.passes.lower_skip_conv import lower_skip_conv
from dynexport.compiler.passes.partition_at_gates import DenseStep, partition_at_gates
from dynexport.compiler.graph import DSTEP, SKIP_CONV
from dynexport.compiler.plan_builder import PlanBuilder, SegmentArtifact, example_tensor
from dynexport.errors import CompileError
from dynexport.plan.frame_program import NO_LAYER, FrameProgram, Op, Role

GRAPH_PASSES = (fold_constants, fold_batchnorm, check_supported_ops)
DEFAULT_DENSE_CUTOFF = 0.5


@dataclasses.dataclass
class CompiledModel:
    program: FrameProgram
    segments: dict[str, SegmentArtifact]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    passes: list[str]
    layer_dense_macs: list[int]


def compile_model(model, input_shape=None, dense_cutoff: float = DEFAULT_DENSE_CUTOFF) -> CompiledModel:
    if not 0.0 <= dense_cutoff <= 1.0:
        raise CompileError(f"dense cut-off must be a fraction of blocks in [0, 1], got {dense_cutoff}")
    gm, input_shape = export_graph(model, input_shape)
    ran: list[str] = []
    for graph_pass in GRAPH_PASSES:
        try:
            graph_pass(gm)
        except CompileError:
            raise
        except Exception as exc:
            raise CompileError(f"pass {graph_pass.__name__} failed (after {', '.join(ran) or 'none'}): {exc}") from exc
        ran.append(graph_pass.__name__)
    partitioned = partition_at_gates(gm)
    ran.append("partition_at_gates")
    builder = PlanBuilder()
    frame = builder.tensor("input", input_shape, Role.INPUT)
    builder.bind_value(partitioned.input, frame, input_shape)
    builder.program.inputs = [frame]
    for step in partitioned.steps:
        if isinstance(step, DenseStep):
            _lower_dense_step(builder, step, partitioned)
        elif step.node.target == SKIP_CONV:
            lower_skip_conv(builder, step, gm, dense_cutoff)
        elif step.node.target == DSTEP:
            lower_dstep(builder, step, gm, dense_cutoff)
    ran += ["lower_skip_conv", "lower_dstep"]
    output = builder.value_tensors[partitioned.output]
    if builder.program.tensors[output].role == Role.SCRATCH:
        builder.program.tensors[output].role = Role.OUTPUT
    builder.program.outputs = [output]
    builder.program.validate()
    return CompiledModel(builder.program, builder.segments, input_shape, partitioned.shapes[partitioned.output], ran,
                         builder.layer_dense_macs)


def _lower_dense_step(builder: PlanBuilder, step: DenseStep, partitioned) -> None:
    inputs = [builder.value_tensors[v] for v in step.inputs]
    outputs = []
    for value in step.outputs:
        shape = partitioned.shapes[value]
        tensor = builder.tensor(value, shape, Role.SCRATCH)
        builder.bind_value(value, tensor, shape)
        outputs.append(tensor)
    examples = tuple(example_tensor(builder.value_shapes[v]) for v in step.inputs)
    index = builder.add_segment(SegmentArtifact(step.name, step.module, examples, kind="dense"), inputs, outputs)
    builder.emit(Op.RUN_SEGMENT, index, NO_LAYER)
