"""What every backend's tests share: the native drivers (host, and ARM64 under qemu) and one
build per (model, backend), each made once per test session."""

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
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


# --- one build per (model, backend), shared by every test of the session ----------------------

FRAMES = 12        # frames of the clip every backend test runs (tests/targets/backend_models.py models)
RESET_AT = 6       # a scene cut: the frame after it is dense again


@dataclasses.dataclass(frozen=True)
class BackendBuild:
    model: str
    backend: str
    out: Path        # the build folder (dynexport build's OUT)
    plan: Path
    artifact: Path   # the backend's artifact in it
    frames: Path     # FRAMES frames of the mixed synthetic clip, NHWC float32: the driver's --frames


BUILDS: dict[tuple[str, str], BackendBuild] = {}


def build_target(backend: str) -> str:
    """Where a backend is built for these tests: the host when it runs there, else its first platform."""
    from targets import BACKENDS

    platforms = BACKENDS[backend].platforms
    return "host" if "host" in platforms else platforms[0]


@pytest.fixture(scope="session")
def backend_build(tmp_path_factory):
    """``backend_build(model, backend)`` -> BackendBuild: the model of backend_models.MODELS
    built by ``dynexport build`` for that backend alone, once per test session (a build is
    most of a backend test's time, and the differential suite and each backend's own tests
    use the same ones)."""
    from dynexport.build import build
    from dynexport.harness.clips import synthetic_clip
    from tests.targets.backend_models import INPUT_SHAPE, MODELS
    from targets import BACKENDS

    def get(model: str, backend: str) -> BackendBuild:
        import torch

        key = (model, backend)
        if key not in BUILDS:
            folder = tmp_path_factory.mktemp(f"{model}_{backend}")
            torch.save(MODELS[model](), folder / "model.pt")
            out = folder / "out"
            result = build(folder / "model.pt", out, target=build_target(backend), backend=backend,
                           input_shape="x".join(map(str, INPUT_SHAPE)), allow_pickle=True)
            clip = synthetic_clip("mixed", result.manifest, FRAMES)
            np.ascontiguousarray(clip.frames.transpose(0, 2, 3, 1), dtype=np.float32).tofile(folder / "frames.bin")
            BUILDS[key] = BackendBuild(model, backend, out, out / "plan.dxfp", out / BACKENDS[backend].artifact,
                                       folder / "frames.bin")
        return BUILDS[key]

    return get


@pytest.fixture(scope="session")
def compiled():
    """The mixed model (backend_models.small_model) compiled as its builds are: the segments'
    torch modules, the plan."""
    from dynexport.compiler.pipeline import DEFAULT_DENSE_CUTOFF, compile_model
    from tests.targets.backend_models import INPUT_SHAPE, small_model

    return compile_model(small_model(), INPUT_SHAPE, DEFAULT_DENSE_CUTOFF)
