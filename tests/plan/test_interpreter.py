"""Differential: the frame program run by the interpreter (segments in torch, and in
ExecuTorch) against the PyTorch reference ``dynexport.stream``, frame by frame, with the
gate decisions compared block by block."""

import pytest
import torch
from torch import nn

import dynexport
from dynexport import video
from dynexport.compiler.pipeline import compile_model
from dynexport.nn import DStepConv2d, Residual, SkipConv2d
from dynexport.plan.interpreter import FrameProgramInterpreter, TorchSegments
from tests.compiler.conftest import randomize_batchnorms

TORCH_TOLERANCE = 1e-5
EXECUTORCH_TOLERANCE = 1e-4


def skip(cin, cout, **kw):
    kw.setdefault("threshold", 0.1)
    return SkipConv2d(cin, cout, 3, **kw)


MODELS = {
    "stride2_padding": lambda: nn.Sequential(skip(3, 8, stride=2, padding=1, block=4), nn.ReLU()),
    "no_padding_output_norm": lambda: nn.Sequential(skip(3, 8, gate="output_norm", threshold=0.5), nn.BatchNorm2d(8)),
    "dilation": lambda: nn.Sequential(skip(3, 8, padding=2, dilation=2), nn.ReLU()),
    "depthwise_chain": lambda: nn.Sequential(
        skip(3, 8, padding=1), nn.ReLU(), skip(8, 8, padding=1, groups=8), nn.ReLU(), skip(8, 4, padding=1, block=4)),
    "residual_gumbel": lambda: nn.Sequential(
        skip(3, 8, padding=1, gate="gumbel"), nn.BatchNorm2d(8), nn.ReLU(),
        Residual(nn.Sequential(skip(8, 8, padding=1), nn.BatchNorm2d(8), nn.ReLU(), skip(8, 8, padding=1), nn.BatchNorm2d(8))),
        nn.Conv2d(8, 2, 1)),
    "dstep": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        Residual(nn.Sequential(DStepConv2d(8, 8, 3, stride=2, padding=1, patch=4), nn.BatchNorm2d(8)),
                 nn.Conv2d(8, 8, 1, stride=2)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)),
    "grids_9_4_1_blocks": lambda: nn.Sequential(  # tile+dense; 4 blocks over 10x12 (tile+dense: they stick out); dense only
        skip(3, 8, stride=2, padding=1), nn.ReLU(), skip(8, 8, stride=2, padding=1), nn.ReLU(),
        skip(8, 8, stride=2, padding=1)),
    "no_gates": lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2)),
}


def make_model(name):
    torch.manual_seed(0)
    model = randomize_batchnorms(MODELS[name]()).eval()
    for m in model.modules():
        if isinstance(m, SkipConv2d) and m.gate == "gumbel":
            with torch.no_grad():
                m.gate_conv.weight.uniform_(0.0, 0.4)
        if isinstance(m, DStepConv2d):  # make the policies decide something
            with torch.no_grad():
                m.spatial_policy.conv.weight.normal_(0, 5)
                m.spatial_policy.conv.bias.zero_()
                m.channel_policy.fc2.bias.normal_(0, 1)
    return model


def clip(height=37, width=45, frames=40):
    # a still stretch, moving shapes, a scene cut and a slow illumination drift
    return torch.from_numpy(video.generate("mixed", seed=0, height=height, width=width, frames=frames).as_float())


def reference_decisions(model):
    result = []
    for _, layer in dynexport.nn.gated_layers(model):
        decisions = layer.last_decisions
        if isinstance(decisions, tuple):
            patches, channels = decisions
            result.append((torch.nonzero(patches[0]).flatten().tolist(), channels[0].tolist()))
        else:
            result.append(torch.nonzero(decisions[0]).flatten().tolist())
    return result


def compare(model, compiled, runner, frames, tolerance, dense_fallback=None):
    interpreter = FrameProgramInterpreter(compiled.program, runner)
    interpreter.reset()
    skipped = 0
    for t, (frame, expected) in enumerate(zip(frames, dynexport.stream(model, frames, dense_fallback=dense_fallback))):
        got = interpreter.step(frame[None])
        error = (got - expected).abs().max().item()
        assert error <= tolerance, f"frame {t}: max abs error {error:.3g} > {tolerance}"
        want = reference_decisions(model)
        for i, (a, b) in enumerate(zip(interpreter.layer_decisions(), want)):
            if isinstance(a, tuple):
                a = (a[0] if any(c == 2 for c in a[1]) or not a[0] else [], a[1])
                b = (b[0] if any(c == 2 for c in b[1]) else [], b[1])
            assert a == b, f"frame {t}, layer {compiled.program.layers[i].name}: decisions differ"
        skipped += sum(1 for d in want if not isinstance(d, tuple) and len(d) < compiled.program.layers[0].grid.num_blocks)
    return skipped


