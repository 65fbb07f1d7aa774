"""Builds of the native runtime for the tests, made once per session by the same script
``make setup`` runs (tools/build_runtime.sh): build/host (Release: libdynrt_host.so for
ctypes, dynrt_test, the ExecuTorch adapter and driver), build/sanitize (ASan + UBSan),
build/fuzz (clang libFuzzer: fuzz_plan). Nothing is skipped: a failing build fails the tests
that need it, with the tool's output.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_ROOT = REPO / "build"


def build_runtime(mode: str) -> Path:
    result = subprocess.run(["bash", str(REPO / "tools" / "build_runtime.sh"), mode, "--quiet"], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"tools/build_runtime.sh {mode} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return BUILD_ROOT / mode


@pytest.fixture(scope="session")
def host_build() -> Path:
    """build/host with libdynrt_host.so, which the binding then loads."""
    build = build_runtime("host")
    from dynexport.runtime import binding

    if not os.environ.get(binding.LIBRARY_ENV):
        os.environ[binding.LIBRARY_ENV] = str(build / binding.LIBRARY_FILE)
    return build


@pytest.fixture(scope="session")
def sanitize_build() -> Path:
    return build_runtime("sanitize")


@pytest.fixture(scope="session")
def fuzz_build() -> Path:
    return build_runtime("fuzz")


@pytest.fixture(scope="session")
def plan_files(tmp_path_factory) -> list[Path]:
    """Plans of the small models and both examples, with the C tests' artifact record."""
    from tests.runtime.runtime_models import EXAMPLES, SMALL_MODELS, compiled_example, compiled_small, plan_bytes

    folder = tmp_path_factory.mktemp("plans")
    paths = []
    for key in SMALL_MODELS:
        path = folder / f"{key}.dxfp"
        path.write_bytes(plan_bytes(compiled_small(key)[1], with_test_artifact=True))
        paths.append(path)
    for name in EXAMPLES:
        path = folder / f"example_{name}.dxfp"
        path.write_bytes(plan_bytes(compiled_example(name)[1], with_test_artifact=True))
        paths.append(path)
    return paths
