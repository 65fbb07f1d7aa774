import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


EXAMPLE_BUILDS: dict = {}


@pytest.fixture(scope="session")
def built_example(tmp_path_factory):
    """``built_example(name)`` -> (out folder, seconds): each example built once per session
    by the real CLI (``dynexport build --target android``)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent

    def build(name: str):
        if name not in EXAMPLE_BUILDS:
            out = tmp_path_factory.mktemp(f"build_{name}") / "out"
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "dynexport.cli.main", "build", "--target", "android",
                                     str(root / "examples" / name / "model.pt"), "-o", str(out)],
                                    capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-2000:]
            EXAMPLE_BUILDS[name] = (out, time.perf_counter() - start)
        return EXAMPLE_BUILDS[name]

    return build
