"""The Core ML backend (targets/coreml) on a machine that cannot run Core ML: the emitter's
multifunction package passes the structural check against the plan (fp32, and fp16 with
float32 I/O); tampered packages (a missing function, a wrong shape, an fp16 output, an fp16 op
in an fp32 build, a CPU-only op, no manifest) fail it with a message naming the segment and
operand; `--target ios` builds Core ML and ExecuTorch into one folder whose package files are
all checksummed; verify reports Core ML as "structural: pass; numerics: not run (needs macOS)"
with exit status 3, never as passed; and the macOS path of verify (the plan interpreter over a
host runner) passes with torch standing in for Core ML."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynexport.errors import CompileError, PlanError
from tests.targets.backend_models import INPUT_SHAPE, small_model

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 6
CLI = [sys.executable, "-m", "dynexport.cli.main"]


def write_package(files: dict, folder: Path) -> Path:
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def packages(compiled, backend_build, tmp_path_factory):
    """fp32: the mixed model's coreml build, shared with the differential suite (conftest); fp16 emitted here."""
    from targets.coreml.emitter import emit_coreml

    fp16 = write_package(emit_coreml(compiled.segments, precision="fp16"),
                         tmp_path_factory.mktemp("coreml") / "fp16" / "model.mlpackage")
    return {"fp32": backend_build("mixed", "coreml").artifact, "fp16": fp16}


def test_the_package_has_one_function_per_segment_and_passes_the_structural_check(compiled, packages):
    from targets.coreml.structure import check_package, read_spec

    assert check_package(packages["fp32"], compiled.program) == []
    spec = read_spec(packages["fp32"])
    functions = {f.name: f for f in spec.description.functions}
    assert list(functions) == [s.name for s in compiled.program.segments]
    tile = next(s for s in compiled.program.segments if s.max_batch > 1)
    first = functions[tile.name].input[0].type.multiArrayType
    assert (first.shapeRange.sizeRanges[0].lowerBound, first.shapeRange.sizeRanges[0].upperBound) == (1, tile.max_batch)
    assert list(first.shape)[1:] == list(compiled.program.tensors[compiled.program.segment_inputs(tile)[0]].shape)[1:]
    kinds = {a.kind.value for a in compiled.segments.values()}
    assert {"tiles", "dense"} <= kinds  # D-STEP policies: computed by the runtime (DSTEP_POLICY), no segment
    # identifiers derived from item paths, not random: the same segments give the same package
    import uuid

    from targets.coreml.emitter import MANIFEST_NAMESPACE
    manifest = json.loads((packages["fp32"] / "Manifest.json").read_text())
    root = manifest["rootModelIdentifier"]
    assert root == str(uuid.uuid5(MANIFEST_NAMESPACE, manifest["itemInfoEntries"][root]["path"]))


def test_fp16_keeps_float32_io_and_is_refused_as_an_fp32_build(compiled, packages):
    from targets.coreml.structure import check_package

    assert check_package(packages["fp16"], compiled.program, {"precision": "fp16"}) == []
    problems = check_package(packages["fp16"], compiled.program, {"precision": "fp32"})
    assert problems and all("compute in fp16 in an fp32 build" in p for p in problems)


