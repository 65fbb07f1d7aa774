"""Where the native runtime runs: this machine, an ARM64 CPU under qemu user-mode emulation,
or an Android device over adb. Each runs the same native driver
(dynexport/runtime/driver/dynrt_driver.cpp) on the same files, with the backend named on its
command line (``--backend``); only how the program is started differs. ``jvm`` runs the
driver's verify mode written against the Kotlin API instead
(runtime_android/src/jvmVerify: JNI -> the same C runtime and backend), on this machine's JVM
under -Xcheck:jni; same files, same options."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dynexport.errors import DynexportError

ROOT = Path(__file__).resolve().parent.parent.parent
DEVICES = ("host", "qemu-arm64", "adb", "jvm")
DRIVER = "dynrt_driver"
ANDROID_DIR = "/data/local/tmp/dynexport"


class DeviceError(DynexportError):
    """The device cannot run the driver (not built, not attached, ...)."""


class DriverError(DynexportError):
    """The driver ran and reported an error (its message says which)."""


def driver_command(device: str) -> list[str]:
    """The command that starts the verify driver on ``device`` (host paths)."""
    if device == "host":
        driver = ROOT / "build" / "host" / "bin" / DRIVER
        if not driver.exists():
            raise DeviceError(f"native runtime not built ({driver} is missing): run 'make setup'")
        return [str(driver)]
    if device == "qemu-arm64":
        runner = ROOT / "build" / "aarch64" / "bin" / "qemu-run"
        driver = ROOT / "build" / "aarch64" / "bin" / DRIVER
        if not driver.exists() or not runner.exists():
            raise DeviceError(f"ARM64 runtime not built ({driver}): run 'tools/build_runtime.sh aarch64' "
                              "(make setup does it when g++-aarch64-linux-gnu and qemu-user are installed)")
        if shutil.which("qemu-aarch64") is None:
            raise DeviceError("qemu-aarch64 not found: install Debian's qemu-user (make setup does)")
        return [str(runner), str(driver)]
    if device == "jvm":
        return jvm_command()
    raise DeviceError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")


JVM_BUILD = ROOT / "build" / "jvm"
JVM_MAIN = "org.dynexport.runtime.verify.VerifyMainKt"
# what -Xcheck:jni prints (on stdout or stderr) when the JNI layer breaks a rule
_JNI_WARNINGS = ("WARNING in native method", "FATAL ERROR in native method", "JNI local refs")


def jvm_command(check_jni: bool = True) -> list[str]:
    """``java`` running the Kotlin verify driver over libdynexport_jni (tools/build_runtime.sh jvm)."""
    library = JVM_BUILD / "lib" / "libdynexport_jni.so"
    jars = [JVM_BUILD / "jars" / name for name in ("dynexport-runtime.jar", "dynexport-jvm-verify.jar")]
    missing = [str(p) for p in (library, *jars, JVM_BUILD / "jars" / "classpath") if not p.exists()]
    if missing:
        raise DeviceError(f"--device jvm: the JVM runtime is not built ({', '.join(missing)} missing): run "
                          "'tools/build_runtime.sh jvm' (make setup does it)")
    java = shutil.which("java")
    if java is None:
        raise DeviceError("--device jvm: 'java' not found: install Debian's openjdk-17-jdk-headless (make setup does)")
    classpath = [str(j) for j in jars] + (JVM_BUILD / "jars" / "classpath").read_text().split()
    return [java, *(["-Xcheck:jni"] if check_jni else []), f"-Djava.library.path={library.parent}",
            "-cp", os.pathsep.join(classpath), JVM_MAIN]


def run_driver(device: str, files: dict[str, Path], options: list[str], timeout: float | None = None, *,
               backend: str) -> str:
    """Run the driver with ``--backend backend``, ``--<name> <file>`` for each of ``files``
    and ``options``; returns its stdout. Output files named in ``files`` are written by the
    driver. A backend the driver was not built with fails with the names it has."""
    options = ["--backend", backend, *options]
    if device == "adb":
        return _run_on_android(files, options, timeout)
    arguments = [a for name, path in files.items() for a in (f"--{name}", str(path))]
    command = driver_command(device) + arguments + options
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DriverError(f"the native runtime on {device} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DriverError(f"native runtime on {device} failed (exit {done.returncode}): {message}")
    if device == "jvm":
        warnings = [line for line in (done.stdout + done.stderr).splitlines() if any(w in line for w in _JNI_WARNINGS)]
        if warnings:
            raise DriverError(f"the JVM run broke a JNI rule (-Xcheck:jni): {warnings[0]}")
    return done.stdout


# driver outputs, pulled back from the device after the run
_OUTPUT_FILES = ("outputs", "decisions", "stats", "dense-outputs")


def _adb(*args, timeout=None) -> subprocess.CompletedProcess:
    return subprocess.run(["adb", *args], capture_output=True, text=True, timeout=timeout)


def _run_on_android(files: dict[str, Path], options: list[str], timeout: float | None) -> str:
    if shutil.which("adb") is None:
        raise DeviceError("--device adb: 'adb' is not installed (Android platform-tools)")
    listed = _adb("devices").stdout.strip().splitlines()[1:]
    attached = [line.split()[0] for line in listed if line.strip().endswith("device")]
    if not attached:
        raise DeviceError("--device adb: no Android device or emulator attached ('adb devices' lists none)")
    build = ROOT / "build" / "android-arm64-v8a"
    driver = build / "bin" / DRIVER
    if not driver.exists():
        raise DeviceError(f"--device adb: no Android build of the driver at {driver}. It needs the Android NDK "
                          "and ExecuTorch built for Android (the PyPI wheels are glibc-only), which make setup "
                          "does not provide; the build, step by step: runtime_android/README.md, '--device adb'")
    _check(_adb("shell", "mkdir", "-p", ANDROID_DIR))
    pushes = [driver, *sorted((build / "lib").glob("*.so"))]
    remote = {}
    for name, path in files.items():
        remote[name] = f"{ANDROID_DIR}/{Path(path).name}"
        if name not in _OUTPUT_FILES:
            pushes.append(Path(path))
    for path in pushes:
        _check(_adb("push", str(path), f"{ANDROID_DIR}/{path.name}", timeout=timeout))
    arguments = " ".join(f"--{name} {remote[name]}" for name in files)
    done = _adb("shell", f"cd {ANDROID_DIR} && LD_LIBRARY_PATH={ANDROID_DIR} ./{DRIVER} {arguments} "
                         + " ".join(options) + "; echo EXIT=$?", timeout=timeout)
    _check(done)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if last != "EXIT=0":
        raise DriverError(f"native runtime on the Android device failed: {done.stdout.strip()[-500:]}")
    for name, path in files.items():
        if name in _OUTPUT_FILES:
            _check(_adb("pull", remote[name], str(path), timeout=timeout))
    return done.stdout


def _check(done: subprocess.CompletedProcess) -> None:
    if done.returncode != 0:
        raise DeviceError(f"adb {' '.join(done.args[1:3])} failed: {(done.stderr or done.stdout).strip()[-300:]}")

