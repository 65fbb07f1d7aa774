"""The structural check of a Core ML package against the plan: what can be verified of a
``model.mlpackage`` on a machine that cannot run it (nothing runs Core ML off macOS).

Read straight from the package's protobuf (no coremltools model object, no model load), for
every plan segment:

- a function named as the segment (and no function that is not a segment);
- its inputs and outputs, in the plan's operand order, named ``input_<i>`` / ``output_<i>``,
  multi-arrays of the plan's dtype (float32 or int32: the runtime's buffers, whatever the
  compute precision), with the plan's physical (NHWC) dims; a tile segment's input 0 takes a
  batch of 1..max_batch (its shapeRange) and its output 0 a leading dim left open. The
  description leaves output shapes empty when the batch is dynamic: they are then read from
  the ML program, from the op that produces the output;
- the ML program's function has the same inputs, and its outputs are those of the description;
- the op list: no op of ``HOST_ONLY_OPS`` (control flow and data-dependent shapes, which Core
  ML schedules on the CPU: the GPU and the Neural Engine take static shapes), and, in an fp32
  build, no value computed in fp16 (an fp16 build computes in fp16 between its casts).

Which device Core ML picks for an op is not in the package (it is decided when the model is
compiled on the device, ``MLComputePlan`` on macOS 14.4+/iOS 17.4+): beyond the rules above,
the op list cannot tell, and this check does not pretend to.

``check_package(folder, program, options)`` returns the failures, each naming the segment and
the operand or op; an empty list is a pass.
"""

from __future__ import annotations

import json
from pathlib import Path

from dynexport.plan.frame_program import DType, FrameProgram
from targets.coreml.quiet import coremltools

INPUT_NAME, OUTPUT_NAME = "input_{}", "output_{}"
# control flow and data-dependent shapes: Core ML runs these on the CPU
HOST_ONLY_OPS = frozenset({"cond", "while_loop", "non_zero", "non_maximum_suppression", "random_bernoulli",
                           "random_categorical", "random_normal", "random_uniform"})
_ARRAY_DTYPES = {DType.FLOAT32: "FLOAT32", DType.INT32: "INT32"}


class PackageError(Exception):
    """The package cannot be read at all (the message says why)."""


def read_spec(folder: Path):
    """The root model spec of a package (``Model_pb2.Model``), found through its Manifest.json."""
    coremltools()  # its protobuf modules, without the import's noise
    from coremltools.proto import Model_pb2

    folder = Path(folder)
    try:
        manifest = json.loads((folder / "Manifest.json").read_text())
        root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    except FileNotFoundError:
        raise PackageError(f"'{folder}' has no Manifest.json: not a Core ML package") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PackageError(f"'{folder / 'Manifest.json'}' does not name a root model ({type(exc).__name__}: {exc})") from None
    path = folder / "Data" / root
    if ".." in Path(root).parts or not path.is_file():
        raise PackageError(f"'{folder}': the root model '{root}' named by Manifest.json is missing")
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError
        raise PackageError(f"'{path}' is not a Core ML model specification ({type(exc).__name__})") from None
    return spec


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _check_feature(feature, expected_name: str, tensor, tile: int, where: str, is_input: bool,
                   mil_dims) -> list[str]:
    """One input/output feature against its plan tensor. ``tile``: max batch of a tile operand
    (dim 0 varies), 0 otherwise. ``mil_dims``: the output's dims in the ML program
    (None: unknown) for outputs whose description has no shape."""
    problems = []
    if feature.name != expected_name:
        problems.append(f"{where} is named {feature.name!r}, expected {expected_name!r}")
    if feature.type.WhichOneof("Type") != "multiArrayType":
        return problems + [f"{where} is a {feature.type.WhichOneof('Type')}, expected a multi-array"]
    array = feature.type.multiArrayType
    from coremltools.proto import FeatureTypes_pb2

    dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
    expected_dtype = _ARRAY_DTYPES[DType(tensor.dtype)]
    if dtype != expected_dtype:
        problems.append(f"{where} is {dtype}, expected {expected_dtype} (the runtime's buffer; fp16 compute keeps "
                        f"float32 inputs and outputs)")
    planned = tuple(int(d) for d in tensor.shape)
    shape = tuple(int(d) for d in array.shape)
    ranges = [(int(r.lowerBound), int(r.upperBound)) for r in array.shapeRange.sizeRanges]
    if is_input:
        if len(shape) != len(planned) or shape[1:] != planned[1:] or (not tile and shape != planned):
            problems.append(f"{where} has shape {_dims_text(shape)}, expected {_dims_text(planned)}"
                            + (f" (batch 1..{tile})" if tile else ""))
        elif tile:
            if not ranges or ranges[0] != (1, tile) or any(r != (d, d) for r, d in zip(ranges[1:], planned[1:])):
                problems.append(f"{where} takes batches {ranges[0] if ranges else 'of one size only'}, expected a "
                                f"batch range (1, {tile}) and fixed {_dims_text(planned[1:])}")
        elif ranges and any(r != (d, d) for r, d in zip(ranges, planned)):
            problems.append(f"{where} has a shape range {ranges}, expected the fixed shape {_dims_text(planned)}")
        return problems
    dims = shape or mil_dims
    if dims is None:
        return problems + [f"{where}: its shape is neither in the description nor in the ML program"]
    dims = tuple(dims)
    fixed = [(got, want) for i, (got, want) in enumerate(zip(dims, planned)) if not (tile and i == 0)]
    open_batch_ok = tile and dims and (dims[0] is None or (isinstance(dims[0], int) and 1 <= dims[0] <= tile))
    if len(dims) != len(planned) or any(got != want for got, want in fixed) or (tile and not open_batch_ok) \
            or (not tile and dims != planned):
        shown = ["N" if d is None else d for d in dims]
        problems.append(f"{where} has shape {_dims_text(shown)}, expected {_dims_text(planned)}"
                        + (f" (batch 1..{tile})" if tile else ""))
    return problems


