"""Differential: the native runtime (C core, segments run in torch through the callback
backend) against the Python interpreter (the specification) and the PyTorch reference
``dynexport.step``, frame by frame, on clips with a still stretch, drift and a scene cut
(where all three are reset).

Verification mode, as a device run would do it: before each native frame, the
interpreter's decisions are imposed on blocks in the tie band (set_tie_decisions), so the
two stay in lockstep; outside the band the native decisions must be identical. Ties are
counted and reported.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dynexport
from dynexport.plan.frame_program import LayerKind, Op
from dynexport.plan.interpreter import FrameProgramInterpreter, TorchSegments
from dynexport.runtime.binding import LayerPath, NativeSession, torch_callback_backend
from tests.plan.test_interpreter import reference_decisions
from tests.runtime.runtime_models import (
    EXAMPLES, SMALL_MODELS, clip, compiled_example, compiled_small, from_physical, plan_bytes, to_nhwc,
)

INTERPRETER_TOLERANCE = 1e-5
REFERENCE_TOLERANCE = 1e-4


def _active_blocks(decision) -> list[int]:
    return decision[0] if isinstance(decision, tuple) else decision


def _normalize_dstep(decision):
    """D-STEP patches only matter when some channel computes (as test_interpreter compares)."""
    if isinstance(decision, tuple):
        patches, channels = decision
        return (patches if any(c == 2 for c in channels) else [], list(channels))
    return decision


def channels_run(program, index: int, decisions) -> int:
    """The output channels layer ``index`` convolves this frame: every one, or those of its
    D-STEP channel groups (BRANCH_IF_GROUP_IDLE) with a compute channel."""
    groups = {(i.c, i.d) for i in program.instructions if i.op == Op.BRANCH_IF_GROUP_IDLE and i.a == index}
    if not groups:
        return program.layers[index].out_channels
    return sum(count for first, count in groups if any(int(d) == 2 for d in decisions[first:first + count]))


def run_differential(model, compiled, frames: torch.Tensor, cuts=(), label=""):
    """Streams `frames` through the three engines; returns a summary of what ran."""
    program = compiled.program
    interpreter = FrameProgramInterpreter(program, TorchSegments(compiled.segments))
    backend = torch_callback_backend(program, compiled.segments)
    summary = {"frames": 0, "ties": 0, "skipped_blocks": 0, "settled_gates": 0, "paths": set(), "worst_interpreter": 0.0,
               "worst_reference": 0.0, "channels_run": 0, "channels": 0}
    from dynexport.streaming import DenseFallback

    fallback = program.dense_fallback()
    reference_fallback = None if fallback is None else DenseFallback(count=fallback[1], hold=fallback[2])
    summary["fell_back"] = 0
    gated = [module for _, module in dynexport.nn.gated_layers(model)]  # plan order in these models
    with NativeSession(plan_bytes(compiled), backend) as session:
        info = session.describe()
        assert info["state_bytes"] == program.state_bytes()
        assert info["layer_count"] == len(program.layers) and info["segment_count"] == len(program.segments)
        for index, layer in enumerate(program.layers):
            assert session.describe_layer(index) == {
                "name": layer.name, "blocks": layer.grid.num_blocks, "block_rows": layer.grid.blocks[0],
                "block_cols": layer.grid.blocks[1], "out_channels": layer.out_channels}
        for t, frame in enumerate(frames):
            if t == 0 or t in cuts:
                interpreter.reset()
                dynexport.reset(model)
                session.reset()
            want = interpreter.step(frame[None])
            expected = dynexport.step(model, frame[None], reference_fallback)
            decisions = interpreter.layer_decisions()
            if fallback is not None and not bool(gated[1].primed):  # unprimed after the frame: it fell back
                summary["fell_back"] += 1
            for index, (layer, decision) in enumerate(zip(program.layers, decisions)):
                mask = np.zeros(layer.grid.num_blocks, dtype=np.uint8)
                mask[_active_blocks(decision)] = 1
                session.set_tie_decisions(index, mask)
            got = from_physical(session.step(to_nhwc(frame[None])))

            error = (got - want).abs().max().item()
            assert error <= INTERPRETER_TOLERANCE, f"{label} frame {t}: native vs interpreter max error {error:.3g}"
            reference_error = (got - expected).abs().max().item()
            assert reference_error <= REFERENCE_TOLERANCE, \
                f"{label} frame {t}: native vs reference max error {reference_error:.3g}"
            summary["worst_interpreter"] = max(summary["worst_interpreter"], error)
            summary["worst_reference"] = max(summary["worst_reference"], reference_error)

            stats = session.last_stats
            assert stats["segments_ns"] <= stats["frame_ns"]
            want_reference = reference_decisions(model)
            for index, (layer, decision) in enumerate(zip(program.layers, decisions)):
                mask, channels = session.layer_decisions(index)
                native = np.flatnonzero(mask).tolist()
                layer_stats = stats["layers"][index]
                if isinstance(decision, tuple):
                    native_decision = (native, channels.tolist())
                else:
                    native_decision = native
                    assert channels.tolist() == [2] * layer.out_channels
                assert native_decision == decision, f"{label} frame {t}, layer {layer.name}: decisions differ"
                # a layer deciding on any change follows rounding upstream (the reference convolves
                # densely where the plan convolves tiles): its outputs are compared, not its decisions
                assert layer.decides_on_any_change or \
                    _normalize_dstep(native_decision) == _normalize_dstep(want_reference[index]), \
                    f"{label} frame {t}, layer {layer.name}: decisions differ from the reference"
                # statistics
                assert layer_stats["active_blocks"] == len(native)
                assert layer_stats["total_blocks"] == layer.grid.num_blocks
                assert layer_stats["dense_macs"] == compiled.layer_dense_macs[index]
                path = layer_stats["path"]
                summary["paths"].add(path.name)
                if not native:
                    assert path == LayerPath.REUSE
                elif len(native) > layer.dense_cutoff:
                    assert path == LayerPath.DENSE
                else:
                    assert path == LayerPath.TILES
                positions = layer.grid.output_size[0] * layer.grid.output_size[1]
                per_position = channels_run(program, index, channels) * (layer.macs_per_position // layer.out_channels)
                conv = {LayerPath.REUSE: 0, LayerPath.DENSE: positions * per_position,
                        LayerPath.TILES: len(native) * layer.block ** 2 * per_position}[path]
                if layer.kind == LayerKind.DSTEP:  # the policies run every frame; MACs per frame
                    gate, scored = layer.gate_macs_per_position, True
                    summary["channels_run"] += channels_run(program, index, channels) if native else 0
                    summary["channels"] += layer.out_channels if native else 0
                else:
                    gate = positions * layer.gate_macs_per_position
                    # not after a reset, nor where the dense fallback computed the layer or unprimed it
                    scored = gated[index].last_stats.gate_macs > 0
                if scored and not native and layer_stats["executed_macs"] == conv and layer.kind == LayerKind.SKIP_CONV:
                    summary["settled_gates"] += 1  # input and reference unchanged: nothing to score
                else:
                    assert layer_stats["executed_macs"] == conv + (gate if scored else 0)
                summary["ties"] += layer_stats["ties"]
                if layer.kind == LayerKind.SKIP_CONV:
                    summary["skipped_blocks"] += layer.grid.num_blocks - len(native)
            summary["frames"] += 1
    backend.close()
    return summary


@pytest.mark.parametrize("key", list(SMALL_MODELS))
def test_native_matches_interpreter_and_reference_small_models(host_build, key):
    model, compiled = compiled_small(key)
    frames = clip("mixed", 37, 45, 32)  # still 8..16, drift, scene cut at 28
    summary = run_differential(model, compiled, frames, (28,), key)
    print(f"{key}: {summary}")
    if any(layer.kind == LayerKind.SKIP_CONV for layer in compiled.program.layers):
        assert summary["skipped_blocks"] > 0, "the clip must exercise skipped blocks"
    if compiled.program.dense_fallback() is not None:
        assert 0 < summary["fell_back"] < summary["frames"], "the clip must take the fallback and leave it"


# the example networks are slow in torch: short clips, with the scene cut moved early
EXAMPLE_CLIPS = {
    "skipconv_heatmap": ("scene_cut", {"cuts": (9,), "still": (3, 6)}),
    "dstep_action": ("mixed", {"cuts": (10,), "still": (3, 6)}),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_native_matches_interpreter_and_reference_examples(host_build, name):
    model, compiled = compiled_example(name)
    _, _, height, width = compiled.input_shape
    preset, overrides = EXAMPLE_CLIPS[name]
    frames = clip(preset, height, width, 14, seed=3, **overrides)
    summary = run_differential(model, compiled, frames, overrides["cuts"], name)
    print(f"{name} ({preset} {overrides}): {summary}")
    assert len(summary["paths"]) >= 2, f"{name}: the clip must take more than one path, took {summary['paths']}"


def _inverted_residual_net() -> torch.nn.Module:
    """A small MobileNetV2-style net, every convolution input_norm-gated (dynexport.convert):
    stem, two inverted residual blocks (the second with an identity shortcut) and a 1x1 head,
    so pointwise segments (ReLU6, residual add) sit between gated layers."""
    from torch import nn

    from dynexport.gating import convert
    from dynexport.nn import Residual

    def conv_bn(cin, cout, kernel=1, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU6()] if act else [])

    def block(cin, cout, stride):
        body = nn.Sequential(*conv_bn(cin, 4 * cin), *conv_bn(4 * cin, 4 * cin, 3, stride, groups=4 * cin),
                             *conv_bn(4 * cin, cout, act=False))
        return Residual(body, activation=nn.Identity()) if stride == 1 and cin == cout else body

    torch.manual_seed(0)
    plain = nn.Sequential(*conv_bn(3, 8, 3, 2), block(8, 8, 1), block(8, 12, 2), block(12, 12, 1), *conv_bn(12, 16))
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
    return convert(plain.eval(), gate="input_norm", block=4, threshold=0.2).model.eval()


def test_change_tracking_through_pointwise_segments_matches(host_build):
    """Block-level change tracking (small objects on a still background, no sensor noise):
    gates score only the blocks their changed inputs reach, through the pointwise segments
    (residual adds; each ReLU6 runs fused into the layer before it) and from the frame's own
    change map; decisions and outputs stay those of the interpreter and the reference, frame
    by frame, across a scene cut."""
    from dynexport.compiler.pipeline import compile_model
    from dynexport.plan.frame_program import Op, RunFlag

    model = _inverted_residual_net()
    compiled = compile_model(model, (1, 3, 40, 48))
    program = compiled.program
    pointwise = [ins for ins in program.instructions if ins.op == Op.RUN_SEGMENT and ins.c & RunFlag.POINTWISE]
    assert len(pointwise) == 2, "the residual adds between gated layers are pointwise"
    fused = [name for name, artifact in compiled.segments.items() if getattr(artifact.module, "epilogue", None)]
    assert len(fused) >= 8, "the ReLU6 after every expand, depthwise and stem convolution is an epilogue"
    frames = clip("small_objects", 40, 48, 14, seed=2, cuts=(9,))
    summary = run_differential(model, compiled, frames, (9,), "inverted_residual_net")
    assert {"REUSE", "TILES"} <= summary["paths"]


def test_a_changed_pixel_reaches_exactly_the_blocks_whose_tiles_read_it(host_build):
    """The frame's change boxes (step.c, take_frame_changes): a pixel on a block's edge is in
    its neighbour's halo, one pixel further in is not, though both lie in the same change
    cell. One pixel moves per frame; the reference decides which blocks compute, and the
    native runtime, which scores only the blocks whose tiles meet a changed pixel, must
    decide the same (run_differential), including a pixel written twice in a row."""
    from dynexport.compiler.pipeline import compile_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(dynexport.nn.SkipConv2d(4, 4, 3, padding=1, block=8, threshold=0.5)).eval()
    compiled = compile_model(model, (1, 4, 16, 16))
    # (row, column) changed in each frame after the first -> blocks (2x2 grid, row-major) whose 10x10 tiles read it
    moves = [((3, 8), [0, 1]), ((3, 9), [1]), ((3, 9), [1]), ((3, 7), [0, 1]), ((6, 3), [0]), ((7, 3), [0, 2]),
             ((8, 8), [0, 1, 2, 3]), ((12, 15), [3]), ((15, 0), [2])]
    frames = [torch.rand(4, 16, 16)]
    for t, ((row, col), _) in enumerate(moves):
        frame = frames[-1].clone()
        frame[:, row, col] += 20.0 * (1 if t % 2 == 0 else -1)
        frames.append(frame)
    frames = torch.stack(frames)
    dynexport.reset(model)
    for t, frame in enumerate(frames):
        dynexport.step(model, frame[None])
        if t > 0:
            assert reference_decisions(model) == [moves[t - 1][1]], f"frame {t}: the premise (which tiles read it)"
    summary = run_differential(model, compiled, frames, (), "changed_pixel_halo")
    assert summary["frames"] == len(frames)


def test_dstep_channel_groups_run_only_groups_with_a_compute_channel(host_build):
    """Forced policies (runtime_models.dstep_forced_channels: 64 channels, groups of 16): half
    the channels skip, a quarter reuse, a quarter compute. The native runtime convolves only
    the compute group (and the reuse group on a frame after a reset, where reuse means
    compute), its executed MACs say so (run_differential checks them per frame), and its
    outputs match the interpreter and the reference."""
    model, compiled = compiled_small("dstep_channel_groups")
    program = compiled.program
    assert sum(1 for i in program.instructions if i.op == Op.BRANCH_IF_GROUP_IDLE) == 8  # 4 groups x 2 paths
    frames = clip("mixed", 37, 45, 16)
    summary = run_differential(model, compiled, frames, (10,), "dstep_channel_groups")
    print(f"dstep_channel_groups: {summary}")
    active_frames = summary["channels"] // 64
    # 2 frames (0 and the cut) run 32 channels, the others 16
    assert active_frames > 2
    assert summary["channels_run"] <= 16 * active_frames + 16 * 2
    assert summary["channels_run"] >= 16 * active_frames


class _PaddedTiles(torch.nn.Module):
    """The 10x10 tiles of the four 8x8 blocks of a 16x16 frame, padding filled with `value`
    instead of zeros: what a plan could write into a reference other than by STORE_REFERENCE."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, frame):
        padded = torch.nn.functional.pad(frame, (1, 1, 1, 1), value=self.value)
        tiles = [padded[:, :, r:r + 10, c:c + 10] for r in (0, 8) for c in (0, 8)]
        return (torch.cat(tiles).contiguous(memory_format=torch.channels_last),)


