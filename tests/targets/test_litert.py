"""The LiteRT backend (targets/litert): the emitter's .tflite has one signature per segment
(NHWC operands, a dynamic batch on tile segments); the native adapter through the driver
(--backend litert) refuses a truncated or tampered model.tflite, a tile count over the plan's
bound, a plan segment the model has no signature for and a library that is not LiteRT's, with
a named error, never a crash. A backend whose converter refuses a segment does not stop the
others from building. Its numerics (native, interpreter and torch, per segment, threads,
shared sessions, ARM64) are the differential suite's: test_differential.py."""

import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from dynexport.plan.frame_program import Artifact, FrameProgram


@pytest.fixture(scope="module")
def built(backend_build):
    """The mixed model's litert build, shared with the differential suite (conftest)."""
    shared = backend_build("mixed", "litert")
    return {"frames": shared.frames, "plan": shared.plan, "model": shared.artifact}


def test_one_signature_per_segment_nhwc_with_a_dynamic_tile_batch(built, compiled):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=built["model"].read_bytes())
    signatures = interpreter.get_signature_list()
    assert set(signatures) == set(compiled.segments)
    for name, artifact in compiled.segments.items():
        details = interpreter.get_signature_runner(name).get_input_details()
        assert sorted(details) == [f"args_{i}" for i in range(len(artifact.example_inputs))], name
        first = details["args_0"]["shape_signature"].tolist()
        shape = list(artifact.example_inputs[0].shape)
        physical = [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 else shape
        if artifact.max_batch > 1:
            assert first == [-1] + physical[1:], name
        else:
            assert first == physical, name


# --- the native adapter through the driver ------------------------------------------------------


@pytest.fixture(scope="module")
def host_driver(host_driver):  # the session's driver (conftest), checked to carry this backend
    names = subprocess.run([str(host_driver), "--help"], capture_output=True, text=True).stdout
    assert "litert" in names, "the host driver was built without the LiteRT adapter"
    return host_driver


def run_driver(driver, built, model, tmp_path, extra=(), plan=None):
    return subprocess.run([str(driver), "--backend", "litert", "--plan", str(plan or built["plan"]),
                           "--artifact", str(model), "--frames", str(built["frames"]),
                           "--outputs", str(tmp_path / "outputs.bin"), *map(str, extra)],
                          capture_output=True, text=True, timeout=900)


def with_artifact(built, tmp_path, data: bytes) -> Path:
    """The build's plan with its litert artifact record made to match ``data``: what a model
    that passed the runtime's CRC check but is not the emitter's looks like to the adapter."""
    program = FrameProgram.from_bytes(built["plan"].read_bytes())
    program.artifacts = [Artifact(a.name, len(data), zlib.crc32(data)) if a.name == "litert" else a
                         for a in program.artifacts]
    plan = tmp_path / "plan.dxfp"
    plan.write_bytes(program.to_bytes())
    return plan


@pytest.mark.parametrize("damage, named", [
    (lambda b: b[:len(b) // 2], "litert artifact is"),   # the plan's size record stops it before LiteRT
    (lambda b: b[:4] + b"XXXX" + b[8:], "no TFLite file identifier"),
    (lambda b: b[:12], "too short for a TFLite model"),
    (lambda b: struct.pack("<I", len(b) + 8) + b[4:], "outside the file"),
])
def test_a_truncated_or_tampered_model_is_refused_with_a_named_error(host_driver, built, tmp_path, damage, named):
    damaged = tmp_path / "model.tflite"
    damaged.write_bytes(damage(built["model"].read_bytes()))
    result = run_driver(host_driver, built, damaged, tmp_path)
    assert result.returncode > 0, f"crashed or passed: {result.returncode}, {result.stderr[-500:]}"
    assert named in result.stderr, result.stderr


def test_a_plan_segment_without_a_signature_is_named(host_driver, built, tmp_path):
    data = built["model"].read_bytes()
    name = next(s.name for s in FrameProgram.from_bytes(built["plan"].read_bytes()).segments if s.max_batch > 1)
    renamed = name[:-1] + ("X" if name[-1] != "X" else "Y")
    assert data.count(name.encode()) >= 1
    model = tmp_path / "model.tflite"
    model.write_bytes(data.replace(name.encode(), renamed.encode()))  # same length: the flatbuffer stays valid
    result = run_driver(host_driver, built, model, tmp_path, plan=with_artifact(built, tmp_path, model.read_bytes()))
    assert result.returncode > 0, result.stderr
    assert f"model.tflite has no signature '{name}'" in result.stderr, result.stderr


def test_a_tile_count_over_the_plans_bound_is_refused(host_driver, built, tmp_path):
    program = FrameProgram.from_bytes(built["plan"].read_bytes())
    index, segment = next((i, s) for i, s in enumerate(program.segments) if s.max_batch > 1)
    over = run_driver(host_driver, built, built["model"], tmp_path, ["--tune-segments", f"{index}:{segment.max_batch + 1}",
                                                                     "--rounds", 1])
    assert over.returncode > 0 and f"not {segment.max_batch + 1}" in over.stderr, over.stderr
    at = run_driver(host_driver, built, built["model"], tmp_path, ["--tune-segments", f"{index}:{segment.max_batch}",
                                                                   "--rounds", 1])
    assert at.returncode == 0, at.stderr


def test_a_foreign_library_is_named(host_driver, built, tmp_path):
    libm = next(p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6")
                if Path(p).exists())
    result = subprocess.run([str(host_driver), "--backend", "litert", "--plan", str(built["plan"]), "--artifact",
                             str(built["model"]), "--frames", str(built["frames"]), "--outputs",
                             str(tmp_path / "outputs.bin")], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DYNRT_LITERT_LIBRARY": libm})
    assert result.returncode > 0, result.stderr
    assert f"{libm} has no LiteRtCreateEnvironment: not a LiteRT library" in result.stderr, result.stderr


class AntialiasedHalf(torch.nn.Module):
    def forward(self, x):
        # ExecuTorch has a portable kernel for it, litert-torch 0.10 no lowering
        return torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)


def test_a_refused_segment_fails_only_that_backend(tmp_path, monkeypatch):
    """The converter refusing an op fails the litert build naming the op and module; executorch,
    built beside it, still builds and the manifest says which backend was not built. Every op
    dynexport's compiler admits converts, so the compiler's list is widened here by one op
    ExecuTorch runs (a portable kernel) and litert-torch 0.10 has no lowering for."""
    from torch import nn

    from dynexport.build import build
    from dynexport.compiler.passes import check_supported_ops
    from dynexport.nn import SkipConv2d

    monkeypatch.setattr(check_supported_ops, "SUPPORTED",
                        check_supported_ops.SUPPORTED | {torch.ops.aten._upsample_bilinear2d_aa.vec})

    model = nn.Sequential(SkipConv2d(3, 4, 3, padding=1, block=4, threshold=0.3), AntialiasedHalf()).eval()
    torch.save(model, tmp_path / "model.pt")
    result = build(tmp_path / "model.pt", tmp_path / "out", target="android", input_shape="1x3x16x16",
                   allow_pickle=True)
    assert result.manifest["backends"] == ["executorch"]
    reason = result.manifest["failed_backends"]["litert"]
    assert "litert: the converter refused segment" in reason and "_upsample_bilinear2d_aa" in reason, reason
    assert (tmp_path / "out" / "model.pte").exists() and not (tmp_path / "out" / "model.tflite").exists()

