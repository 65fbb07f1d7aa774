"""The Kotlin API on the host JVM (runtime_android): its JUnit 5 tests through the console
launcher under -Xcheck:jni, and ``dynexport verify --device jvm`` (the Kotlin verify driver:
JNI -> the C runtime -> ExecuTorch) against the native driver on the same build and clip."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynexport.harness.clips import synthetic_clip
from dynexport.harness.devices import jvm_command
from dynexport.harness.verify import open_build, run_native, run_reference, load_reference, verify

ROOT = Path(__file__).resolve().parents[2]
KOTLIN_LIB = ROOT / ".cache" / "kotlin" / "node_modules" / "kotlin-compiler" / "lib"
CONSOLE_LAUNCHER = Path("/usr/share/java/junit-platform-console-standalone.jar")  # Debian's junit5

CLI = [sys.executable, "-m", "dynexport.cli.main"]


def test_kotlin_unit_tests_pass_under_checkjni(jvm_runtime, android_build):
    jars = jvm_runtime / "jars"
    classpath = os.pathsep.join(str(p) for p in (
        jars / "dynexport-runtime.jar", jars / "dynexport-runtime-tests.jar", KOTLIN_LIB / "kotlin-stdlib.jar",
        KOTLIN_LIB / "kotlin-test.jar", KOTLIN_LIB / "kotlin-test-junit5.jar"))
    result = subprocess.run(
        ["java", "-Xcheck:jni", f"-Djava.library.path={jvm_runtime / 'lib'}", f"-Ddynexport.test.build={android_build}",
         "-jar", str(CONSOLE_LAUNCHER), "-cp", classpath, "--select-class", "org.dynexport.runtime.DynexportSessionTest",
         "--disable-banner", "--disable-ansi-colors", "--details=tree"],
        capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    found = int(next(line for line in output.splitlines() if "tests found" in line).strip("[] ").split()[0])
    failed = int(next(line for line in output.splitlines() if "tests failed" in line).strip("[] ").split()[0])
    assert found >= 12 and failed == 0, output[-3000:]
    assert "WARNING in native method" not in output, output[-3000:]


def test_jvm_agrees_with_the_native_driver_bit_for_bit(jvm_runtime, android_build):
    build = open_build(android_build)
    clip = synthetic_clip("scene_cut", build.manifest, frames=16)
    reference = run_reference(load_reference(build, False), build.program, clip.frames, clip.resets)
    host = run_native(build, "executorch", clip, "host", reference)
    jvm = run_native(build, "executorch", clip, "jvm", reference)
    assert host.outputs.dtype == jvm.outputs.dtype == np.float32
    assert np.array_equal(host.outputs.view(np.uint32), jvm.outputs.view(np.uint32))
    assert np.array_equal(host.block_masks, jvm.block_masks) and np.array_equal(host.channels, jvm.channels)
    assert [[layer["active"] for layer in frame["layers"]] for frame in host.stats] == \
        [[layer["active"] for layer in frame["layers"]] for frame in jvm.stats]
    assert 0 < jvm.block_masks[1:].mean() < 1  # the gates really skip some blocks and compute others


def test_verify_device_jvm_passes_and_reports_the_device(jvm_runtime, android_build):
    result = subprocess.run([*CLI, "verify", str(android_build), "--device", "jvm", "--synthetic", "mixed",
                             "--frames", "12", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    entry = json.loads(result.stdout)["backends"]["executorch"]
    assert entry["passed"] and entry["device"] == "jvm" and entry["gate_agreement"] == 1.0
    reports = verify(android_build, synthetic="static_camera", frames=6, device="jvm")
    assert all(r.passed for r in reports), [r.failures for r in reports]


def _jvm_driver(build_folder, tmp_path, *options):
    build = open_build(build_folder)
    clip = synthetic_clip("mixed", build.manifest, frames=8)
    frames = tmp_path / "frames.bin"
    np.ascontiguousarray(clip.frames.transpose(0, 2, 3, 1), dtype=np.float32).tofile(frames)
    command = jvm_command() + ["--backend", "executorch", "--plan", str(build.folder / "plan.dxfp"),
                               "--artifact", str(build.artifact("executorch")), "--frames", str(frames),
                               "--outputs", str(tmp_path / "outputs.bin"), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_jvm_steps_allocate_nothing(jvm_runtime, android_build, tmp_path):
    """The driver counts the bytes its thread allocates inside the API calls of the timed frames
    (ThreadMXBean): after one warm-up pass, none."""
    done = _jvm_driver(android_build, tmp_path, "--repeat", "3", "--warmup", "1", "--decisions",
                       str(tmp_path / "decisions.bin"))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["device"] == "jvm" and summary["frames"] == 8 and summary["passes"] == 3
    assert summary["api_allocated_bytes"] == 0
    assert 0 < summary["median_frame_ns"] <= summary["median_wall_ns"]


def test_jvm_driver_errors_name_the_problem(jvm_runtime, android_build, tmp_path):
    bench = _jvm_driver(android_build, tmp_path, "--dense-plan", "x.dxfp")
    assert bench.returncode == 2 and "verify mode only" in bench.stderr and "--device host" in bench.stderr
    unknown = _jvm_driver(android_build, tmp_path, "--backend", "nope")
    assert unknown.returncode == 2 and "not compiled into libdynexport_jni" in unknown.stderr
    (tmp_path / "short.bin").write_bytes(b"\0" * 12)
    build = open_build(android_build)
    short = subprocess.run(jvm_command() + ["--backend", "executorch", "--plan", str(build.folder / "plan.dxfp"),
                                            "--artifact", str(build.artifact("executorch")),
                                            "--frames", str(tmp_path / "short.bin"),
                                            "--outputs", str(tmp_path / "o.bin")], capture_output=True, text=True)
    assert short.returncode == 2 and "not a whole number of frames" in short.stderr


@pytest.mark.slow
@pytest.mark.parametrize("example", ["skipconv_heatmap", "dstep_action"])
def test_examples_pass_on_the_jvm(jvm_runtime, built_example, example):
    out, _ = built_example(example)
    reports = verify(out, synthetic="mixed", frames=12, device="jvm")
    assert all(r.passed for r in reports), [r.failures for r in reports]
