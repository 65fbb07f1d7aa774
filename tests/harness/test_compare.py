"""bench --baseline: the original dense export, the original's plan, the pruned dense export
and the pruned plan in one table, timed by the real native runtime."""

import json
import types

import pytest
import torch
from torch import nn

import dynexport
from dynexport.build import build
from dynexport.errors import CompileError
from dynexport.harness.clips import VerifyClip
from dynexport.harness.compare import compare, compare_clip
from tests.pruning.test_build_pruned import SHAPE, small_gated_model


def test_a_baseline_of_another_network_is_refused_before_any_build(tmp_path):
    out = types.SimpleNamespace(manifest={"input": {"shape": list(SHAPE)}})
    other = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 7, 1)).eval()  # 7 outputs, not 4
    clip = VerifyClip("c", torch.rand(2, *SHAPE[1:]).numpy())
    with pytest.raises(CompileError, match="baseline.*its output is"):
        compare_clip(out, small_gated_model(), tmp_path / "other.pt", other, clip)
    wrong_input = nn.Sequential(nn.Conv2d(1, 4, 1)).eval()
    with pytest.raises(CompileError, match="does not run on OUT's frames"):
        compare_clip(out, small_gated_model(), tmp_path / "gray.pt", wrong_input, clip)


@pytest.mark.slow
def test_pruned_gated_build_against_its_unpruned_original(tmp_path):
    original = small_gated_model()
    dynexport.save_model(original, tmp_path / "original.pt", input_shape=SHAPE)
    pruned = small_gated_model()
    dynexport.prune.magnitude(pruned, 0.5, input_shape=SHAPE)
    dynexport.save_model(pruned, tmp_path / "pruned.pt", input_shape=SHAPE)  # masks saved applied
    out = build(tmp_path / "pruned.pt", tmp_path / "out", target="host").out

    [table] = compare(out, tmp_path / "original.pt", synthetic="static_camera", frames=4, passes=2)
    labels = [r.label for r in table.rows]
    assert labels == ["original, dense", "original, gated", "pruned, dense", "pruned + gated"]
    rows = dict(zip(labels, table.rows))
    assert rows["original, dense"].speedup == 1.0 and rows["original, dense"].mac_ratio == 1.0
    assert all(r.ms > 0 and r.speedup > 0 for r in table.rows)
    # pruning halves in and out channels of the inner layers: well under the original's MACs
    assert rows["pruned, dense"].mac_ratio < 0.6
    # the dense rows' MACs are the build's own count of the model before and after compaction
    structured = json.loads((out / "manifest.json").read_text())["pruning"]["structured"]
    assert rows["original, dense"].macs == structured["macs_before"]
    assert rows["pruned, dense"].macs == structured["macs_after"]
    assert rows["pruned + gated"].macs < rows["original, dense"].macs
    assert rows["original, gated"].error_max < rows["pruned, dense"].error_max  # pruning moves the output
    assert table.as_json()["rows"][2]["realized_over_mac_reduction"] == pytest.approx(
        rows["pruned, dense"].speedup * rows["pruned, dense"].mac_ratio)
