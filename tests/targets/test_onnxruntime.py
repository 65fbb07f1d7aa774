"""The ONNX Runtime backend (targets/onnxruntime): a tile segment's model has a symbolic batch
and NHWC operands; the pack format round-trips and refuses damaged files; the native adapter
through the driver (--backend onnxruntime) refuses a truncated or tampered model.onnxpack and
a library that is not ONNX Runtime's with a named error, never a crash. Its numerics (native,
interpreter and torch, per segment, threads, shared sessions, ARM64) are the differential
suite's: test_differential.py."""

import struct
import subprocess
from pathlib import Path

import pytest

from targets.onnxruntime.pack import PackError, pack_segments, unpack_segments


@pytest.fixture(scope="module")
def built(backend_build):
    """The mixed model's onnxruntime build, shared with the differential suite (conftest)."""
    shared = backend_build("mixed", "onnxruntime")
    return {"frames": shared.frames, "plan": shared.plan, "pack": shared.artifact}


def test_a_tile_segment_has_a_symbolic_batch_and_nhwc_operands(compiled, built):
    import onnx

    models = unpack_segments(built["pack"].read_bytes())
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


def run_driver(driver, built, pack, tmp_path, extra=()):
    return subprocess.run([str(driver), "--backend", "onnxruntime", "--plan", str(built["plan"]),
                           "--artifact", str(pack), "--frames", str(built["frames"]),
                           "--outputs", str(tmp_path / "outputs.bin"), *map(str, extra)],
                          capture_output=True, text=True, timeout=600)


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
                             "--artifact", str(built["pack"]), "--frames", str(built["frames"]),
                             "--outputs", str(tmp_path / "outputs.bin")], capture_output=True, text=True, env=env)
    assert result.returncode > 0, result.stderr
    assert f"{libm} has no OrtGetApiBase: not an ONNX Runtime library" in result.stderr, result.stderr

