"""The ONNX Runtime backend (targets/onnxruntime): the emitter's models match torch per
segment (in onnxruntime's Python runtime, at several batches of a tile segment); the pack
format round-trips and refuses damaged files; the native adapter through the driver
(--backend onnxruntime) passes verify on a small built model, and refuses a truncated or
tampered model.onnxpack with a named error, never a crash."""

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynexport import video
from targets.onnxruntime.pack import PackError, pack_segments, unpack_segments
from tests.targets.backend_models import small_model

ROOT = Path(__file__).resolve().parents[2]
HEIGHT = WIDTH = 24
FRAMES = 8


@pytest.fixture(scope="module")
def compiled():
    from dynexport.compiler.pipeline import DEFAULT_DENSE_CUTOFF, compile_model

    return compile_model(small_model(), (1, 3, HEIGHT, WIDTH), DEFAULT_DENSE_CUTOFF)


@pytest.fixture(scope="module")
def pack(compiled):
    from targets.onnxruntime.emitter import emit_onnxruntime

    return emit_onnxruntime(compiled.segments)


def test_every_segment_matches_torch_in_onnxruntime(compiled, pack):
    from targets.onnxruntime.host_runtime import OnnxRuntimeSegments

    runner = OnnxRuntimeSegments(pack)
    assert runner.method_names == set(compiled.segments)
    kinds = set()
    for name, artifact in compiled.segments.items():
        kinds.add(artifact.kind.value)
        batches = sorted({1, max(1, artifact.max_batch // 2), artifact.max_batch}) if artifact.max_batch > 1 else [None]
        for batch in batches:
            inputs = list(artifact.example_inputs)
            if batch is not None:
                inputs[0] = inputs[0][:batch]
            with torch.no_grad():
                expected = artifact.module(*inputs)
            expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
            got = runner.run(name, inputs)
            assert len(got) == len(expected), name
            for g, e in zip(got, expected):
                assert g.shape == e.shape and g.dtype == e.dtype, (name, batch, g.shape, e.shape)
                error = (g.double() - e.double()).abs().max().item() if e.numel() else 0.0
                assert error <= 1e-5, f"segment {name} at batch {batch}: max abs error {error}"
    assert {"tiles", "dense"} <= kinds


def test_a_tile_segment_has_a_symbolic_batch_and_nhwc_operands(compiled, pack):
    import onnx

    models = unpack_segments(pack)
    name, artifact = next((n, a) for n, a in compiled.segments.items() if a.max_batch > 1)
    graph = onnx.load_from_string(models[name]).graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    n, c, h, w = artifact.example_inputs[0].shape
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [h, w, c]


def test_the_pack_round_trips_and_refuses_damage():
    models = {"a": b"first model", "segment_b": b"\x08\x07second"}
    blob = pack_segments(models)
    assert unpack_segments(blob) == models
    for damaged, match in [
        (blob[:10], "truncated"),
        (b"NOTAPACK" + blob[8:], "magic"),
        (blob[:-3], "outside the file"),
        (blob[:8] + struct.pack("<I", 0) + blob[12:], "segment count 0"),
    ]:
        with pytest.raises(PackError, match=match):
            unpack_segments(damaged)
    with pytest.raises(PackError, match="appears twice"):
        twice = pack_segments({"a": b"x", "b": b"y"})
        unpack_segments(twice.replace(b"\x01\x00\x00\x00b", b"\x01\x00\x00\x00a"))


# --- the native adapter through the driver ------------------------------------------------------


@pytest.fixture(scope="module")
def host_driver(host_driver):  # the session's driver (conftest), checked to carry this backend
    driver = host_driver
    names = subprocess.run([str(driver), "--help"], capture_output=True, text=True).stdout
    assert "onnxruntime" in names, "the host driver was built without the ONNX Runtime adapter"
    return driver


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from dynexport.build import build

    folder = tmp_path_factory.mktemp("onnxruntime_native")
    torch.save(small_model(), folder / "model.pt")
    out = folder / "out"
    build(folder / "model.pt", out, target="host", backend="onnxruntime", input_shape=f"1x3x{HEIGHT}x{WIDTH}",
          allow_pickle=True)
    clip = video.generate("mixed", seed=0, height=HEIGHT, width=WIDTH, frames=FRAMES).as_float()
    (folder / "frames.bin").write_bytes(np.ascontiguousarray(clip.transpose(0, 2, 3, 1)).tobytes())
    return {"dir": folder, "out": out, "plan": out / "plan.dxfp", "pack": out / "model.onnxpack"}


def run_driver(driver, built, pack, tmp_path, extra=()):
    return subprocess.run([str(driver), "--backend", "onnxruntime", "--plan", str(built["plan"]),
                           "--artifact", str(pack), "--frames", str(built["dir"] / "frames.bin"),
                           "--outputs", str(tmp_path / "outputs.bin"), *map(str, extra)],
                          capture_output=True, text=True, timeout=600)


def test_verify_passes_through_the_native_adapter(host_driver, built):
    result = subprocess.run([sys.executable, "-m", "dynexport.cli.main", "verify", str(built["out"]),
                             "--frames", str(FRAMES), "--json"], capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["passed"] and list(report["backends"]) == ["onnxruntime"]
    assert report["backends"]["onnxruntime"]["max_rel_err"] <= 1e-4


def test_threads_do_not_change_the_outputs_and_sessions_share_a_backend(host_driver, built, tmp_path):
    one = run_driver(host_driver, built, built["pack"], tmp_path, ["--threads", 1])
    assert one.returncode == 0, one.stderr
    first = np.fromfile(tmp_path / "outputs.bin", np.float32)
    two = run_driver(host_driver, built, built["pack"], tmp_path, ["--threads", 2])
    assert two.returncode == 0, two.stderr
    np.testing.assert_allclose(np.fromfile(tmp_path / "outputs.bin", np.float32), first, atol=1e-5, rtol=0)
    shared = run_driver(host_driver, built, built["pack"], tmp_path, ["--shared-sessions-check", "--threads", 1])
    assert shared.returncode == 0, shared.stderr


@pytest.mark.parametrize("damage, named", [
    (lambda b: b[:len(b) // 2], "outside the file's"),
    (lambda b: b[:12], "truncated"),
    (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
    (lambda b: b[:8] + struct.pack("<I", 10**6) + b[12:], "segment count 1000000"),
    # the first entry's offset pointed past the end (its name is "layer_0_tiles" or similar)
    (lambda b: b[:20 + struct.unpack_from("<I", b, 16)[0]] + struct.pack("<Q", len(b) + 1)
     + b[28 + struct.unpack_from("<I", b, 16)[0]:], "outside the file's"),
])
def test_a_damaged_pack_is_refused_with_a_named_error(host_driver, built, tmp_path, damage, named):
    damaged = tmp_path / "model.onnxpack"
    damaged.write_bytes(damage(built["pack"].read_bytes()))
    result = run_driver(host_driver, built, damaged, tmp_path)
    assert result.returncode > 0, f"crashed or passed: {result.returncode}, {result.stderr[-500:]}"
    assert "model.onnxpack" in result.stderr and named in result.stderr, result.stderr


def test_a_tampered_model_inside_a_valid_pack_is_refused(host_driver, built, tmp_path):
    blob = bytearray(built["pack"].read_bytes())
    blob[-40:] = bytes(40)  # the last model's tail zeroed: the directory is fine, the CRC is not
    damaged = tmp_path / "model.onnxpack"
    damaged.write_bytes(bytes(blob))
    result = run_driver(host_driver, built, damaged, tmp_path)
    assert result.returncode > 0, result.stderr
    assert "artifact" in result.stderr.lower(), result.stderr


def test_the_library_variable_comes_first_and_a_foreign_library_is_named(host_driver, built, tmp_path):
    libm = next(p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6")
                if Path(p).exists())
    env = {"PATH": "/usr/bin:/bin", "DYNRT_ONNXRUNTIME_LIBRARY": libm}
    result = subprocess.run([str(host_driver), "--backend", "onnxruntime", "--plan", str(built["plan"]),
                             "--artifact", str(built["pack"]), "--frames", str(built["dir"] / "frames.bin"),
                             "--outputs", str(tmp_path / "outputs.bin")], capture_output=True, text=True, env=env)
    assert result.returncode > 0, result.stderr
    assert f"{libm} has no OrtGetApiBase: not an ONNX Runtime library" in result.stderr, result.stderr


@pytest.mark.slow
def test_aarch64_driver_under_qemu_matches_host(host_driver, built, tmp_path):
    runner = ROOT / "build" / "aarch64" / "bin" / "qemu-run"
    driver = ROOT / "build" / "aarch64" / "bin" / "dynrt_driver"
    if shutil.which("qemu-aarch64") is None or not runner.exists() or not driver.exists():
        pytest.skip("not run: no aarch64 build (tools/build_runtime.sh aarch64) or no qemu-aarch64")
    if "onnxruntime" not in subprocess.run([str(runner), str(driver), "--help"], capture_output=True,
                                           text=True).stdout:
        pytest.skip("not run: the aarch64 driver has no ONNX Runtime adapter")
    frame_bytes = 4 * 3 * HEIGHT * WIDTH
    frames = tmp_path / "frames.bin"
    frames.write_bytes((built["dir"] / "frames.bin").read_bytes()[:2 * frame_bytes])
    host = subprocess.run([str(host_driver), "--backend", "onnxruntime", "--plan", str(built["plan"]), "--artifact",
                           str(built["pack"]), "--frames", str(frames), "--outputs", str(tmp_path / "host.bin")],
                          capture_output=True, text=True)
    assert host.returncode == 0, host.stderr
    arm = subprocess.run([str(runner), str(driver), "--backend", "onnxruntime", "--plan", str(built["plan"]),
                          "--artifact", str(built["pack"]), "--frames", str(frames), "--outputs",
                          str(tmp_path / "arm.bin"), "--threads", "1"], capture_output=True, text=True, timeout=900)
    assert arm.returncode == 0, arm.stderr
    got, expected = np.fromfile(tmp_path / "arm.bin", np.float32), np.fromfile(tmp_path / "host.bin", np.float32)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4
