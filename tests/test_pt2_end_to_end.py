"""The ``.pt2`` route for a model of the user's own classes: ``dynexport.export`` writes the
program, and ``build``, ``verify`` (the real native runtime against the PyTorch reference run
from the program itself), ``bench``, ``tune`` and ``inspect`` all take it through the real CLI
(in this process: one import of torch for all five commands). The model's class is defined
only here, and the commands load the ``.pt2`` without it."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import dynexport
from dynexport.cli.main import app
from dynexport.nn import DStepConv2d, SkipConv2d


class TinyUNet(nn.Module):
    """An encoder-decoder of the user's own: a gated encoder, a gated bottleneck at half
    resolution, upsampling and a skip connection joined with ``torch.cat``. (Kept to five
    segments: lowering them is most of the test's time.)"""

    def __init__(self):
        super().__init__()
        self.encode = SkipConv2d(3, 4, 3, padding=1, threshold=0.2, block=8)
        self.bottleneck = DStepConv2d(4, 4, 3, stride=2, padding=1, patch=4)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        skip = self.encode(x)
        deep = self.bottleneck(skip)
        return self.head(torch.relu(torch.cat([self.up(deep), skip], dim=1)))


def run(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output[-3000:]}\n{result.exception!r}"
    return result.stdout


@pytest.mark.slow
def test_pt2_of_a_user_class_builds_verifies_benches_tunes_and_inspects(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "unet.pt2"
    dynexport.export(TinyUNet(), (1, 3, 32, 32), path)
    out = tmp_path / "out"
    run("build", path, "-o", out, "--target", "host")

    report = json.loads(run("verify", out, "--synthetic", "mixed", "--frames", "8", "--json"))
    entry = report["backends"]["executorch"]
    assert report["passed"] is True and entry["passed"] is True, report
    assert entry["frames"] == 8 and entry["gate_agreement"] == 1.0

    bench = json.loads(run("bench", out, "--frames", "4", "--passes", "1", "--json"))["backends"]["executorch"]
    assert bench["dense_ms"] > 0 and bench["dynamic_ms"] > 0
    assert set(bench["layer_active_fraction"]) == {"encode", "bottleneck"}
    assert bench["layer_active_fraction"]["encode"] < 1.0  # the gates skipped: verify compared real decisions

    tuned = json.loads(run("tune", out, "--rounds", "2", "--json"))
    assert tuned["written"] is True
    assert {layer["name"] for layer in tuned["layers"]} == {"encode", "bottleneck"}

    shown = run("inspect", out)
    assert "encode" in shown and "bottleneck" in shown
