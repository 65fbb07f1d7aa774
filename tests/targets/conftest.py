"""The native drivers every backend's tests run (host, and ARM64 under qemu): built once per test session."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_runtime(mode: str) -> Path:
    """``tools/build_runtime.sh MODE`` (incremental); the folder of its programs."""
    result = subprocess.run(["bash", str(ROOT / "tools" / "build_runtime.sh"), mode, "--quiet"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"tools/build_runtime.sh {mode} failed:\n{result.stderr[-4000:]}")
    return ROOT / "build" / mode / "bin"


@pytest.fixture(scope="session")
def host_driver() -> Path:
    return build_runtime("host") / "dynrt_driver"


@pytest.fixture(scope="session")
def aarch64_driver() -> list[str]:
    """The ARM64 driver under qemu user-mode emulation (the command that starts it)."""
    missing = [tool for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not run: needs {', '.join(missing)} (Debian g++-aarch64-linux-gnu, qemu-user; make setup)")
    bin_dir = build_runtime("aarch64")
    return [str(bin_dir / "qemu-run"), str(bin_dir / "dynrt_driver")]
