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


@pytest.fixture(scope="session")
def build_saved_model(tmp_path_factory):
    """``build_saved_model(name, model, input_shape)`` -> out folder: the model saved to a
    fresh folder and built for the host, as a user's ``model.pt`` would be."""
    from dynexport.build import build

    def build_model(name: str, model, input_shape):
        folder = tmp_path_factory.mktemp(name)
        path = folder / "model.pt"
        torch.save(model, path)
        return build(path, folder / "out", target="host", input_shape=input_shape).out

    return build_model