@pytest.mark.parametrize("name", MODELS)
def test_interpreter_with_torch_segments_matches_reference(name):
    model = make_model(name)
    frames = clip()
    compiled = compile_model(model, (1, 3, 37, 45))
    skipped = compare(model, compiled, TorchSegments(compiled.segments), frames, TORCH_TOLERANCE)
    if compiled.program.layers and compiled.program.layers[0].kind == 0:
        assert skipped > 0, "the clip must exercise skipped blocks"


MODELS["residual_norm"] = lambda: nn.Sequential(  # a fallback segment of two inputs' worth of steps
    skip(3, 8, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    Residual(nn.Sequential(skip(8, 8, padding=1, groups=8), nn.ReLU(), skip(8, 8, padding=1))), nn.Conv2d(8, 2, 1))


@pytest.mark.parametrize("name,hold,skips_gate", [("depthwise_chain", 0, True), ("residual_norm", 2, True),
                                                  ("residual_norm", 2, False)])
def test_dense_fallback_matches_the_reference_on_busy_and_calm_frames(name, hold, skips_gate):
    """Above 30 % of the first layer's blocks (and ``hold`` frames after) the rest of the frame
    runs as one dense segment and the later layers forget their state; the reference
    (``stream(..., dense_fallback)``) does the same. A held frame (2.4) computes the first
    layer densely too, unscored; a 2.3 plan's hold (no BRANCH_IF_HOLDING: here replaced by a
    jump to the next instruction) scores it. The clip must take both paths, and calm frames
    right after busy ones."""
    from dynexport.plan.frame_program import Instruction, Op
    from dynexport.streaming import HOLD_ATTRIBUTE, DenseFallback

    model = make_model(name)
    frames = clip()
    compiled = compile_model(model, (1, 3, 37, 45), dense_fallback=0.3, dense_fallback_hold=hold)
    program = compiled.program
    if not skips_gate:
        program.instructions[0] = Instruction(int(Op.JUMP), 1, 0, 0, 0)
    count = int(0.3 * program.layers[0].grid.num_blocks)
    assert program.dense_fallback() == (0, count, hold, skips_gate and hold > 0)
    assert "add_dense_fallback" in compiled.passes
    fallback = DenseFallback(0.3, hold, hold_skips_gate=skips_gate)
    compare(model, compiled, TorchSegments(compiled.segments), frames, TORCH_TOLERANCE, dense_fallback=fallback)
    busy, held, fell_back = [], [], []
    dynexport.reset(model)
    for frame in frames:
        holding = getattr(model, HOLD_ATTRIBUTE, 0) > 0
        dynexport.step(model, frame, fallback)
        layers = [layer for _, layer in dynexport.nn.gated_layers(model)]
        computed = int(layers[0].last_decisions.sum())
        held.append(holding)
        busy.append(not (holding and skips_gate) and computed > count)
        fell_back.append(not bool(layers[1].primed))  # unprimed after the frame: it fell back
        if holding and skips_gate:  # the first layer computed every block, unscored
            assert computed == program.layers[0].grid.num_blocks and layers[0].last_stats.gate_macs == 0
    assert any(busy) and not all(busy[1:]), busy
    assert any(a and not b for a, b in zip(busy[:-1], busy[1:])), "no calm frame follows a busy one"
    assert fell_back == [b or h for b, h in zip(busy, held)]
    assert any(h and not b for h, b in zip(held, busy)) == (hold > 0), (busy, held)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["residual_gumbel", "dstep"])
def test_interpreter_with_executorch_segments_matches_reference(name):
    from targets.executorch import ExecuTorchSegments, emit_executorch

    model = make_model(name)
    frames = clip(frames=24)
    compiled = compile_model(model, (1, 3, 37, 45))
    runner = ExecuTorchSegments(emit_executorch(compiled.segments))
    assert runner.method_names == set(compiled.segments)
    compare(model, compiled, runner, frames, EXECUTORCH_TOLERANCE)
