"""``dynexport verify``: the PyTorch reference against the native runtime (C core + ExecuTorch
adapter, the verify driver) on the host and under qemu-arm64, and its bad-input errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dynexport.errors import DynexportError
from dynexport.harness.verify import RELATIVE_TOLERANCE, open_build, run_native, verify
from dynexport.harness.clips import synthetic_clip
from dynexport.nn import Residual, SkipConv2d

CLI = [sys.executable, "-m", "dynexport.cli.main"]


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, threshold=0.2, block=4), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, threshold=0.1, gate="output_norm"), nn.ReLU())),
        SkipConv2d(8, 4, 3, stride=2, padding=1, threshold=0.1, block=4),
    ).eval()


@pytest.fixture(scope="module")
def small_build(build_saved_model):
    return build_saved_model("verify", small_model(), (1, 3, 24, 28))


def test_small_model_passes_on_host_with_json(small_build):
    result = subprocess.run([*CLI, "verify", str(small_build), "--synthetic", "mixed", "--frames", "40", "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    entry = report["backends"]["executorch"]
    assert report["passed"] is True and entry["passed"] is True
    assert set(entry) >= {"max_abs_err", "max_rel_err", "drift_ratio", "gate_agreement", "frames", "passed"}
    assert entry["frames"] == 40 and entry["max_rel_err"] <= RELATIVE_TOLERANCE
    assert entry["gate_agreement"] == 1.0


def test_decisions_are_the_same_on_every_run(small_build):
    built = open_build(small_build)
    clip = synthetic_clip("static_camera", built.manifest, frames=12)
    first = run_native(built, "executorch", clip, "host")
    second = run_native(built, "executorch", clip, "host")
    assert np.array_equal(first.block_masks, second.block_masks)
    assert np.array_equal(first.outputs, second.outputs)
    # and the gates really skip: some blocks inactive after the first frame
    assert first.block_masks[1:].mean() < 1.0


def test_a_wrong_runtime_result_fails_verify(small_build, monkeypatch):
    """The comparison can fail: perturb the native outputs and the report says so."""
    import dynexport.harness.verify as verify_module

    real = verify_module.run_native

    def perturbed(*args, **kwargs):
        run = real(*args, **kwargs)
        run.outputs[-1] += 0.01 * (run.outputs.max() - run.outputs.min())
        run.block_masks[3, 0] ^= 1
        return run

    monkeypatch.setattr(verify_module, "run_native", perturbed)
    [report] = verify(small_build, synthetic="static_camera", frames=8)
    assert not report.passed
    assert any("output error" in f for f in report.failures)
    assert any("gate decisions differ" in f for f in report.failures)


@pytest.mark.parametrize("factor,passes", [(1e6, True), (0.0, False)])
def test_an_output_error_is_weighed_against_the_dense_exports_own(small_build, monkeypatch, factor, passes):
    """Above RELATIVE_TOLERANCE (here set below the float error of any backend), verify runs
    the dense export on the same backend and clip: within DENSE_BASELINE_FACTOR of its error
    the failure becomes a note (the backend's arithmetic), beyond it the failure stays and
    names that error."""
    import dynexport.harness.verify as verify_module

    monkeypatch.setattr(verify_module, "RELATIVE_TOLERANCE", 1e-12)
    monkeypatch.setattr(verify_module, "DENSE_BASELINE_FACTOR", factor)
    [report] = verify(small_build, synthetic="static_camera", frames=6)
    assert report.dense_baseline_rel_err is not None and 0 < report.dense_baseline_rel_err < 1e-4
    assert report.passed == passes
    if passes:
        assert report.failures == [] and any("dense export's own error" in n for n in report.notes)
    else:
        assert any("the dense export errs" in f for f in report.failures)


def test_qemu_arm64_matches_host(small_build):
    built = open_build(small_build)
    clip = synthetic_clip("scene_cut", built.manifest, frames=3)
    host = run_native(built, "executorch", clip, "host")
    arm = run_native(built, "executorch", clip, "qemu-arm64", timeout=600)
    assert np.abs(arm.outputs - host.outputs).max() <= 1e-4
    assert np.array_equal(arm.block_masks, host.block_masks)


def test_tampered_artifact_is_named(small_build, tmp_path):
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(small_build, copy)
    pte = copy / "model.pte"
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pte.write_bytes(bytes(data))
    with pytest.raises(DynexportError, match="model.pte.*checksum"):
        verify(copy, synthetic="still", frames=2)


def test_clip_errors_name_the_problem(small_build, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3, 16, 16), np.uint8))
    result = subprocess.run([*CLI, "verify", str(small_build), "--clip", str(wrong)], capture_output=True, text=True)
    assert result.returncode == 1 and "[T, 3, 24, 28]" in result.stderr and "[4, 3, 16, 16]" in result.stderr
    nan = tmp_path / "nan.npy"
    frames = np.zeros((4, 3, 24, 28), np.float32)
    frames[2, 0, 5, 5] = np.nan
    np.save(nan, frames)
    result = subprocess.run([*CLI, "verify", str(small_build), "--clip", str(nan)], capture_output=True, text=True)
    assert result.returncode == 1 and "frame 2" in result.stderr and "NaN" in result.stderr
    result = subprocess.run([*CLI, "verify", str(small_build), "--synthetic", "nope"], capture_output=True, text=True)
    assert result.returncode == 1 and "unknown synthetic clip 'nope'" in result.stderr


def test_adb_without_a_device_says_so(small_build):
    result = subprocess.run([*CLI, "verify", str(small_build), "--device", "adb", "--frames", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "adb" in result.stderr and ("not installed" in result.stderr or "no Android device" in result.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("example", ["skipconv_heatmap", "dstep_action"])
def test_examples_pass_on_host(built_example, example):
    out, _ = built_example(example)
    reports = verify(out, synthetic="mixed", frames=40)
    assert all(r.passed for r in reports), [r.failures for r in reports]


@pytest.mark.slow
@pytest.mark.parametrize("example", ["skipconv_heatmap", "dstep_action"])
def test_examples_pass_under_qemu_arm64(built_example, example):
    out, _ = built_example(example)
    reports = verify(out, synthetic="scene_cut", frames=3, device="qemu-arm64")
    assert all(r.passed for r in reports), [r.failures for r in reports]


def test_error_does_not_grow_over_300_frames(small_build):
    """A slow illumination drift over 300 frames (residuals creep up to each threshold): the
    runtime's state stays on the reference's (every decision equal, error bounded, not growing)."""
    [report] = verify(small_build, synthetic="drift", frames=300)
    assert report.passed, report.failures
    errors = np.array(report.frame_rel_err)
    assert errors.max() <= RELATIVE_TOLERANCE
    assert errors[-50:].max() <= max(2 * errors[:50].max(), 1e-6)
