"""``dynexport build --target android`` adds the app bundle (dynexport/app_bundle): the Kotlin
API, its JNI layer and CMake project beside the runtime sources in OUT/runtime/, and an
INTEGRATION.md for the build; the bundled project builds from OUT alone and runs the build."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from dynexport.app_bundle import APP_BUNDLES, write_app_bundle
from dynexport.errors import CompileError
from dynexport.harness.devices import JVM_MAIN
from targets import BACKENDS, TARGETS

ROOT = Path(__file__).resolve().parents[2]


def test_android_build_has_the_bundle_and_records_it(android_build):
    manifest = json.loads((android_build / "manifest.json").read_text())
    app = manifest["app"]
    # every default backend of android, each with its artifact file (what the Kotlin opener reads)
    expected = {name: BACKENDS[name].artifact for name in TARGETS["android"]}
    assert app["target"] == "android" and app["artifacts"] == expected and len(expected) >= 2
    wrapper = android_build / app["wrapper"]
    for relative in ("CMakeLists.txt", "build.gradle.kts", "src/main/AndroidManifest.xml", "README.md",
                     "src/main/cpp/dynexport_jni.cpp",
                     "src/main/kotlin/org/dynexport/runtime/DynexportSession.kt"):
        assert (wrapper / relative).is_file(), relative
    assert not (wrapper / "src" / "jvmVerify").exists() and not (wrapper / "src" / "test").exists()
    assert (android_build / "runtime" / "dynexport" / "runtime" / "driver" / "dynrt_driver_backend.h").is_file()
    kotlin = (wrapper / "src/main/kotlin/org/dynexport/runtime").glob("*.kt")
    assert not any(re.search(r"^import android\.", f.read_text(), re.MULTILINE) for f in kotlin)


def test_integration_md_is_written_for_this_build(android_build):
    text = (android_build / "INTEGRATION.md").read_text()
    manifest = json.loads((android_build / "manifest.json").read_text())
    _, channels, height, width = manifest["input"]["shape"]
    assert f"[1, {height}, {width}, {channels}]" in text
    for line in ('implementation(project(":dynexport"))', "-DDYNRT_WITH_EXECUTORCH=ON",
                 'project(":dynexport").projectDir = file("<this folder>/runtime/runtime_android")',
                 "add_subdirectory(<this folder>/runtime/runtime_android dynexport)",
                 'DynexportSession.open(asset("plan.dxfp"), asset("model.pte"), backend = "executorch"',
                 "session.step(input, output, stats)", "session.reset()", "--device adb"):
        assert line in text, line
    assert str(manifest["input"]["normalization"]["scale"]) in text


def test_a_target_without_a_bundle_gets_none(tmp_path):
    manifest = {}
    write_app_bundle(tmp_path, "host", (), manifest)
    assert manifest == {} and list(tmp_path.iterdir()) == [] and "host" not in APP_BUNDLES


def test_a_missing_wrapper_source_is_named(tmp_path, monkeypatch):
    import dynexport.app_bundle.android as android
    from targets import BACKENDS

    monkeypatch.setattr(android, "WRAPPER_FILES", ("CMakeLists.txt", "no-such-file.kts"))
    manifest = {"input": {"shape": [1, 3, 8, 8], "normalization": {"scale": 1.0}}, "output": {"shape": [1, 1]}}
    with pytest.raises(CompileError, match="no-such-file.kts.*missing"):
        write_app_bundle(tmp_path, "android", (BACKENDS["executorch"],), manifest)


@pytest.mark.slow
def test_the_bundled_project_builds_from_out_alone_and_runs(android_build, jvm_runtime, tmp_path):
    """OUT/runtime/runtime_android configured and built for the host JVM with nothing of the
    repository (the JNI library from OUT's sources), then the JVM verify driver on it."""
    cache = (jvm_runtime / "CMakeCache.txt").read_text()
    prefix = re.search(r"^CMAKE_PREFIX_PATH:\w+=(.*)$", cache, re.MULTILINE).group(1)
    build = tmp_path / "bundle-build"
    env = dict(os.environ, JAVA_HOME=re.search(r"^JAVA_HOME:\w+=(.*)$", cache, re.MULTILINE).group(1))
    cmake = str(ROOT / ".venv" / "bin" / "cmake")
    configure = subprocess.run([cmake, "-S", str(android_build / "runtime" / "runtime_android"), "-B", str(build),
                                "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DDYNRT_WITH_EXECUTORCH=ON",
                                f"-DCMAKE_PREFIX_PATH={prefix}"], capture_output=True, text=True, env=env)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    built = subprocess.run(["nice", cmake, "--build", str(build), "--target", "dynexport_jni"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:]
    library = build / "lib" / "libdynexport_jni.so"
    assert library.is_file()
    frames = tmp_path / "frames.bin"
    frames.write_bytes(bytes(4 * 24 * 28 * 3 * 2))  # two black frames
    jars = jvm_runtime / "jars"
    classpath = os.pathsep.join([str(jars / "dynexport-runtime.jar"), str(jars / "dynexport-jvm-verify.jar"),
                                 *(jars / "classpath").read_text().split()])
    run = subprocess.run(["java", "-Xcheck:jni", f"-Ddynexport.jni.library={library}", "-cp", classpath, JVM_MAIN,
                          "--backend", "executorch", "--plan", str(android_build / "plan.dxfp"),
                          "--artifact", str(android_build / "model.pte"), "--frames", str(frames),
                          "--outputs", str(tmp_path / "outputs.bin")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["frames"] == 2
