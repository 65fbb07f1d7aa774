"""runtime_android on the host JVM: the JNI library and the Kotlin jars (tools/build_runtime.sh
jvm, incremental), and one small android build shared by every test here."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from dynexport.nn import Residual, SkipConv2d

ROOT = Path(__file__).resolve().parents[2]
JVM = ROOT / "build" / "jvm"


@pytest.fixture(scope="session")
def jvm_runtime() -> Path:
    """build/jvm: lib/libdynexport_jni.so and jars/ (built if missing or out of date)."""
    missing = [tool for tool in ("java", "javac") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: make setup installs Debian's openjdk-17-jdk-headless")
    result = subprocess.run(["bash", str(ROOT / "tools" / "build_runtime.sh"), "jvm", "--quiet"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"tools/build_runtime.sh jvm failed:\n{result.stderr[-4000:]}")
    return JVM


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, threshold=0.2, block=4), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, threshold=0.1, gate="output_norm"), nn.ReLU())),
        SkipConv2d(8, 4, 3, stride=2, padding=1, threshold=0.1, block=4),
    ).eval()


@pytest.fixture(scope="session")
def android_build(tmp_path_factory) -> Path:
    """A small model built with --target android (so with the app bundle), once per session."""
    from dynexport.build import build

    folder = tmp_path_factory.mktemp("runtime_android")
    torch.save(small_model(), folder / "model.pt")
    return build(folder / "model.pt", folder / "out", target="android", input_shape=(1, 3, 24, 28)).out