def _mil_value_dims(value_type):
    """Dims of a MIL tensor value type: ints, None where unknown; None if not a tensor."""
    if value_type.WhichOneof("type") != "tensorType":
        return None
    dims = []
    for dim in value_type.tensorType.dimensions:
        dims.append(int(dim.constant.size) if dim.WhichOneof("dimension") == "constant" else None)
    return dims


def _walk_ops(block):
    for op in block.operations:
        yield op
        for nested in op.blocks:
            yield from _walk_ops(nested)


def check_function(spec, description, segment, program: FrameProgram, precision: str) -> list[str]:
    """One segment's function: its description and its ML program."""
    from coremltools.proto import MIL_pb2

    name = segment.name
    inputs = [program.tensors[t] for t in program.segment_inputs(segment)]
    outputs = [program.tensors[t] for t in program.segment_outputs(segment)]
    tile = int(segment.max_batch) if segment.max_batch > 1 else 0
    problems = []
    function = spec.mlProgram.functions.get(name) if spec.WhichOneof("Type") == "mlProgram" else None
    if function is None:
        return [f"segment {name}: the description has a function but the ML program has none"]
    block = function.block_specializations.get(function.opset)
    if block is None:
        return [f"segment {name}: the ML program's function has no block for its opset {function.opset}"]
    producers = {out.name: out.type for op in block.operations for out in op.outputs}
    if len(description.input) != len(inputs):
        problems.append(f"segment {name}: {len(description.input)} inputs, the plan has {len(inputs)}")
    if len(description.output) != len(outputs):
        problems.append(f"segment {name}: {len(description.output)} outputs, the plan has {len(outputs)}")
    for i, (feature, tensor) in enumerate(zip(description.input, inputs)):
        problems += _check_feature(feature, INPUT_NAME.format(i), tensor, tile if i == 0 else 0,
                                   f"segment {name}: input {i} ({tensor.name})", True, None)
    for i, (feature, tensor) in enumerate(zip(description.output, outputs)):
        mil_type = producers.get(feature.name)
        problems += _check_feature(feature, OUTPUT_NAME.format(i), tensor, tile if i == 0 else 0,
                                   f"segment {name}: output {i} ({tensor.name})", False,
                                   _mil_value_dims(mil_type) if mil_type is not None else None)
    program_inputs = [value.name for value in function.inputs]
    if program_inputs != [f.name for f in description.input]:
        problems.append(f"segment {name}: the ML program's inputs {program_inputs} are not the description's "
                        f"{[f.name for f in description.input]}")
    if list(block.outputs) != [f.name for f in description.output]:
        problems.append(f"segment {name}: the ML program's outputs {list(block.outputs)} are not the description's "
                        f"{[f.name for f in description.output]}")
    ops = list(_walk_ops(block))
    host_only = sorted({op.type for op in ops} & HOST_ONLY_OPS)
    if host_only:
        problems.append(f"segment {name}: ops {', '.join(host_only)} run on the CPU only in Core ML "
                        f"(control flow or data-dependent shapes)")
    if precision == "fp32":
        fp16 = sorted({op.type for op in ops for out in op.outputs
                       if out.type.WhichOneof("type") == "tensorType"
                       and out.type.tensorType.dataType == MIL_pb2.DataType.Value("FLOAT16")})
        if fp16:
            problems.append(f"segment {name}: ops {', '.join(fp16)} compute in fp16 in an fp32 build "
                            f"(rebuild; --precision fp16 is the option that allows it)")
    return problems


def check_package(folder, program: FrameProgram, options: dict | None = None) -> list[str]:
    """The failures of the package ``folder`` against ``program`` (empty: structural pass).
    ``options``: the build options it was made with (the manifest's ``build_options.coreml``)."""
    precision = (options or {}).get("precision", "fp32")
    try:
        spec = read_spec(Path(folder))
    except PackageError as exc:
        return [str(exc)]
    if spec.WhichOneof("Type") != "mlProgram":
        return [f"'{folder}': the model is a {spec.WhichOneof('Type')}, expected an ML program"]
    functions = {f.name: f for f in spec.description.functions}
    if not functions:
        return [f"'{folder}': the package has no functions (a single-function model), expected one per segment "
                f"({len(program.segments)})"]
    problems = []
    planned = [segment.name for segment in program.segments]
    for segment in program.segments:
        if segment.name not in functions:
            problems.append(f"segment {segment.name}: the package has no function of that name "
                            f"(it has {len(functions)} functions)")
            continue
        problems += check_function(spec, functions[segment.name], segment, program, precision)
    extra = sorted(set(functions) - set(planned))
    if extra:
        problems.append(f"the package has functions that are no plan segment: {', '.join(extra)}")
    return problems


def op_counts(folder) -> dict[str, int]:
    """How often each op type occurs over all functions (for reports)."""
    spec = read_spec(Path(folder))
    counts: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for op in _walk_ops(function.block_specializations[function.opset]):
            counts[op.type] = counts.get(op.type, 0) + 1
    return dict(sorted(counts.items()))
