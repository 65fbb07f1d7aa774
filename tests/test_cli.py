import subprocess
import sys
import time

import numpy as np

DYNEXPORT = [sys.executable, "-m", "dynexport.cli.main"]


def run(*args):
    return subprocess.run([*DYNEXPORT, *args], capture_output=True, text=True)


def test_help_lists_commands_and_is_fast():
    start = time.perf_counter()
    result = run("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    for command in ("build", "tune", "verify", "bench", "inspect", "clip"):
        assert command in result.stdout
    assert elapsed < 3.0  # includes interpreter start-up; torch is not imported
    probe = subprocess.run([sys.executable, "-c", "import dynexport.cli.main, sys; print('torch' in sys.modules)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "False"


def test_bench_of_a_folder_that_is_no_build_names_it(tmp_path):
    result = run("bench", str(tmp_path))
    assert result.returncode == 1
    assert "not a dynexport build" in result.stderr


def test_verify_of_a_folder_that_is_no_build_names_it(tmp_path):
    result = run("verify", str(tmp_path))
    assert result.returncode == 1
    assert "not a dynexport build" in result.stderr and str(tmp_path) in result.stderr


def test_clip_writes_a_preset(tmp_path):
    out = tmp_path / "clip.npy"
    result = run("clip", "scene_cut", "--frames", "5", "--size", "24x32", "-o", str(out))
    assert result.returncode == 0, result.stderr
    clip = np.load(out)
    assert clip.shape == (5, 3, 24, 32) and clip.dtype == np.uint8


def test_clip_errors_are_one_line_messages(tmp_path):
    result = run("clip", "nope", "-o", str(tmp_path / "c.npy"))
    assert result.returncode == 1
    assert "unknown clip 'nope'" in result.stderr and "Traceback" not in result.stderr
    result = run("clip", "still", "--size", "big", "-o", str(tmp_path / "c.npy"))
    assert result.returncode == 1 and "HEIGHTxWIDTH" in result.stderr
