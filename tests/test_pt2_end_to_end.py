"""The ``.pt2`` route for a model of the user's own classes: ``dynexport.export`` writes the
program, and ``build``, ``verify`` (the real native runtime against the PyTorch reference run
from the program itself), ``bench``, ``tune`` and ``inspect`` all take it through the real CLI.
The model's class lives only in this test: no command can import it, so none may need it."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import dynexport
from dynexport.nn import DStepConv2d, SkipConv2d

CLI = [sys.executable, "-m", "dynexport.cli.main"]


class TinyUNet(nn.Module):
    """An encoder-decoder of the user's own: a gated encoder, a gated bottleneck at half
    resolution, upsampling and a skip connection joined with ``torch.cat``."""

    def __init__(self):
        super().__init__()
        self.encode = SkipConv2d(3, 4, 3, padding=1, threshold=0.2, block=8)
        self.down = nn.MaxPool2d(2)
        self.bottleneck = DStepConv2d(4, 4, 3, padding=1, patch=4)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        skip = torch.relu(self.encode(x))
        deep = torch.relu(self.bottleneck(self.down(skip)))
        return self.head(torch.cat([self.up(deep), skip], dim=1))


def run(*args):
    result = subprocess.run([*CLI, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.slow
def test_pt2_of_a_user_class_builds_verifies_benches_tunes_and_inspects(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "unet.pt2"
    dynexport.export(TinyUNet(), (1, 3, 32, 32), path)
    out = tmp_path / "out"
    run("build", str(path), "-o", str(out), "--target", "host")

    def verify():
        report = json.loads(run("verify", str(out), "--synthetic", "mixed", "--frames", "8", "--json").stdout)
        entry = report["backends"]["executorch"]
        assert report["passed"] is True and entry["passed"] is True, report
        assert entry["frames"] == 8 and entry["gate_agreement"] == 1.0
        return entry

    verify()
    bench = json.loads(run("bench", str(out), "--frames", "4", "--passes", "1", "--json").stdout)
    entry = bench["backends"]["executorch"]
    assert entry["dense_ms"] > 0 and entry["dynamic_ms"] > 0
    assert set(entry["layer_active_fraction"]) == {"encode", "bottleneck"}

    tuned = json.loads(run("tune", str(out), "--rounds", "2", "--json").stdout)
    assert tuned["written"] is True
    assert {layer["name"] for layer in tuned["layers"]} == {"encode", "bottleneck"}
    verify()  # the tuned plan still matches the reference

    shown = run("inspect", str(out)).stdout
    assert "encode" in shown and "bottleneck" in shown
