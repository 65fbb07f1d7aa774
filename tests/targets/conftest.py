"""The native drivers every backend's tests run (host, and ARM64 under qemu): built once per test session."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_runtime(mode: str) -> Path:
    """``tools/build_runtime.sh MODE`` (incremental); the folder of its programs. A ``build``
    that is a symlink is another checkout's build (a worktree sharing the main checkout's): it
    is used as it is, never rebuilt from this checkout's sources (that would reconfigure the
    other checkout's build folder under it)."""
    bin_dir = ROOT / "build" / mode / "bin"
    if (ROOT / "build").is_symlink():
        if not (bin_dir / "dynrt_driver").exists():
            pytest.fail(f"{bin_dir / 'dynrt_driver'} is missing: build it in the checkout {(ROOT / 'build').resolve().parent} "
                        f"(tools/build_runtime.sh {mode})")
        return bin_dir
    result = subprocess.run(["bash", str(ROOT / "tools" / "build_runtime.sh"), mode, "--quiet"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"tools/build_runtime.sh {mode} failed:\n{result.stderr[-4000:]}")
    return bin_dir


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
