"""The native driver with the ExecuTorch adapter (targets/executorch/native, --backend
executorch): its errors (a foreign artifact, a segment the artifact does not match, a
truncated clip, bad arguments, a backend not compiled in). Its numerics (native against the
interpreter over ExecuTorch's Python runtime and torch, threads, sessions sharing one
ExecuTorch backend, ARM64 under qemu) are the differential suite's: test_differential.py."""

import subprocess

import pytest

from dynexport.plan.frame_program import FrameProgram
from tests.targets.backend_models import INPUT_SHAPE
from tests.targets.conftest import FRAMES


@pytest.fixture(scope="module")
def built(backend_build):
    """The mixed model's executorch build, shared with the differential suite (conftest)."""
    shared = backend_build("mixed", "executorch")
    return {"frames": shared.frames, "plan": shared.plan, "pte": shared.artifact}


def run_driver(command, built, folder, frames=None, extra=(), plan=None, pte=None):
    args = [*map(str, command), "--backend", "executorch", "--plan", str(plan or built["plan"]),
            "--artifact", str(pte or built["pte"]),
            "--frames", str(frames or built["frames"]), "--outputs", str(folder / "outputs.bin"),
            *map(str, extra)]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def test_artifact_other_than_the_plans_is_refused(host_driver, built, tmp_path):
    pte = tmp_path / "model.pte"
    pte.write_bytes(built["pte"].read_bytes() + b"\0")  # still a loadable program, not the plan's bytes
    result = run_driver([host_driver], built, tmp_path, pte=pte)
    assert result.returncode == 3, result.stderr
    assert "artifact" in result.stderr.lower()


def test_segment_the_artifact_does_not_match_is_named(host_driver, built, tmp_path):
    program = FrameProgram.from_bytes(built["plan"].read_bytes())
    tiles = next(s for s in program.segments if s.max_batch > 0)
    dense = next(s for s in program.segments if s.max_batch == 0 and s.name.startswith(tiles.name.rsplit("_", 1)[0]))
    tiles.name, dense.name = dense.name, tiles.name  # same artifact record: only the signatures differ
    plan = tmp_path / "plan.dxfp"
    plan.write_bytes(program.to_bytes())
    result = run_driver([host_driver], built, tmp_path, plan=plan)
    assert result.returncode == 3, result.stderr
    assert "status 401" in result.stderr  # DYNRT_SEGMENT_MISMATCH
    assert f"method '{tiles.name}'" in result.stderr or f"method '{dense.name}'" in result.stderr, result.stderr
    assert "NHWC" in result.stderr and "the plan has" in result.stderr


def test_truncated_frames_file_is_a_clear_error(host_driver, built, tmp_path):
    frames = tmp_path / "frames.bin"
    frames.write_bytes(built["frames"].read_bytes()[:-5])
    result = run_driver([host_driver], built, tmp_path, frames=frames)
    assert result.returncode == 2
    assert "not a whole number of frames" in result.stderr and str(4 * 3 * INPUT_SHAPE[2] * INPUT_SHAPE[3]) in result.stderr


def test_backend_not_compiled_in_is_named(host_driver, built, tmp_path):
    # coreml: a registered backend whose adapter (Objective-C, runtime_ios) no Linux driver has
    args = [str(host_driver), "--backend", "coreml", "--plan", str(built["plan"]), "--artifact", str(built["pte"]),
            "--frames", str(built["frames"]), "--outputs", str(tmp_path / "outputs.bin")]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 2
    message = next(line for line in result.stderr.splitlines() if "--backend coreml" in line)
    assert "not compiled into this driver (it has: " in message and "executorch" in message, message


def test_bad_arguments_exit_2(host_driver, built, tmp_path):
    result = subprocess.run([str(host_driver), "--plan", str(built["plan"])], capture_output=True, text=True)
    assert result.returncode == 2 and "missing --artifact" in result.stderr
    result = subprocess.run([str(host_driver), "--plan", str(built["plan"]), "--artifact", str(built["pte"]),
                             "--frames", "f.bin", "--outputs", "o.bin"], capture_output=True, text=True)
    assert result.returncode == 2 and "missing --backend" in result.stderr
    result = run_driver([host_driver], built, tmp_path, extra=["--reset-frames", FRAMES])
    assert result.returncode == 2 and "past the clip" in result.stderr
    result = run_driver([host_driver], built, tmp_path, extra=["--tie-decisions", built["plan"]])
    assert result.returncode == 2 and "tie decisions" in result.stderr