def tampered(package: Path, tmp_path: Path, change) -> Path:
    """A copy of ``package`` whose root spec ``change(spec)`` edited."""
    from targets.coreml.structure import read_spec

    copy = tmp_path / "tampered.mlpackage"
    shutil.copytree(package, copy)
    spec = read_spec(copy)
    change(spec)
    (copy / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(spec.SerializeToString())
    return copy


def _drop_function(spec, name):
    kept = [f for f in spec.description.functions if f.name != name]
    del spec.description.functions[:]
    spec.description.functions.extend(kept)
    del spec.mlProgram.functions[name]


def _fp16_output(spec):
    from coremltools.proto import FeatureTypes_pb2

    spec.description.functions[0].output[0].type.multiArrayType.dataType = \
        FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Value("FLOAT16")


def _wrong_shape(spec):
    dims = spec.description.functions[-1].input[0].type.multiArrayType.shape
    dims[-1] += 1


def _while_loop(spec):
    function = next(iter(spec.mlProgram.functions.values()))
    block = function.block_specializations[function.opset]
    next(op for op in block.operations if op.type != "const").type = "while_loop"


@pytest.mark.parametrize("change, expected", [
    ("drop", "the package has no function of that name"),
    (_fp16_output, "output 0 ({output}) is FLOAT16, expected FLOAT32"),
    (_wrong_shape, "input 0 ({last_input}) has shape"),
    (_while_loop, "run on the CPU only"),
])
def test_a_tampered_package_fails_the_structural_check_naming_what(compiled, packages, tmp_path, change, expected):
    from targets.coreml.structure import check_package

    program = compiled.program
    first, last = program.segments[0], program.segments[-1]
    expected = expected.format(output=program.tensors[program.segment_outputs(first)[0]].name,
                               last_input=program.tensors[program.segment_inputs(last)[0]].name)
    edit = (lambda spec: _drop_function(spec, first.name)) if change == "drop" else change
    problems = check_package(tampered(packages["fp32"], tmp_path, edit), program)
    assert any(expected in p for p in problems), problems
    if change == "drop":
        assert any(p.startswith(f"segment {first.name}:") for p in problems)


def test_a_folder_without_manifest_is_no_package(compiled, packages, tmp_path):
    from targets.coreml.structure import check_package

    copy = tmp_path / "broken.mlpackage"
    shutil.copytree(packages["fp32"], copy)
    (copy / "Manifest.json").unlink()
    assert check_package(copy, compiled.program) == [f"'{copy}' has no Manifest.json: not a Core ML package"]


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS: the numerics run there")
def test_the_host_runner_says_it_cannot_run_here():
    from targets.coreml.host_runtime import CoreMLSegments

    assert CoreMLSegments.unavailable() == "needs macOS"
    with pytest.raises(RuntimeError, match="needs macOS"):
        CoreMLSegments(Path("model.mlpackage"))


def test_precision_is_refused_where_no_backend_takes_it(tmp_path):
    from dynexport.build import build

    with pytest.raises(CompileError, match="--precision fp16: none of the backends built \\(executorch\\) takes it; "
                                           "it applies to coreml"):
        build(ROOT / "examples" / "skipconv_heatmap" / "model.pt", tmp_path / "out", target="host", precision="fp16")
    with pytest.raises(CompileError, match="--precision 'fp8': expected one of fp32, fp16"):
        build(ROOT / "examples" / "skipconv_heatmap" / "model.pt", tmp_path / "out", target="ios", precision="fp8")


# --- a --target ios build and verify ---------------------------------------------------------


@pytest.fixture(scope="module")
def ios_build(tmp_path_factory):
    from dynexport.build import build

    folder = tmp_path_factory.mktemp("ios_build")
    torch.save(small_model(), folder / "model.pt")
    build(folder / "model.pt", folder / "out", target="ios", input_shape="x".join(map(str, INPUT_SHAPE)),
          allow_pickle=True)
    return folder / "out"


def test_an_ios_build_has_both_backends_and_checksums_every_package_file(ios_build):
    from dynexport.harness.verify import open_build

    manifest = json.loads((ios_build / "manifest.json").read_text())
    assert manifest["target"] == "ios" and manifest["backends"] == ["executorch", "coreml"]
    on_disk = sorted(p.relative_to(ios_build).as_posix() for p in (ios_build / "model.mlpackage").rglob("*")
                     if p.is_file())
    assert on_disk and all(name in manifest["artifacts"] for name in on_disk)
    assert (ios_build / "runtime" / "runtime_ios" / "Sources" / "DynrtCoreML" / "dynrt_coreml.m").is_file()
    assert (ios_build / "runtime" / "runtime_ios" / "Package.swift").is_file() and (ios_build / "INTEGRATION.md").is_file()
    assert manifest["app"]["wrapper"] == "runtime/runtime_ios"
    assert open_build(ios_build).program.artifacts[-1].name == "coreml"


def test_verify_reports_core_ml_as_not_run_and_exits_3(ios_build):
    result = subprocess.run([*CLI, "verify", str(ios_build), "--frames", str(FRAMES), "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 3, result.stderr[-2000:]
    report = json.loads(result.stdout)
    coreml, executorch = report["backends"]["coreml"], report["backends"]["executorch"]
    assert coreml["summary"] == "structural: pass; numerics: not run (needs macOS)"
    assert coreml["passed"] is False and coreml["status"] == "not run" and coreml["max_rel_err"] is None
    assert executorch["passed"] is True and report["passed"] is False and report["result"] == "incomplete"
    table = subprocess.run([*CLI, "verify", str(ios_build), "--frames", "2"], capture_output=True, text=True)
    assert table.returncode == 3
    assert "coreml: structural: pass; numerics: not run (needs macOS)" in table.stdout
    assert "this is not a pass" in table.stderr
    only = subprocess.run([*CLI, "verify", str(ios_build), "--frames", "2", "--backend", "executorch"],
                          capture_output=True, text=True)
    assert only.returncode == 0, only.stderr[-2000:]


def test_a_changed_or_added_package_file_is_refused(ios_build, tmp_path):
    from dynexport.harness.verify import open_build

    copy = tmp_path / "out"
    shutil.copytree(ios_build, copy)
    (copy / "model.mlpackage" / "extra.bin").write_bytes(b"not listed")
    with pytest.raises(PlanError, match="extra.bin, which the manifest does not list"):
        open_build(copy)
    (copy / "model.mlpackage" / "extra.bin").unlink()
    weights = copy / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PlanError, match="does not match the manifest's checksum"):
        open_build(copy)


def test_a_failing_structure_fails_verify_with_exit_1(ios_build, tmp_path, monkeypatch):
    import targets.coreml.structure as structure
    from dynexport.harness.verify import verify

    monkeypatch.setattr(structure, "check_package", lambda folder, program, options: ["segment x: broken"])
    report = next(r for r in verify(ios_build, frames=2, backends=["coreml"]) if r.backend == "coreml")
    assert report.status == "fail" and report.structural == "fail" and not report.passed
    assert report.failures == ["structure: segment x: broken"]


def test_the_macos_numeric_path_passes_with_torch_standing_in_for_core_ml(ios_build, compiled, monkeypatch):
    """On macOS verify runs the plan interpreter over CoreMLSegments; here the same path runs
    with the compiler's torch modules in its place (the plan is the same: compiling is
    deterministic), so what is checked is verify's side of it, not Core ML."""
    import targets.coreml.host_runtime as host_runtime
    from dynexport.harness.verify import verify
    from dynexport.plan.interpreter import TorchSegments

    segments = compiled.segments

    class TorchStandIn(TorchSegments):
        @staticmethod
        def unavailable():
            return None

        def __init__(self, package):
            assert Path(package).name == "model.mlpackage"
            super().__init__(segments)

    monkeypatch.setattr(host_runtime, "CoreMLSegments", TorchStandIn)
    (report,) = verify(ios_build, frames=FRAMES, backends=["coreml"])
    assert report.passed, report.failures
    assert report.summary() == "structural: pass; numerics: pass" and report.max_rel_err <= 1e-5
    assert report.gate_agreement == 1.0 and np.isfinite(report.max_abs_err)
