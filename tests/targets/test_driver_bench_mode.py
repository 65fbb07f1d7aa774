"""The native driver's bench mode (dynexport/runtime/driver/dynrt_driver.cpp,
--dense-plan/--dense-artifact): a second session over the dense export of the same model,
stepped on every frame next to the dynamic one. Its timings reach stats.jsonl and the summary,
its outputs are the model's, and the dynamic session's outputs do not change."""

import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dynexport import video
from dynexport.build import build
from dynexport.nn import DStepConv2d, SkipConv2d

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4
FRAMES, HEIGHT, WIDTH, REPEAT, RESET_AT = 8, 24, 24, 3, 5


def dense_counterpart(model):
    """The model with every gated layer replaced by the plain Conv2d it wraps (same weight and
    bias): it computes what the gated model computes on a dense frame, and builds into a plan
    with one segment."""
    dense = copy.deepcopy(model)
    for parent in list(dense.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (SkipConv2d, DStepConv2d)):
                setattr(parent, name, child.conv)
    return dense.eval()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """One gated layer (3 segments) and its dense counterpart (1 segment) at 24x24, plus the
    dense counterpart at 16x16 (sizes that do not fit)."""
    torch.manual_seed(0)
    model = nn.Sequential(SkipConv2d(3, 8, 3, padding=1, block=4, threshold=0.3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    dense = dense_counterpart(model)
    assert not any(isinstance(m, (SkipConv2d, DStepConv2d)) for m in dense.modules())
    folder = tmp_path_factory.mktemp("bench_mode")
    torch.save(model, folder / "model.pt")
    torch.save(dense, folder / "dense.pt")
    paths = {}
    for name, source, shape in (("dynamic", "model.pt", (HEIGHT, WIDTH)), ("dense", "dense.pt", (HEIGHT, WIDTH)),
                                ("small", "dense.pt", (16, 16))):
        out = folder / name
        build(folder / source, out, target="host", input_shape=f"1x3x{shape[0]}x{shape[1]}", allow_pickle=True)
        paths[name] = (out / "plan.dxfp", out / "model.pte")
    clip = torch.from_numpy(video.generate("mixed", seed=0, height=HEIGHT, width=WIDTH, frames=FRAMES).as_float())
    (folder / "frames.bin").write_bytes(clip.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
    with torch.no_grad():
        expected_dense = dense(clip).permute(0, 2, 3, 1).contiguous().numpy()  # physical NHWC
    return {"dir": folder, "paths": paths, "expected_dense": expected_dense}


def run_driver(driver, builds, folder, dense=None, extra=()):
    plan, pte = builds["paths"]["dynamic"]
    args = [str(driver), "--backend", "executorch", "--plan", str(plan), "--artifact", str(pte), "--frames", str(builds["dir"] / "frames.bin"),
            "--outputs", str(folder / "outputs.bin"), "--repeat", str(REPEAT), "--reset-frames", str(RESET_AT)]
    if dense:
        dense_plan, dense_pte = builds["paths"][dense]
        args += ["--dense-plan", str(dense_plan), "--dense-artifact", str(dense_pte)]
    return subprocess.run(args + [str(a) for a in extra], capture_output=True, text=True, timeout=300)


def test_bench_mode_times_both_sessions_and_leaves_the_dynamic_one_alone(host_driver, builds, tmp_path):
    alone, bench = tmp_path / "alone", tmp_path / "bench"
    alone.mkdir(), bench.mkdir()
    result = run_driver(host_driver, builds, alone, extra=["--decisions", alone / "decisions.bin"])
    assert result.returncode == 0, result.stderr
    result = run_driver(host_driver, builds, bench, dense="dense", extra=[
        "--decisions", bench / "decisions.bin", "--stats", bench / "stats.jsonl",
        "--dense-outputs", bench / "dense_outputs.bin", "--warmup", 2])
    assert result.returncode == 0, result.stderr

    # the dynamic session: bit for bit what it does without the dense one next to it
    for name in ("outputs.bin", "decisions.bin"):
        assert (bench / name).read_bytes() == (alone / name).read_bytes(), name

    # the dense session computes the model (the dense counterpart in torch), frame by frame
    expected = builds["expected_dense"]
    dense_outputs = np.fromfile(bench / "dense_outputs.bin", np.float32)
    assert dense_outputs.size == expected.size
    error = np.abs(dense_outputs.reshape(expected.shape) - expected).max(axis=(1, 2, 3))
    assert (error <= TOLERANCE).all(), f"max abs error per frame: {error}"

    # stats: every timed pass and frame (not the warmup passes), both wall times
    lines = [json.loads(line) for line in (bench / "stats.jsonl").read_text().splitlines()]
    assert [(line["pass"], line["frame"]) for line in lines] == [(p, t) for p in range(REPEAT) for t in range(FRAMES)]
    for line in lines:
        assert line["dense_ns"] > 0 and line["wall_ns"] > 0, line
        assert line["wall_ns"] >= line["frame_ns"] > 0, line  # the driver's clock is around the runtime's

    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["passes"] == REPEAT and summary["warmup"] == 2 and summary["frames"] == FRAMES
    assert summary["median_dense_ns"] > 0 and summary["median_dynamic_ns"] > 0
    per_frame = np.median(np.array([line["dense_ns"] for line in lines]).reshape(REPEAT, FRAMES), axis=0)
    assert min(per_frame) <= summary["median_dense_ns"] <= max(per_frame)


def test_dense_plan_of_other_sizes_is_refused(host_driver, builds, tmp_path):
    result = run_driver(host_driver, builds, tmp_path, dense="small")
    assert result.returncode == 2, result.stderr
    assert "does not fit" in result.stderr and "[1, 16, 16, 3]" in result.stderr, result.stderr
    assert "same model at the same input size" in result.stderr


def test_dense_options_go_together(host_driver, builds, tmp_path):
    dense_plan, dense_pte = builds["paths"]["dense"]
    result = run_driver(host_driver, builds, tmp_path, extra=["--dense-plan", dense_plan])
    assert result.returncode == 2 and "--dense-plan needs --dense-artifact" in result.stderr, result.stderr
    result = run_driver(host_driver, builds, tmp_path, extra=["--dense-outputs", tmp_path / "dense.bin"])
    assert result.returncode == 2 and "--dense-outputs needs --dense-plan" in result.stderr, result.stderr
    result = run_driver(host_driver, builds, tmp_path, extra=["--warmup", "x"])
    assert result.returncode == 2 and "--warmup x" in result.stderr, result.stderr
