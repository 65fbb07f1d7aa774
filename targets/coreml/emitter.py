"""Emit the frame program's segments as one multifunction Core ML package (``model.mlpackage``),
one function per segment, named as the segment.

Each segment is exported with ``torch.export`` inside ``NhwcBoundary`` (4-D inputs and outputs
NHWC, the plan's physical layout: Core ML turns the permutes into ``transpose`` ops around the
convolutions), decomposed to the core ATen set (``run_decompositions({})``, what coremltools'
EXIR frontend reads) and converted to an ML program. A tile segment's batch is a bounded
export dim ``Dim(min=1, max=max_batch)``: coremltools turns it into the input's shapeRange
(giving ``ct.RangeDim`` in ``inputs=`` for a static export is refused by the converter).

Operands are named by position, ``input_<i>`` / ``output_<i>`` in the plan segment's operand
order: Core ML renames the plan's tensor names ("0.tiles" becomes "var_0_tiles"), and the C
adapter (runtime_ios) gets operands by position, as every backend does. Inputs and outputs are
float32 in both precisions (the runtime's buffers are float32): ``--precision fp16`` only
changes the compute precision, with casts at the boundary.

Functions are converted one by one into temporary packages and merged with
``ct.utils.MultiFunctionDescriptor`` + ``save_multifunction`` (a multifunction ML program needs
iOS 18 / macOS 15: ``MINIMUM_TARGET``). The package's ``Manifest.json`` gets identifiers derived
from its item paths instead of random UUIDs, so that the same segments give the same bytes.

Invariant: the returned directory's functions are exactly the segments, in the operand order
of the plan (``targets/coreml/structure.py`` checks a package against the plan).
"""

from __future__ import annotations

import json
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Callable

import torch

from dynexport.errors import CompileError
from targets.coreml.quiet import coremltools, quiet
from targets.segment_forms.nhwc import NhwcBoundary, nhwc_examples_and_dynamic_shapes

PRECISIONS = ("fp32", "fp16")
INPUT_NAME, OUTPUT_NAME = "input_{}", "output_{}"
MANIFEST_NAMESPACE = uuid.UUID("5f1b5c2e-4d0e-4a53-9a3c-0d1e7c0a2b01")  # dynexport's, for uuid5


MINIMUM_TARGET = "iOS18"


def _numpy_dtype(dtype: torch.dtype):
    import numpy as np

    if dtype == torch.float32:
        return np.float32
    if dtype == torch.int32:
        return np.int32
    raise CompileError(f"Core ML segment operand of dtype {dtype}: the plan has float32 and int32 operands only")


def export_segment(artifact) -> torch.export.ExportedProgram:
    """The segment as a core-ATen torch.export program with NHWC operands (a tile segment's
    batch bounded 1..max_batch, exported at the bound)."""
    examples, dynamic_shapes = nhwc_examples_and_dynamic_shapes(artifact)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(NhwcBoundary(artifact.module, tuple_outputs=True).eval(), examples,
                                          dynamic_shapes=dynamic_shapes, strict=False)
            return program.run_decompositions({})
    except Exception as exc:
        raise CompileError(f"segment {artifact.name}: torch.export failed: {type(exc).__name__}: {exc}") from exc


def convert_segment(artifact, precision: str = "fp32"):
    """One segment -> a Core ML ``MLModel`` (not loaded: nothing loads off macOS) with one
    function "main"."""
    ct = coremltools()
    program = export_segment(artifact)
    outputs = [node for node in program.graph.nodes if node.op == "output"][0].args[0]
    output_dtypes = [value.meta["val"].dtype for value in outputs]
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    try:
        with quiet():
            return ct.convert(
                program, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, MINIMUM_TARGET),
                compute_precision=compute, skip_model_load=True,
                inputs=[ct.TensorType(name=INPUT_NAME.format(i), dtype=_numpy_dtype(x.dtype))
                        for i, x in enumerate(artifact.example_inputs)],
                outputs=[ct.TensorType(name=OUTPUT_NAME.format(i), dtype=_numpy_dtype(dtype))
                         for i, dtype in enumerate(output_dtypes)])
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"segment {artifact.name}: Core ML conversion (coremltools {ct.__version__}) failed: "
                           f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc


def _deterministic_manifest(text: str) -> str:
    """The package's Manifest.json with item identifiers derived from the item paths."""
    manifest = json.loads(text)
    renamed = {old: str(uuid.uuid5(MANIFEST_NAMESPACE, item["path"]))
               for old, item in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[old]: item for old, item in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    return json.dumps(manifest, indent=4, sort_keys=True) + "\n"


def read_package(folder: Path) -> dict[str, bytes]:
    """A package directory as {relative POSIX path: bytes} (regular files only)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def emit_coreml(segments: dict, progress: Callable[[str], None] | None = None,
                precision: str = "fp32") -> dict[str, bytes]:
    """Segments (name -> SegmentArtifact) -> the files of one multifunction ``.mlpackage``
    ({relative path: bytes}), one function per segment."""
    if precision not in PRECISIONS:
        raise CompileError(f"--precision {precision!r}: Core ML builds take one of {', '.join(PRECISIONS)}")
    if not segments:
        raise CompileError("Core ML: the plan has no segments to convert")
    say = progress or (lambda message: None)
    ct = coremltools()
    with tempfile.TemporaryDirectory(prefix="dynexport-coreml-") as tmp:
        tmp = Path(tmp)
        descriptor = ct.utils.MultiFunctionDescriptor()
        for index, (name, artifact) in enumerate(segments.items()):
            say(f"convert segment {index + 1}/{len(segments)} ({name}, {precision})")
            model = convert_segment(artifact, precision)
            single = tmp / f"segment{index}.mlpackage"
            with quiet():
                model.save(str(single))
            descriptor.add_function(str(single), src_function_name="main", target_function_name=name)
        descriptor.default_function_name = next(iter(segments))
        say(f"merge {len(segments)} functions into one package")
        package = tmp / "model.mlpackage"
        try:
            with quiet():
                ct.utils.save_multifunction(descriptor, str(package))
        except Exception as exc:
            raise CompileError(f"Core ML: merging the segments into one package failed: {type(exc).__name__}: "
                               f"{exc}") from exc
        files = read_package(package)
    files["Manifest.json"] = _deterministic_manifest(files["Manifest.json"].decode()).encode()
    return files