def test_a_reference_written_by_another_instruction_is_read_in_full(host_build):
    """The runtime skips the zero padding of reference tiles only while nothing but
    STORE_REFERENCE has written the reference (session_internal.h:
    reference_padding_zero_version). Here a segment rewrites the reference after every
    frame: the frame's own tiles, so the residual inside is 0 on a still frame, and 5.0 in
    the padding. The interpreter scores that padding, and every block is border, so every
    block is active; a runtime that took the padding for zero would find none."""
    from dynexport.compiler.pipeline import compile_model
    from dynexport.compiler.plan_builder import SegmentArtifact, example_tensor
    from dynexport.plan.frame_program import NO_LAYER

    torch.manual_seed(0)
    model = torch.nn.Sequential(dynexport.nn.SkipConv2d(4, 4, 3, padding=1, threshold=0.5)).eval()
    compiled = compile_model(model, (1, 4, 16, 16))
    program = compiled.program
    [layer] = program.layers
    assert program.tensors[layer.reference].shape == (4, 10, 10, 4)
    compiled.segments["poison_reference"] = SegmentArtifact("poison_reference", _PaddedTiles(5.0),
                                                            (example_tensor((1, 4, 16, 16)),))
    segment = program.add_segment("poison_reference", [program.inputs[0]], [layer.reference])
    program.emit(Op.RUN_SEGMENT, segment, NO_LAYER)
    program.validate()

    frame = torch.rand(1, 4, 16, 16) * 0.01  # a still frame: inside every tile, no residual
    interpreter = FrameProgramInterpreter(program, TorchSegments(compiled.segments))
    interpreter.reset()
    with NativeSession(plan_bytes(compiled), torch_callback_backend(program, compiled.segments)) as session:
        for t in range(3):
            want = interpreter.step(frame)
            got = session.step(to_nhwc(frame))
            np.testing.assert_allclose(from_physical(got).numpy(), want.numpy(), rtol=0, atol=1e-6)
            assert session.layer_decisions(0)[0].tolist() == [1, 1, 1, 1], f"frame {t}"
            assert interpreter.layer_decisions()[0] == [0, 1, 2, 3]



