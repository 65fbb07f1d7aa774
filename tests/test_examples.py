"""The example scripts train and save (a few steps here; the committed model.pt files are the
full runs), and the committed models load safely and stream."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dynexport
from dynexport import video
from dynexport.loading import load_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("example", ["skipconv_heatmap", "dstep_action"])
def test_training_script_runs_and_saves_a_loadable_model(tmp_path, example):
    out = tmp_path / "model.pt"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example / "train.py"), "--steps", "3", "-o", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out" in result.stdout
    model = load_model(out)
    assert model.dynexport_input_shape == (1, 3, 64, 64)


@pytest.mark.parametrize("example, size", [("skipconv_heatmap", (48, 72)), ("dstep_action", (37, 45))])
def test_committed_models_stream_at_any_resolution(example, size):
    path = ROOT / "examples" / example / "model.pt"
    assert path.stat().st_size < 10 * 1024 * 1024
    model = load_model(path)  # no --allow-pickle needed
    clip = torch.from_numpy(video.generate("mixed", seed=1, frames=6, height=size[0], width=size[1]).as_float())
    outputs = list(dynexport.stream(model, clip, with_stats=True))
    assert len(outputs) == 6 and all(torch.isfinite(y).all() for y, _ in outputs)
    assert outputs[0][1].executed_macs >= outputs[-1][1].executed_macs
