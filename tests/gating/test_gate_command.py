"""``dynexport gate``: a plain torch model file in, a gated model file out (convert + calibrate),
its report, its named errors, and the end-to-end path a user takes: gate, build with the real
ExecuTorch backend, verify with the native runtime."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import dynexport
from architectures import conv_bn, randomize_batchnorm
from dynexport import video
from dynexport.nn import Residual, SkipConv2d, gated_layers

CLI = [sys.executable, "-m", "dynexport.cli.main"]


def run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


def tiny_plain_model():
    """Plain torch.nn (plus Residual): loads without --allow-pickle; three convolutions, so it builds quickly."""
    torch.manual_seed(0)
    return randomize_batchnorm(nn.Sequential(
        conv_bn(3, 8, stride=2), Residual(conv_bn(8, 8, activation=None)), nn.Conv2d(8, 2, 1)))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    torch.save(tiny_plain_model(), folder / "model.pt")
    np.save(folder / "clip.npy", video.generate("static_camera", seed=0, frames=8, height=32, width=32).frames)
    return folder


def test_help_shows_examples():
    result = run("gate", "--help")
    assert result.returncode == 0
    for text in ("Examples", "dynexport gate model.pt --clip calib.npy --mac-budget 0.3 -o gated.pt", "--synthetic",
                 "--no-depthwise", "--input-shape", "--allow-pickle"):
        assert text in result.stdout


def test_gate_saves_a_calibrated_model_and_reports_it(model_file):
    out = model_file / "gated.pt"
    result = run("gate", model_file / "model.pt", "--clip", model_file / "clip.npy", "--mac-budget", "0.5",
                 "--block", "4", "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    assert report["calibration"]["mac_fraction"] <= 0.5 and report["mac_budget"] == 0.5
    gated = dynexport.load_model(out)  # dynexport's allow-list: no --allow-pickle needed
    layers = dict(gated_layers(gated))
    assert len(layers) == 3 and all(isinstance(m, SkipConv2d) and m.block == 4 for m in layers.values())
    assert {name: m.threshold for name, m in layers.items()} == {l["name"]: l["threshold"] for l in report["layers"]}
    assert gated.dynexport_input_shape == (1, 3, 32, 32)  # taken from the clip
    table = run("gate", model_file / "model.pt", "--clip", model_file / "clip.npy", "-o", out, "--force")
    assert table.returncode == 0, table.stderr
    assert "held apart (second half of the clip" in table.stdout and "1.body.0" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--clip", "{clip}", "--mac-budget", "1.5"], "mac budget 1.5: expected a fraction of the dense MACs in (0, 1]"),
    ([], "give the calibration frames with --clip FILE.npy or --synthetic PRESET"),
    (["--synthetic", "static_camera"], "--synthetic needs one: pass --input-shape"),
    (["--synthetic", "nope", "--input-shape", "1x3x32x32"], "unknown synthetic clip 'nope'"),
    (["--clip", "{clip}", "--input-shape", "1x3x48x48"], "expected frames [T, 3, 48, 48] (the model's input shape"),
    (["--clip", "{folder}/missing.npy"], "no such file"),
])
def test_bad_inputs_are_named(model_file, args, message):
    args = [a.format(clip=model_file / "clip.npy", folder=model_file) for a in args]
    result = run("gate", model_file / "model.pt", *args, "-o", model_file / "bad.pt")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (model_file / "bad.pt").exists()


def test_a_model_without_convolutions_and_an_existing_output_are_named(model_file, tmp_path):
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), tmp_path / "linear.pt")
    result = run("gate", tmp_path / "linear.pt", "--synthetic", "still", "--input-shape", "1x3x16x16",
                 "-o", tmp_path / "g.pt")
    assert result.returncode == 1 and "has no nn.Conv2d" in result.stderr
    (tmp_path / "g.pt").write_bytes(b"")
    result = run("gate", model_file / "model.pt", "--clip", model_file / "clip.npy", "-o", tmp_path / "g.pt")
    assert result.returncode == 1 and "exists; pass --force" in result.stderr


@pytest.mark.slow
def test_convert_calibrate_build_verify_end_to_end(tmp_path):
    """A plain torch model -> convert -> calibrate on a static-camera clip -> save -> 'dynexport
    build' (ExecuTorch, XNNPACK) -> the native runtime matches the PyTorch reference."""
    from dynexport.harness.verify import verify

    # block 8 on the 16x16 maps: 2x2 blocks, one tile segment per layer (the quickest build)
    conversion = dynexport.convert(tiny_plain_model(), block=8)
    frames = torch.from_numpy(video.generate("static_camera", seed=1, frames=8, height=32, width=32).as_float())
    report = dynexport.calibrate(conversion.model, frames, mac_budget=0.3)
    assert report.calibration.mac_fraction <= 0.3
    dynexport.save_model(conversion.model, tmp_path / "gated.pt", input_shape=(1, 3, 32, 32))
    result = run("build", tmp_path / "gated.pt", "--target", "host", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["layers"]) == 3
    reports = verify(tmp_path / "out", synthetic="static_camera", frames=12)
    assert reports and all(r.passed for r in reports), [r.failures for r in reports]
    assert all(r.gate_agreement == 1.0 for r in reports)
    # some blocks really were skipped in the verified run
    assert report.layers and min(layer.active_fraction for layer in report.layers) < 1.0
