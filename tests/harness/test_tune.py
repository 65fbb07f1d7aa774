"""``dynexport tune``: cut-offs chosen from the measured table, written back into a folder that
still verifies; folders that are no build, tampered or have nothing to tune are refused.
Speed is never asserted: only that the choice follows from the table that was measured."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dynexport.build import build
from dynexport.errors import PlanError
from dynexport.harness.cutoff_choice import (
    batches_to_measure, choose_cutoff, interpolate_costs, tile_path_costs,
)
from dynexport.harness.tune import LayerTuning, tunable_layers, tune
from dynexport.harness.verify import open_build
from dynexport.nn import SkipConv2d
from dynexport.plan.frame_program import FrameProgram

CLI = [sys.executable, "-m", "dynexport.cli.main"]
FAST = {"rounds": 3, "warmup": 1}  # enough to exercise every path; the choice is checked, not the speed


def gated_model():
    torch.manual_seed(0)
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, threshold=0.2, block=4), nn.ReLU(),  # 4x5 = 20 blocks: tunable
        SkipConv2d(8, 8, 3, padding=1, threshold=0.1, block=8),  # 2x3 = 6 blocks: tunable
        SkipConv2d(8, 4, 3, stride=2, padding=1, threshold=0.1, block=5),  # 2x2 blocks over 8x10: tiles only
    ).eval()


@pytest.fixture(scope="module")
def built_once(build_saved_model):
    return build_saved_model("tune", gated_model(), (1, 3, 16, 20))


@pytest.fixture
def folder(built_once, tmp_path):
    """A fresh copy of the build for each test (tuning rewrites it)."""
    return shutil.copytree(built_once, tmp_path / "out")


def file_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the choice, on made-up tables ------------------------------------------------------------
def test_cutoff_is_the_last_count_before_tiles_first_cost_as_much_as_dense():
    assert choose_cutoff([1.0, 2.0, 3.0, 4.0], 3.5) == 3
    assert choose_cutoff([1.0, 2.0, 3.5, 2.0], 3.5) == 2  # equal is not cheaper; a later dip does not count
    assert choose_cutoff([5.0, 6.0], 3.0) == 0  # dense wins from one block on
    assert choose_cutoff([1.0, 2.0], 3.0) == 2  # never above the max batch


def test_tile_path_adds_one_copy_per_tile_and_interpolation_fills_the_gaps():
    assert tile_path_costs([1.0, 2.0], 0.5) == [1.5, 3.0]
    assert interpolate_costs({1: 1.0, 3: 3.0, 4: 10.0}, 4) == [1.0, 2.0, 3.0, 10.0]
    with pytest.raises(ValueError):
        interpolate_costs({2: 1.0, 4: 2.0}, 4)
    assert batches_to_measure(5) == [1, 2, 3, 4, 5]
    sampled = batches_to_measure(200)
    assert sampled[0] == 1 and sampled[-1] == 200 and len(sampled) < 40 and sampled == sorted(set(sampled))


# -- tuning a built folder ------------------------------------------------------------------
def test_tune_writes_the_chosen_cutoffs_and_the_table(folder):
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    before = open_build(folder)
    threads_before = _threadpool_get_thread_count()
    unchanged = {name: data for name, data in file_bytes(folder).items()
                 if str(name) not in ("plan.dxfp", "manifest.json")}
    report = tune(folder, **FAST)
    assert _threadpool_get_thread_count() == threads_before  # the process-wide pool is given back

    after = open_build(folder)  # every checksum matches the new manifest
    manifest = json.loads((folder / "manifest.json").read_text())
    plan_bytes = (folder / "plan.dxfp").read_bytes()
    assert manifest["artifacts"]["plan.dxfp"] == hashlib.sha256(plan_bytes).hexdigest()
    assert {name: data for name, data in file_bytes(folder).items() if name in unchanged} == unchanged

    table = manifest["tuning"]
    assert table["threads"] == 1 and table["rounds"] == FAST["rounds"] and table["written"] is True
    names = [layer.name for layer in before.program.layers]
    tuned = [LayerTuning.from_json(entry) for entry in table["layers"]]
    assert [t.name for t in tuned] == names[:2] == [r.name for r in report.layers]
    for entry in tuned:
        index = names.index(entry.name)
        layer = after.program.layers[index]
        # the recorded cut-off is what the recorded table gives, and the plan holds it
        assert entry.new_cutoff == choose_cutoff(entry.tile_path_ms(), entry.dense_ms)
        assert layer.dense_cutoff == entry.new_cutoff
        assert entry.old_cutoff == before.program.layers[index].dense_cutoff == entry.blocks // 2
        assert entry.max_batch == entry.blocks - 1 and 0 <= entry.new_cutoff <= entry.max_batch
        assert sorted(entry.tile_ms) == list(range(1, entry.max_batch + 1)) and entry.dense_ms > 0
        assert manifest["layers"][index]["dense_cutoff_blocks"] == entry.new_cutoff
    # nothing but the tuned cut-offs changed in the plan
    expected = FrameProgram.from_bytes(before.program.to_bytes())
    for entry in tuned:
        expected.layers[names.index(entry.name)].dense_cutoff = entry.new_cutoff
    assert expected.to_bytes() == plan_bytes


def test_a_raised_cutoff_still_verifies_on_the_native_runtime(folder, monkeypatch):
    """Cut-offs at the tile segment's max batch (what a fast tile path gives): the runtime packs
    up to blocks - 1 tiles per call and still matches the reference."""
    import dynexport.harness.tune as tune_module

    monkeypatch.setattr(tune_module, "choose_cutoff", lambda costs, dense: len(costs))
    report = tune(folder, **FAST)
    assert all(layer.new_cutoff == layer.blocks - 1 > layer.old_cutoff for layer in report.layers)
    result = subprocess.run([*CLI, "verify", str(folder), "--synthetic", "mixed", "--frames", "12", "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["passed"] is True


def test_cli_dry_run_writes_nothing_then_tune_writes_and_the_folder_verifies(folder):
    before = file_bytes(folder)
    result = subprocess.run([*CLI, "tune", str(folder), "--rounds", "2", "--dry-run", "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["written"] is False and len(report["layers"]) == 2
    assert {"old_cutoff", "new_cutoff", "tile_ms", "dense_ms", "blocks", "max_batch"} <= set(report["layers"][0])
    assert file_bytes(folder) == before

    result = subprocess.run([*CLI, "tune", str(folder), "--rounds", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "new cut-off" in result.stdout and "wrote the new cut-offs" in result.stdout
    assert "tuning" in json.loads((folder / "manifest.json").read_text())
    result = subprocess.run([*CLI, "verify", str(folder), "--synthetic", "mixed", "--frames", "12"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_tune_times_through_the_native_driver_on_the_device_asked(folder):
    """The table comes from the driver's tune mode on the device: its threads, the backend and
    the device are recorded, and an unknown device is refused before anything runs."""
    from dynexport.harness.devices import DeviceError

    report = tune(folder, write=False, **FAST)
    table = report.as_json()
    assert table["backend"] == "executorch" and table["device"] == "host" and table["written"] is False
    assert all(layer.dense_ms > 0 and layer.copy_ms_per_tile > 0 and min(layer.tile_ms.values()) > 0
               for layer in report.layers)
    with pytest.raises(DeviceError, match="expected one of host, qemu-arm64, adb"):
        tune(folder, write=False, device="phone", **FAST)
    with pytest.raises(PlanError, match="no litert artifact"):
        tune(folder, write=False, backend="litert", **FAST)


@pytest.mark.slow
def test_tune_on_qemu_arm64(folder):
    missing = [tool for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not run: needs {', '.join(missing)} (Debian g++-aarch64-linux-gnu, qemu-user; make setup)")
    result = subprocess.run(["bash", "tools/build_runtime.sh", "aarch64", "--quiet"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    before = file_bytes(folder)
    report = tune(folder, write=False, device="qemu-arm64", rounds=2, warmup=0)
    assert report.device == "qemu-arm64" and [layer.name for layer in report.layers] == \
        [layer.name for layer in open_build(folder).program.layers][:2]
    for entry in report.layers:
        assert entry.new_cutoff == choose_cutoff(entry.tile_path_ms(), entry.dense_ms)
        assert sorted(entry.tile_ms) == list(range(1, entry.max_batch + 1)) and entry.dense_ms > 0
    assert file_bytes(folder) == before


# -- refusals ----------------------------------------------------------------------------------
def test_tampered_folder_is_refused_and_left_alone(folder):
    pte = folder / "model.pte"
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pte.write_bytes(bytes(data))
    before = file_bytes(folder)
    with pytest.raises(PlanError, match="does not match the manifest"):
        tune(folder, **FAST)
    result = subprocess.run([*CLI, "tune", str(folder)], capture_output=True, text=True)
    assert result.returncode == 1 and "does not match the manifest" in result.stderr
    assert "Traceback" not in result.stderr
    assert file_bytes(folder) == before


def test_not_a_build_folder_is_named(tmp_path):
    result = subprocess.run([*CLI, "tune", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "not a dynexport build" in result.stderr and str(tmp_path) in result.stderr


def test_folder_without_a_layer_to_tune_is_refused(folder):
    program = open_build(folder).program
    assert len(tunable_layers(program)) == 2  # the 4-block layer has tiles only
    with pytest.raises(PlanError, match="nothing to tune"):
        tune(_only_small_grids(folder.parent), **FAST)


def _only_small_grids(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(nn.Sequential(SkipConv2d(3, 4, 3, padding=1, block=8)).eval(), path)  # 2x2 blocks
    return build(path, tmp_path / "small", target="host", input_shape=(1, 3, 16, 16)).out


def test_a_failure_while_writing_changes_nothing(folder, monkeypatch):
    import dynexport.harness.build_update as build_update

    real_fsync, calls = build_update.os.fsync, []

    def fsync_then_fail(fd):
        calls.append(fd)
        if len(calls) == 2:  # the manifest: the plan is already staged
            raise OSError("injected: disk full")
        real_fsync(fd)

    before = file_bytes(folder)
    monkeypatch.setattr(build_update.os, "fsync", fsync_then_fail)
    with pytest.raises(OSError, match="disk full"):
        tune(folder, **FAST)
    assert file_bytes(folder) == before  # no stray temporary file either
    open_build(folder)


@pytest.mark.slow
def test_build_tune_flag_tunes_right_after_the_build(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(SkipConv2d(3, 4, 3, padding=1, block=4)).eval(), path)  # 3x3 blocks
    out = tmp_path / "out"
    result = subprocess.run([*CLI, "build", str(path), "--target", "host", "--input-shape", "1x3x12x12", "-o",
                             str(out), "--tune"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "built" in result.stdout and "new cut-off" in result.stdout
    manifest = open_build(out).manifest
    [entry] = manifest["tuning"]["layers"]
    assert manifest["layers"][0]["dense_cutoff_blocks"] == entry["new_cutoff"]
