"""``dynexport bench`` / ``bench-layer``: the report's structure and its MAC and block
accounting (never its timings: speed is what the benchmark measures, not what a test asserts)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dynexport.build import build
from dynexport.harness.bench import bench
from dynexport.harness.dense import dense_counterpart, model_macs
from dynexport.harness.layer_bench import BLOCK, block_interior_clip, gated_layer_model
from dynexport.nn import Residual, SkipConv2d

CLI = [sys.executable, "-m", "dynexport.cli.main"]


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, threshold=0.3, block=4), nn.ReLU())),
        SkipConv2d(8, 4, 3, stride=2, padding=1, threshold=0.2, block=4),
    ).eval()
    folder = tmp_path_factory.mktemp("bench")
    torch.save(model, folder / "model.pt")
    # no dense fallback: its frame 0 (every block of the first layer active) falls back, and
    # frame 1 then recomputes the later layers, which the still-clip test below does not expect
    return build(folder / "model.pt", folder / "out", target="host", input_shape=(1, 3, 32, 32),
                 dense_fallback=None).out


def test_dense_counterpart_is_the_model_with_every_block_computed():
    model = gated_layer_model()
    dense = dense_counterpart(model)
    assert not any(isinstance(m, SkipConv2d) for m in dense.modules())
    x = torch.randn(1, 64, 56, 56)
    assert torch.equal(dense(x), model.conv(x))
    assert model_macs(dense, (1, 64, 56, 56)) == 56 * 56 * 64 * 64 * 9


def test_bench_reports_every_field_as_json(small_build, tmp_path):
    plot = tmp_path / "bench.png"
    result = subprocess.run([*CLI, "bench", str(small_build), "--synthetic", "static_camera", "--frames", "6",
                             "--passes", "2", "--json", "--plot", str(plot)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    entry = json.loads(result.stdout)["backends"]["executorch"]
    assert set(entry) >= {"dense_ms", "dynamic_ms", "realized_speedup", "ideal_as_run", "ideal_model",
                          "executed_macs", "needed_macs", "ideal_basis", "realized_over_ideal",
                          "overhead_share", "unchanged_frame_ratio", "active_fraction", "frames"}
    assert entry["frames"] == 6 and entry["dense_ms"] > 0 and entry["dynamic_ms"] > 0
    assert 0 <= entry["overhead_share"] < 1 and 0 <= entry["active_fraction"] <= 1
    assert entry["realized_speedup"] == pytest.approx(entry["dense_ms"] / entry["dynamic_ms"])
    assert plot.stat().st_size > 10_000


def test_ideal_counts_ungated_layers_in_both(small_build):
    """A still clip: after frame 0 only gates and the ungated stem run, so the ideal is
    total MACs / (stem + gate MACs), well above 1 and finite."""
    [report] = bench(small_build, synthetic="still", frames=5, passes=1)
    times = report.per_frame
    assert times.active[1:].sum() == 0
    stem = 32 * 32 * 8 * 3 * 9
    total = stem + times.gated_dense_macs[0]
    assert report.ideal_as_run == pytest.approx(np.median(total / (stem + times.executed_macs)))
    assert report.ideal_as_run > 2


def test_layer_bench_clip_activates_exactly_k_blocks():
    import dynexport

    model = gated_layer_model()
    clip = block_interior_clip(active_blocks=6, frames=5)
    dynexport.reset(model)
    for t, frame in enumerate(clip.frames):
        dynexport.step(model, torch.from_numpy(frame[None]))
        mask = model.last_decisions[0]
        assert int(mask.sum()) == (mask.numel() if t == 0 else 6)
    assert mask.numel() == (56 // BLOCK) ** 2


@pytest.fixture(scope="module")
def dstep_build(tmp_path_factory):
    """A D-STEP layer whose channel policy skips channel 0 and reuses channel 1 on every
    primed frame (its last layer's biases say so): the plan still runs every channel."""
    from dynexport.nn import DStepConv2d

    torch.manual_seed(0)
    layer = DStepConv2d(8, 8, 3, padding=1, patch=4, spatial=False, channel=True)
    with torch.no_grad():
        bias = layer.channel_policy.fc2.bias.view(8, 3)
        bias[0] = torch.tensor([50.0, 0.0, 0.0])  # skip
        bias[1] = torch.tensor([0.0, 50.0, 0.0])  # reuse
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), layer, nn.ReLU()).eval()
    folder = tmp_path_factory.mktemp("bench-dstep")
    torch.save(model, folder / "model.pt")
    return build(folder / "model.pt", folder / "out", target="host", input_shape=(1, 3, 32, 32)).out


def test_skipconv_model_ideal_is_the_as_run_ideal(tmp_path):
    """SkipConv's decisions are what the runtime executes: the MACs the reference counts and
    the MACs the runtime ran agree, so both ideals (and realized / ideal) mean one thing.
    Built tiles-only (dense cutoff 1.0): above the cutoff the runtime runs the dense
    convolution by choice, more MACs than the decisions need (then as-run < model ideal)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          SkipConv2d(8, 8, 3, padding=1, threshold=0.3, block=4)).eval()
    torch.save(model, tmp_path / "model.pt")
    out = build(tmp_path / "model.pt", tmp_path / "out", target="host", input_shape=(1, 3, 32, 32),
                dense_cutoff=1.0).out
    [report] = bench(out, synthetic="static_camera", frames=6, passes=1)
    assert 1 < report.ideal_as_run  # some blocks skipped: the comparison is not dense vs dense
    assert report.ideal_basis == "model"
    assert report.needed_macs == report.executed_macs
    assert report.ideal_model == pytest.approx(report.ideal_as_run)
    assert report.realized_over_ideal == pytest.approx(report.realized_speedup / report.ideal_model)


def test_dstep_model_ideal_counts_skipped_and_reused_channels(dstep_build):
    """The plan runs all 8 channels; the model's decisions need 6 of 8 after frame 0, so its
    needed MACs are below the executed ones and its ideal above the as-run ideal."""
    [report] = bench(dstep_build, synthetic="static_camera", frames=6, passes=1)
    stem = 32 * 32 * 8 * 3 * 9
    conv = 32 * 32 * 8 * 8 * 9
    policy = 8 * 32 * 32 + (16 * 16 + 16 * 24)  # pooling the input, the two-layer MLP
    assert report.executed_macs >= stem + conv  # every channel
    assert report.needed_macs == stem + conv * 6 // 8 + policy  # the median frame is a primed one
    assert report.needed_macs < report.executed_macs
    assert report.ideal_model > report.ideal_as_run
    assert report.realized_over_ideal == pytest.approx(report.realized_speedup / report.ideal_model)