def test_change_driven_convolutions_follow_the_changes_through_an_upsampling(host_build):
    """A gated model whose strided shortcut and upsampling head are plain convolutions: the
    compiler gates them at threshold 0 (gating/change_driven.py) and the add + upsampling run
    tracks changes (NEAREST_UPSAMPLE), so the head scores only the blocks a change reaches.
    Threshold-0 decisions have no tie band: the native runtime must decide every block of those
    layers as the reference does (run_differential), and the head must skip blocks."""
    from dynexport.compiler.pipeline import compile_model
    from dynexport.gating.change_driven import make_change_driven
    from dynexport.plan.frame_program import RunFlag
    from tests.gating.test_change_driven import heatmap_like

    model, shape = heatmap_like(), (1, 3, 64, 80)
    compiled = compile_model(model, shape)
    assert compiled.change_driven == ["2.shortcut", "4"]
    program = compiled.program
    assert [ins.c for ins in program.instructions if ins.op == Op.RUN_SEGMENT and ins.c] == [
        int(RunFlag.NEAREST_UPSAMPLE)], "the residual add + upsampling is the one flagged run"
    frames = clip("small_objects", shape[2], shape[3], 14, seed=2, cuts=(9,))
    summary = run_differential(make_change_driven(model, compiled.change_driven), compiled, frames, (9,),
                               "change_driven")
    assert summary["skipped_blocks"] > 0 and "TILES" in summary["paths"]
