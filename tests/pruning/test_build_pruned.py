"""A pruned model built end to end: the manifest lists fewer channels and MACs, the plan is
smaller, and the build verifies against its (masked) PyTorch reference with the real native
runtime."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import dynexport
from dynexport.build import build
from dynexport.harness.verify import verify
from dynexport.nn import Residual, SkipConv2d

SHAPE = (1, 3, 24, 24)


def small_gated_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, threshold=0.2, block=4), nn.BatchNorm2d(8))),
        SkipConv2d(8, 12, 3, stride=2, padding=1, threshold=0.2, block=4), nn.ReLU(),
        nn.Conv2d(12, 4, 1),
    ).eval()


def _saved(model, path):
    for module in model.modules():  # a saved model carries its pruned weights, not the prune hooks
        for name in ("weight", "bias"):
            if hasattr(module, f"{name}_mask"):
                torch_prune.remove(module, name)
    torch.save(model, path)
    return path


@pytest.mark.slow
def test_pruned_build_has_fewer_channels_and_verifies(tmp_path):
    model = small_gated_model()
    zeroed = dynexport.prune.magnitude(model, 0.5, input_shape=SHAPE)
    result = build(_saved(model, tmp_path / "pruned.pt"), tmp_path / "out", target="host", input_shape=SHAPE)
    structured = result.manifest["pruning"]["structured"]
    assert structured["removed_channels"] == zeroed > 0
    assert structured["macs_after"] < structured["macs_before"]
    by_name = {row["name"]: row for row in structured["layers"]}
    assert by_name["0"]["channels_before"] == [3, 8] and by_name["0"]["channels_after"] == [3, 4]
    assert by_name["4"]["channels_after"] == [4, 6]
    # the compiled gated layers are the compacted ones
    assert [layer["dense_macs"] for layer in result.manifest["layers"]] == \
        [by_name["3.body.0"]["macs_after"], by_name["4"]["macs_after"]]
    assert all("realized" in row for row in result.manifest["pruning"]["unstructured"] if row["zeros"])

    reports = verify(result.out, synthetic="static_camera", frames=8)
    assert reports and all(report.passed for report in reports), [r.failures for r in reports]

    shown = subprocess.run([sys.executable, "-m", "dynexport.cli.main", "inspect", str(result.out)],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"pruning: {zeroed} channels removed" in shown.stdout
    assert json.loads((result.out / "manifest.json").read_text())["pruning"] == result.manifest["pruning"]


@pytest.mark.slow
def test_unpruned_build_reports_nothing_removed(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), path)
    manifest = build(path, tmp_path / "out", target="host", input_shape=(1, 3, 8, 8)).manifest
    assert manifest["pruning"]["structured"] == {"removed_channels": 0, "layers": []}
    assert [row["zeros"] for row in manifest["pruning"]["unstructured"]] == [0]
