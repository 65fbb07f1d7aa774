"""``dynexport order-channels``: a D-STEP model file in, the reordered model file out (loads
without --allow-pickle, computes what the original did), its report, and its named errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import dynexport
from dynexport import video
from test_regroup_channels import decisive, dstep, stream

CLI = [sys.executable, "-m", "dynexport.cli.main"]


def run(*args, env=None):
    return subprocess.run([*CLI, "order-channels", *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("order")
    model = decisive(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), dstep(8, 32), nn.BatchNorm2d(32),
                                   nn.ReLU(), nn.Conv2d(32, 4, 1)))
    dynexport.save_model(model, folder / "model.pt", input_shape=(1, 3, 48, 48))
    np.save(folder / "clip.npy", video.generate("static_camera", seed=1, frames=6, height=48, width=48).frames)
    return folder


def test_help_shows_examples_and_no_markup_is_eaten():
    import os

    result = run("--help", env={**os.environ, "COLUMNS": "250"})  # one line per option: no wrapping
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for shown in ("Examples", "dynexport order-channels model.pt --synthetic static_camera", "--clip", "--seed",
                  "--input-shape", "--allow-pickle", "recorded in the model file", "ordered.pt"):
        assert shown in text, shown
    assert " ." not in text.replace(" .npy", "")


def test_saves_a_reordered_model_and_reports_it(model_file):
    out = model_file / "ordered.pt"
    result = run(model_file / "model.pt", "--clip", model_file / "clip.npy", "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [layer] = report["layers"]
    assert layer["name"] == "2" and sorted(layer["order"]) == list(range(32)) and layer["order"] != list(range(32))
    assert layer["groups"] == [[0, 16], [16, 16]] and report["max_relative_error"] <= 1e-5
    original, ordered = dynexport.load_model(model_file / "model.pt"), dynexport.load_model(out)
    assert ordered.dynexport_input_shape == (1, 3, 48, 48)
    frames = torch.from_numpy(video.generate("static_camera", seed=0, frames=4, height=48, width=48).as_float())
    for a, b in zip(stream(original, frames)[0], stream(ordered, frames)[0]):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    text = run(model_file / "model.pt", "--synthetic", "static_camera", "--frames", "4", "-o", out, "--force")
    assert text.returncode == 0, text.stderr
    assert "D-STEP layers" in text.stdout and "run after" in text.stdout and "dynexport build" in text.stdout


@pytest.mark.parametrize("args, message", [
    ([], "--clip FILE.npy or --synthetic PRESET"),
    (["--synthetic", "nope"], "nope"),
    (["--synthetic", "static_camera", "--input-shape", "1x3x32x32", "--clip", "x.npy"], "one of them"),
])
def test_bad_inputs_are_named(model_file, args, message):
    result = run(model_file / "model.pt", "-o", model_file / "bad.pt", *args)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_model_without_dstep_layers_and_an_existing_output_are_named(model_file, tmp_path):
    plain = tmp_path / "plain.pt"
    dynexport.save_model(nn.Sequential(nn.Conv2d(3, 4, 3)), plain, input_shape=(1, 3, 16, 16))
    result = run(plain, "--synthetic", "static_camera", "--frames", "2", "-o", tmp_path / "o.pt")
    assert result.returncode == 1 and "no DStepConv2d with a channel policy" in result.stderr
    (tmp_path / "exists.pt").write_bytes(b"")
    result = run(plain, "--synthetic", "static_camera", "-o", tmp_path / "exists.pt")
    assert result.returncode == 1 and "pass --force" in result.stderr
