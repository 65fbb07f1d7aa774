"""The native runtime with the ExecuTorch adapter (targets/executorch/native), through the
native driver (--backend executorch): against the Python frame-program interpreter running the same .pte with
ExecuTorch's Python runtime, on the host and, cross-built, under qemu-aarch64; and the
driver's errors (a foreign artifact, a segment the artifact does not match, a truncated clip,
bad arguments, a backend not compiled in); and sessions sharing one ExecuTorch backend."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dynexport import video
from dynexport.build import build
from dynexport.nn import DStepConv2d, Residual, SkipConv2d
from dynexport.plan.frame_program import FrameProgram
from dynexport.plan.interpreter import FrameProgramInterpreter

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4
FRAMES, HEIGHT, WIDTH = 12, 24, 24
RESET_AT = 6  # a scene cut in the middle: the frame after it is dense again


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """24x24 frames through two skip convs and a D-STEP block: skip layer 0 (6x6 blocks) takes
    the tile path on moving frames, skip layer 2 (3x3 blocks, stride 2) mostly the dense one;
    the D-STEP layer's segments have rank-3 and int32 operands and a spatial-logits output
    the method keeps NCHW (the adapter's permuting path)."""
    torch.manual_seed(0)
    dstep = DStepConv2d(8, 8, 3, padding=1, patch=4)
    with torch.no_grad():  # make the policies decide something
        dstep.spatial_policy.conv.weight.normal_(0, 5)
        dstep.spatial_policy.conv.bias.zero_()
        dstep.channel_policy.fc2.bias.normal_(0, 1)
    model = nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, block=4, threshold=0.3), nn.ReLU(),
        SkipConv2d(8, 8, 3, stride=2, padding=1, block=4, threshold=0.3), nn.ReLU(),
        Residual(dstep), nn.Conv2d(8, 4, 1)).eval()
    folder = tmp_path_factory.mktemp("executorch_native")
    torch.save(model, folder / "model.pt")
    out = folder / "out"
    build(folder / "model.pt", out, target="host", input_shape=f"1x3x{HEIGHT}x{WIDTH}", allow_pickle=True)
    clip = torch.from_numpy(video.generate("mixed", seed=0, height=HEIGHT, width=WIDTH, frames=FRAMES).as_float())
    (folder / "frames.bin").write_bytes(clip.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
    return {"dir": folder, "plan": out / "plan.dxfp", "pte": out / "model.pte", "clip": clip}


def reference_run(built):
    """The interpreter with ExecuTorch's Python runtime: outputs in the plan's physical layout
    (NHWC for 4-D), and each frame's (block mask, channel decisions), layer by layer."""
    from targets.executorch import ExecuTorchSegments

    program = FrameProgram.from_bytes(built["plan"].read_bytes())
    interpreter = FrameProgramInterpreter(program, ExecuTorchSegments(built["pte"].read_bytes()))
    interpreter.reset()
    outputs, masks = [], []
    for t, frame in enumerate(built["clip"]):
        if t == RESET_AT:
            interpreter.reset()
        out = interpreter.step(frame[None])
        outputs.append(out.permute(0, 2, 3, 1) if out.dim() == 4 else out)
        frame_masks = []
        for layer, decisions in zip(program.layers, interpreter.layer_decisions()):
            active, channels = decisions if isinstance(decisions, tuple) else (decisions, [2] * layer.out_channels)
            mask = np.zeros(layer.grid.num_blocks, np.uint8)
            mask[list(active)] = 1
            frame_masks.append((mask, np.array(channels, np.uint8)))
        masks.append(frame_masks)
    return program, torch.stack(outputs).numpy(), masks


def run_driver(command, built, frames=None, extra=(), plan=None, pte=None, folder=None):
    folder = folder or built["dir"]
    args = [*map(str, command), "--backend", "executorch", "--plan", str(plan or built["plan"]),
            "--artifact", str(pte or built["pte"]),
            "--frames", str(frames or built["dir"] / "frames.bin"), "--outputs", str(folder / "outputs.bin"),
            *map(str, extra)]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def read_outputs(path, shape):
    return np.fromfile(path, np.float32).reshape(-1, *shape)


@pytest.mark.slow
def test_driver_matches_interpreter_on_host(host_driver, built, tmp_path):
    program, expected, masks = reference_run(built)
    ties = tmp_path / "ties.bin"
    ties.write_bytes(b"".join(mask.tobytes() for frame in masks for mask, _ in frame))
    stats = tmp_path / "stats.jsonl"
    result = run_driver([host_driver], built, folder=tmp_path, extra=[
        "--decisions", tmp_path / "decisions.bin", "--tie-decisions", ties, "--reset-frames", RESET_AT,
        "--stats", stats])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames"] == FRAMES and summary["threads"] >= 1

    got = read_outputs(tmp_path / "outputs.bin", expected.shape[1:])
    assert got.shape == expected.shape
    error = np.abs(got - expected).max(axis=tuple(range(1, got.ndim)))
    assert (error <= TOLERANCE).all(), f"max abs error per frame: {error}"

    # decisions: per frame, per layer, the block mask then the channel decisions
    decisions = np.fromfile(tmp_path / "decisions.bin", np.uint8)
    offset = 0
    for t in range(FRAMES):
        for l, layer in enumerate(program.layers):
            blocks, channels = layer.grid.num_blocks, layer.out_channels
            mask, channel_decisions = masks[t][l]
            got_mask = decisions[offset:offset + blocks]
            got_channels = decisions[offset + blocks:offset + blocks + channels]
            if layer.kind == 1 and not (channel_decisions == 2).any():
                got_mask, mask = got_mask[:0], mask[:0]  # D-STEP computing no channel: patches moot
            assert (got_mask == mask).all(), f"frame {t}, layer {layer.name}: blocks differ"
            assert (got_channels == channel_decisions).all(), f"frame {t}, layer {layer.name}: channels differ"
            offset += blocks + channels
    assert offset == decisions.size

    lines = [json.loads(line) for line in stats.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    paths = [[layer["path"] for layer in line["layers"]] for line in lines]
    assert all(len(p) == len(program.layers) and set(p) <= {"reuse", "tiles", "dense"} for p in paths)
    # the tile segments ran at batches below their bound: the adapter's dynamic batch path
    assert any(p[0] == "tiles" for p in paths), paths
    assert any(layer.kind == 1 for layer in program.layers)
    assert paths[0] == paths[RESET_AT] == ["dense"] * len(program.layers), paths
    assert all(len(line["segment_ns"]) == len(program.segments) and line["frame_ns"] > 0 for line in lines)


@pytest.mark.slow
def test_one_thread_gives_the_same_outputs(host_driver, built, tmp_path):
    default = run_driver([host_driver], built, folder=tmp_path)
    assert default.returncode == 0, default.stderr
    first = np.fromfile(tmp_path / "outputs.bin", np.float32)
    serial = run_driver([host_driver], built, folder=tmp_path, extra=["--threads", 1, "--repeat", 2])
    assert serial.returncode == 0, serial.stderr
    summary = json.loads(serial.stdout.strip().splitlines()[-1])
    assert summary["threads"] == 1 and summary["passes"] == 2
    np.testing.assert_allclose(np.fromfile(tmp_path / "outputs.bin", np.float32), first, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_aarch64_driver_under_qemu_matches_host(aarch64_driver, host_driver, built, tmp_path):
    frames = tmp_path / "frames.bin"  # 4 frames: dense, then tile and reuse paths (emulation is ~400x slower)
    frame_bytes = 4 * 3 * HEIGHT * WIDTH
    frames.write_bytes((built["dir"] / "frames.bin").read_bytes()[:4 * frame_bytes])
    host = run_driver([host_driver], built, frames=frames, folder=tmp_path)
    assert host.returncode == 0, host.stderr
    expected = np.fromfile(tmp_path / "outputs.bin", np.float32)
    arm = run_driver(aarch64_driver, built, frames=frames, folder=tmp_path, extra=["--threads", 1])
    assert arm.returncode == 0, arm.stderr
    got = np.fromfile(tmp_path / "outputs.bin", np.float32)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE


def test_artifact_other_than_the_plans_is_refused(host_driver, built, tmp_path):
    pte = tmp_path / "model.pte"
    pte.write_bytes(built["pte"].read_bytes() + b"\0")  # still a loadable program, not the plan's bytes
    result = run_driver([host_driver], built, pte=pte, folder=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "artifact" in result.stderr.lower()


def test_segment_the_artifact_does_not_match_is_named(host_driver, built, tmp_path):
    program = FrameProgram.from_bytes(built["plan"].read_bytes())
    tiles = next(s for s in program.segments if s.max_batch > 0)
    dense = next(s for s in program.segments if s.max_batch == 0 and s.name.startswith(tiles.name.rsplit("_", 1)[0]))
    tiles.name, dense.name = dense.name, tiles.name  # same artifact record: only the signatures differ
    plan = tmp_path / "plan.dxfp"
    plan.write_bytes(program.to_bytes())
    result = run_driver([host_driver], built, plan=plan, folder=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "status 401" in result.stderr  # DYNRT_SEGMENT_MISMATCH
    assert f"method '{tiles.name}'" in result.stderr or f"method '{dense.name}'" in result.stderr, result.stderr
    assert "NHWC" in result.stderr and "the plan has" in result.stderr


def test_truncated_frames_file_is_a_clear_error(host_driver, built, tmp_path):
    frames = tmp_path / "frames.bin"
    frames.write_bytes((built["dir"] / "frames.bin").read_bytes()[:-5])
    result = run_driver([host_driver], built, frames=frames, folder=tmp_path)
    assert result.returncode == 2
    assert "not a whole number of frames" in result.stderr and str(4 * 3 * HEIGHT * WIDTH) in result.stderr


def test_sessions_sharing_one_backend_give_a_lone_sessions_outputs(host_driver, built, tmp_path):
    """2 and 3 sessions on one ExecuTorch backend object, created and destroyed in every
    order, each stepping its own clip: every output is a lone session's (the driver's check
    fails on the first difference or failed step; before per-session backend state,
    destroying the first session failed every later step of the second with status 400)."""
    result = run_driver([host_driver], built, folder=tmp_path, extra=["--shared-sessions-check", "--threads", 1])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])["shared_sessions_check"]
    assert summary == {"schedules": 2 * 2 + 6 * 6, "steps": summary["steps"], "differences": 0}
    assert summary["steps"] >= 40 * 2 * 4
    # clip 0's lone outputs are the plain run's
    lone = np.fromfile(tmp_path / "outputs.bin", np.float32)
    plain = run_driver([host_driver], built, folder=tmp_path, extra=["--threads", 1])
    assert plain.returncode == 0, plain.stderr
    stepped = np.fromfile(tmp_path / "outputs.bin", np.float32)
    np.testing.assert_array_equal(lone, np.concatenate([stepped, stepped])[:lone.size])


def test_backend_not_compiled_in_is_named(host_driver, built, tmp_path):
    # coreml: a registered backend whose adapter (Objective-C, runtime_ios) no Linux driver has
    args = [str(host_driver), "--backend", "coreml", "--plan", str(built["plan"]), "--artifact", str(built["pte"]),
            "--frames", str(built["dir"] / "frames.bin"), "--outputs", str(tmp_path / "outputs.bin")]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 2
    message = next(line for line in result.stderr.splitlines() if "--backend coreml" in line)
    assert "not compiled into this driver (it has: " in message and "executorch" in message, message


def test_bad_arguments_exit_2(host_driver, built, tmp_path):
    result = subprocess.run([str(host_driver), "--plan", str(built["plan"])], capture_output=True, text=True)
    assert result.returncode == 2 and "missing --artifact" in result.stderr
    result = subprocess.run([str(host_driver), "--plan", str(built["plan"]), "--artifact", str(built["pte"]),
                             "--frames", "f.bin", "--outputs", "o.bin"], capture_output=True, text=True)
    assert result.returncode == 2 and "missing --backend" in result.stderr
    result = run_driver([host_driver], built, folder=tmp_path, extra=["--reset-frames", FRAMES])
    assert result.returncode == 2 and "past the clip" in result.stderr
    result = run_driver([host_driver], built, folder=tmp_path, extra=["--tie-decisions", built["plan"]])
    assert result.returncode == 2 and "tie decisions" in result.stderr
