"""The ctypes binding and the C API's behaviour seen from Python: statuses and messages,
rejected frames, backend failures, tie decisions, tampered plans."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from dynexport.plan.frame_program import HEADER, FrameProgram
from dynexport.runtime import binding
from dynexport.runtime.binding import (
    CallbackBackend, LayerPath, NativeSession, RuntimeStatusError, Status, torch_callback_backend,
)
from dynexport.nn import SkipConv2d
from dynexport.compiler.pipeline import compile_model
from tests.runtime.runtime_models import REPO, clip, compiled_small, plan_bytes, to_nhwc

HEADER_FILE = REPO / "dynexport" / "runtime" / "include" / "dynrt.h"


def _enum_in_header(enum_name: str) -> dict[str, int]:
    text = HEADER_FILE.read_text()
    body = re.search(r"typedef enum %s \{(.*?)\} %s;" % (enum_name, enum_name), text, re.S).group(1)
    return {name: int(value) for name, value in re.findall(r"DYNRT_(\w+)\s*=\s*(\d+)", body)}


def test_status_enum_matches_the_header():
    # the header's enum is made from the status table (test_status_table.py checks that too)
    from tests.runtime.test_status_table import status_table

    assert {s.name: s.value for s in Status} == {name: code for name, code, _ in status_table()}


def test_layer_path_enum_matches_the_header():
    assert {f"PATH_{p.name}": p.value for p in LayerPath} == _enum_in_header("dynrt_layer_path")


def test_every_status_has_a_description(host_build):
    for status in Status:
        assert binding.status_string(status) not in ("", "unknown status")
    assert binding.status_string(12345) == "unknown status"


def test_missing_library_says_how_to_build_it(tmp_path):
    script = "from dynexport.runtime.binding import load_library\nload_library()\n"
    env = {"DYNEXPORT_RUNTIME_LIB": str(tmp_path / "libdynrt_host.so"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "RuntimeLibraryNotFound" in result.stderr and "make setup" in result.stderr, result.stderr


def _session(key="stride2_padding", backend=None):
    _, compiled = compiled_small(key)
    backend = backend or torch_callback_backend(compiled.program, compiled.segments)
    return compiled, NativeSession(plan_bytes(compiled), backend)


def _frames(count=6):
    return [to_nhwc(f[None]) for f in clip("mixed", 37, 45, count)]


def test_describe_and_lifetime(host_build):
    compiled, session = _session()
    info = session.describe()
    assert info["input_shape"] == (1, 37, 45, 3) and info["input_bytes"] == 4 * 37 * 45 * 3
    assert info["state_bytes"] == compiled.program.state_bytes() < info["arena_bytes"]
    with session:
        out = session.step(_frames(1)[0])
        assert out.shape == session.output_shape and np.isfinite(out).all()
        mask, channels = session.layer_decisions(0)
        assert mask.all(), "the first frame computes every block"
        assert (channels == 2).all()
    session.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        session.step(_frames(1)[0])


def test_rejected_frames_change_nothing(host_build):
    frames = _frames(4)
    _, a = _session()
    _, b = _session()
    with a, b:
        a.step(frames[0])
        b.step(frames[0])
        bad = frames[1].copy()
        bad.reshape(-1)[1234] = np.nan
        with pytest.raises(RuntimeStatusError) as error:
            a.step(bad)
        assert error.value.status == Status.NONFINITE_INPUT and "element 1234 " in error.value.message
        bad.reshape(-1)[1234] = -np.inf
        with pytest.raises(RuntimeStatusError, match="-Inf"):
            a.step(bad)
        with pytest.raises(RuntimeStatusError) as error:
            a.step(frames[1][:, :-1])
        assert error.value.status == Status.WRONG_BUFFER_SIZE
        with pytest.raises(TypeError):
            a.step(frames[1].astype(np.float64))
        for frame in frames[1:]:
            np.testing.assert_array_equal(a.step(frame), b.step(frame))
            for layer in range(len(a.program.layers)):
                np.testing.assert_array_equal(a.layer_decisions(layer)[0], b.layer_decisions(layer)[0])
        # finite values so large that the first gate's row sums overflow: the gate's frame check
        # flags them, the scan behind it finds nothing wrong, the frame is taken
        huge = np.full_like(frames[1], 3e38)
        np.testing.assert_array_equal(a.step(huge), b.step(huge))


def test_backend_exception_fails_the_frame_and_the_next_is_dense(host_build):
    _, compiled = compiled_small("depthwise_chain")
    torch_backend = torch_callback_backend(compiled.program, compiled.segments)
    calls = {"n": 0, "fail_at": None}

    def run(index, batch, inputs, outputs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise ZeroDivisionError("segment blew up")
        torch_backend.run(index, batch, inputs, outputs)

    frames = _frames(5)
    fresh_backend = torch_callback_backend(compiled.program, compiled.segments)
    with NativeSession(plan_bytes(compiled), CallbackBackend(run)) as session, \
            NativeSession(plan_bytes(compiled), fresh_backend) as fresh:
        session.step(frames[0])
        session.step(frames[1])
        calls["fail_at"] = calls["n"] + 2
        with pytest.raises(RuntimeStatusError) as error:
            session.step(frames[2])
        assert error.value.status == Status.BACKEND_ERROR
        assert any(f"({s.name})" in error.value.message for s in compiled.program.segments), error.value.message
        assert isinstance(error.value.__cause__, ZeroDivisionError)
        out = session.step(frames[3])
        for layer in session.last_stats["layers"]:
            assert layer["active_blocks"] == layer["total_blocks"], "the frame after a failure must be dense"
        np.testing.assert_allclose(out, fresh.step(frames[3]), atol=1e-6)


def _counting_backend(compiled):
    torch_backend = torch_callback_backend(compiled.program, compiled.segments)
    calls = []

    def run(index, batch, inputs, outputs):
        calls.append(index)
        torch_backend.run(index, batch, inputs, outputs)

    return CallbackBackend(run), calls


@pytest.mark.parametrize("key", ["depthwise_chain", "dstep"])
def test_an_unchanged_frame_runs_no_segment_whose_inputs_did_not_change(host_build, key):
    _, compiled = compiled_small(key)
    backend, calls = _counting_backend(compiled)
    frames = _frames(3)
    with NativeSession(plan_bytes(compiled), backend) as session:
        first = session.step(frames[0])
        first_calls = list(calls)
        calls.clear()
        again = session.step(frames[0])
        np.testing.assert_array_equal(again, first)
        stats = session.last_stats
        if key == "depthwise_chain":  # every layer reuses its output: nothing downstream changed
            # (its ReLUs run fused into the gated layers' segments: no segment is even reached)
            assert all(layer["path"] == LayerPath.REUSE for layer in stats["layers"])
            assert calls == [] and not any(stats["segment_ns"])
            # and the gates after the first see an unchanged input: settled without scoring
            assert [layer["executed_macs"] for layer in stats["layers"][1:]] == [0] * (len(stats["layers"]) - 1)
            assert stats["layers"][0]["executed_macs"] > 0, "the first gate reads the frame: it scores"
        else:  # D-STEP's channel policy compares with the previous pooled input, which the
            # first frame changed (state): its segment runs once more, then nothing does
            session.step(frames[0])
            calls.clear()
            np.testing.assert_array_equal(session.step(frames[0]), first)
            assert calls == [] and session.last_stats["segments_reused"] > 0
        # (that reused results are right on changing clips: the differential tests, vs the interpreter)
        session.reset()
        calls.clear()
        session.step(frames[0])
        assert calls == first_calls, "after a reset, no result is reused"


def test_an_unaligned_frame_gives_the_same_result(host_build):
    frames = _frames(3)
    _, aligned = _session()
    _, unaligned = _session()
    with aligned, unaligned:
        for frame in frames:
            storage = np.zeros(frame.nbytes + 1, np.uint8)
            shifted = np.frombuffer(storage.data, np.uint8, frame.nbytes, 1).view(np.float32).reshape(frame.shape)
            shifted[...] = frame
            assert shifted.ctypes.data % 4 != 0
            np.testing.assert_array_equal(unaligned.step(shifted), aligned.step(frame))


def test_tie_band_takes_the_imposed_decision_for_one_step(host_build):
    # a gumbel gate whose zero-residual score (-softplus(0) = -ln 2) is its threshold
    # (probability sigmoid(-ln 2) = 1/3) and a frame that does not change: every block a tie
    torch.manual_seed(0)
    model = torch.nn.Sequential(SkipConv2d(3, 4, 3, padding=1, block=4, gate="gumbel", threshold=1 / 3)).eval()
    compiled = compile_model(model, (1, 3, 16, 20))
    blocks = compiled.program.layers[0].grid.num_blocks
    frame = to_nhwc(torch.rand(1, 3, 16, 20))
    with NativeSession(compiled.program.to_bytes(),
                       torch_callback_backend(compiled.program, compiled.segments)) as session:
        session.step(frame)
        session.step(frame)
        assert session.last_stats["layers"][0]["ties"] == blocks
        assert not session.layer_decisions(0)[0].any(), "-ln 2 > -ln 2 is false: no block computes on its own"
        imposed = np.arange(blocks) % 3 == 0
        session.set_tie_decisions(0, imposed)
        session.step(frame)
        np.testing.assert_array_equal(session.layer_decisions(0)[0], imposed)
        session.step(frame)
        assert not session.layer_decisions(0)[0].any(), "an imposed mask applies to one step only"
        with pytest.raises(RuntimeStatusError) as error:
            session.set_tie_decisions(0, imposed[:-1])
        assert error.value.status == Status.WRONG_BUFFER_SIZE


def test_a_norm_gate_at_threshold_0_decides_exactly(host_build):
    """No tie band at threshold 0 (dynrt.h): an unchanged frame scores every block exactly 0,
    inactive and no tie, and a change of one value computes exactly the blocks whose tiles read
    it, however small the change."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(SkipConv2d(3, 4, 3, padding=1, block=4, gate="input_norm", threshold=0.0)).eval()
    compiled = compile_model(model, (1, 3, 16, 20))
    frame = torch.rand(1, 3, 16, 20)
    with NativeSession(compiled.program.to_bytes(),
                       torch_callback_backend(compiled.program, compiled.segments)) as session:
        session.step(to_nhwc(frame))
        session.step(to_nhwc(frame))
        assert session.last_stats["layers"][0]["ties"] == 0
        assert not session.layer_decisions(0)[0].any()
        moved = frame.clone()
        moved[0, 1, 5, 8] = torch.nextafter(moved[0, 1, 5, 8], torch.tensor(2.0))  # one ulp
        session.step(to_nhwc(moved))
        # row 5, column 8 of a 4x5 grid of 4x4 blocks with a 1-pixel halo: blocks (1, 2) and (1, 1)
        assert np.flatnonzero(session.layer_decisions(0)[0]).tolist() == [6, 7]
        assert session.last_stats["layers"][0]["ties"] == 0


def _reseal(plan: bytes) -> bytes:
    magic, major, minor, size, _ = HEADER.unpack_from(plan, 0)
    payload = plan[HEADER.size:]
    return HEADER.pack(magic, major, minor, len(payload), zlib.crc32(payload)) + payload


def _layer_offset(program: FrameProgram, layer: int) -> int:
    counts = 40
    from dynexport.plan.frame_program import Layer, Segment, Tensor
    return (HEADER.size + counts + len(program.tensors) * Tensor.FORMAT.size
            + len(program.segments) * Segment.FORMAT.size + layer * Layer.FORMAT.size)


def _jump(program: FrameProgram):
    from dynexport.plan.frame_program import Op
    return next(ins for ins in program.instructions if ins.op == Op.JUMP)


def _set_run_flags(plan: bytes, program: FrameProgram, tiles: bool, flags: int) -> bytes:
    """The plan with c = flags on its first RUN_SEGMENT of a tile (or a fixed) segment."""
    from dynexport.plan.frame_program import NO_LAYER, Instruction, Layer, Op
    pc = next(pc for pc, i in enumerate(program.instructions) if i.op == Op.RUN_SEGMENT and (i.b != NO_LAYER) == tiles)
    offset = _layer_offset(program, len(program.layers)) + pc * Instruction.FORMAT.size + 12  # field c
    assert Layer.FORMAT.size == 140 and plan[offset - 12:offset - 8] == struct.pack("<I", Op.RUN_SEGMENT)
    return _reseal(plan[:offset] + struct.pack("<I", flags) + plan[offset + 4:])


@pytest.mark.parametrize("tamper,status,words", [
    # RUN_SEGMENT flags (format 2.1): unknown bits, and a pointwise tile run
    (lambda p, prog: _set_run_flags(p, prog, False, 6), Status.PLAN_INVALID, ["unknown flags"]),
    (lambda p, prog: _set_run_flags(p, prog, True, 1), Status.PLAN_INVALID, ["pointwise", "tile segment"]),
    # RUN_NEAREST_UPSAMPLE (2.5): both flags at once, and a stride-2 dense run (its output is smaller)
    (lambda p, prog: _set_run_flags(p, prog, False, 3), Status.PLAN_INVALID, ["both as pointwise"]),
    (lambda p, prog: _set_run_flags(p, prog, False, 2), Status.PLAN_INVALID, ["nearest upsampling",
                                                                                "whole multiples"]),
])
def test_tampered_run_flags_are_refused_with_a_reason(host_build, tamper, status, words):
    test_tampered_plans_are_refused_with_a_reason(host_build, tamper, status, words)


@pytest.mark.parametrize("tamper,status,words", [
    (lambda p, prog: p[:-1], Status.PLAN_TRUNCATED, ["header says"]),
    (lambda p, prog: b"XXFP" + p[4:], Status.PLAN_BAD_MAGIC, ["magic"]),
    (lambda p, prog: p[:4] + struct.pack("<H", 9) + p[6:], Status.PLAN_VERSION, ["version 9"]),
    (lambda p, prog: p[:-1] + bytes([p[-1] ^ 1]), Status.PLAN_CHECKSUM, ["checksum"]),
    # the layer's block size 4 -> 5: its tensors no longer fit the grid (resealed: the validator must see it)
    (lambda p, prog: _reseal(p[:_layer_offset(prog, 0) + 52] + struct.pack("<I", 5) + p[_layer_offset(prog, 0) + 56:]),
     Status.PLAN_INVALID, ["layer", "needs"]),
    # a jump backwards
    (lambda p, prog: _reseal(p.replace(_jump(prog).pack(), struct.pack("<5I", 4, 0, 0, 0, 0))), Status.PLAN_INVALID,
     ["jumps back"]),
])
def test_tampered_plans_are_refused_with_a_reason(host_build, tamper, status, words):
    _, compiled = compiled_small("stride2_padding")
    program = compiled.program
    plan = tamper(plan_bytes(compiled), program)
    with pytest.raises(RuntimeStatusError) as error:
        NativeSession(plan, CallbackBackend(lambda *args: None))
    assert error.value.status == status, error.value.message
    for word in words:
        assert word in error.value.message, error.value.message


def _grouped(program, op, tiles=None):
    """The first instruction ``op`` (COPY_CHANNELS: of the tile path when tiles, else dense)."""
    from dynexport.plan.frame_program import NO_LAYER
    return next(i for i in program.instructions if i.op == op and (tiles is None or (i.d != NO_LAYER) == tiles))


@pytest.mark.parametrize("change,words", [
    # BRANCH_IF_GROUP_IDLE (format 2.2): channels past the layer's, an empty group, a skip-conv layer
    (lambda p, op: setattr(_grouped(p, op.BRANCH_IF_GROUP_IDLE), "d", 65), ["BRANCH_IF_GROUP_IDLE", "channels"]),
    (lambda p, op: setattr(_grouped(p, op.BRANCH_IF_GROUP_IDLE), "d", 0), ["BRANCH_IF_GROUP_IDLE"]),
    # COPY_CHANNELS (2.2): past the destination's channels, other map sizes, onto itself,
    # a missing batch layer, an int tensor, a tensor index out of range
    (lambda p, op: setattr(_grouped(p, op.COPY_CHANNELS, True), "c", 60), ["COPY_CHANNELS", "channels inside"]),
    (lambda p, op: setattr(_grouped(p, op.COPY_CHANNELS, True), "b", p.layers[0].dense_output),
     ["COPY_CHANNELS", "channels inside"]),
    (lambda p, op: setattr(_grouped(p, op.COPY_CHANNELS, False), "b", _grouped(p, op.COPY_CHANNELS, False).a),
     ["COPY_CHANNELS", "two different"]),
    (lambda p, op: setattr(_grouped(p, op.COPY_CHANNELS, True), "d", 3), ["COPY_CHANNELS", "batched by layer"]),
    (lambda p, op: setattr(_grouped(p, op.COPY_CHANNELS, True), "a", p.layers[0].decisions), ["float32 NHWC"]),
    (lambda p, op: setattr(_grouped(p, op.COPY_CHANNELS, True), "a", 10 ** 6), ["COPY_CHANNELS", "tensors"]),
])
def test_tampered_channel_groups_are_refused_with_a_reason(host_build, change, words):
    """The C validator refuses what FrameProgram.validate refuses in the channel-group
    instructions, with a reason (the plan is resealed so that only the validator sees it)."""
    _assert_both_validators_refuse("dstep_channel_groups", change, words)


def _assert_both_validators_refuse(key: str, change, words, python_too: bool = True) -> None:
    """``change(program, Op)`` on a copy of SMALL_MODELS[key]'s plan: the C validator refuses
    the result with a reason naming ``words`` (written unvalidated, so that only it sees the
    change), and so does FrameProgram.validate when ``python_too``."""
    import copy

    from dynexport.plan.frame_program import Op, PlanFormatError

    program = copy.deepcopy(compiled_small(key)[1].program)
    change(program, Op)
    if python_too:
        with pytest.raises(PlanFormatError):
            program.validate()
    program.validate = lambda: None
    with pytest.raises(RuntimeStatusError) as error:
        NativeSession(program.to_bytes(), CallbackBackend(lambda *args: None))
    assert error.value.status == Status.PLAN_INVALID, error.value.message
    for word in words:
        assert word in error.value.message, error.value.message


@pytest.mark.parametrize("change,words", [
    # BRANCH_IF_BUSY (format 2.3): a target past the end, and backwards
    (lambda p, op: setattr(_grouped(p, op.BRANCH_IF_BUSY), "b", len(p.instructions) + 1), ["BRANCH_IF_BUSY", "past the end"]),
    (lambda p, op: setattr(_grouped(p, op.BRANCH_IF_BUSY), "b", 0), ["BRANCH_IF_BUSY", "jumps back"]),
    (lambda p, op: setattr(_grouped(p, op.BRANCH_IF_BUSY), "a", 9), ["BRANCH_IF_BUSY", "layer"]),
    # FORGET_LAYERS (2.3): no layer, past the last one, a first layer out of range
    (lambda p, op: setattr(_grouped(p, op.FORGET_LAYERS), "b", 0), ["FORGET_LAYERS", "skip-conv layers"]),
    (lambda p, op: setattr(_grouped(p, op.FORGET_LAYERS), "b", len(p.layers)), ["FORGET_LAYERS", "skip-conv layers"]),
    (lambda p, op: setattr(_grouped(p, op.FORGET_LAYERS), "a", 2 ** 32 - 1), ["FORGET_LAYERS"]),
])
def test_tampered_dense_fallback_is_refused_with_a_reason(host_build, change, words):
    """As for the channel groups: what FrameProgram.validate refuses in the dense fallback's
    instructions, the C validator refuses with a reason (a backward jump: the C one only, as the
    Python reader does not order jumps)."""
    _assert_both_validators_refuse("depthwise_chain_dense_fallback", change, words,
                                   python_too="jumps back" not in words)


@pytest.mark.parametrize("change,words", [
    # BRANCH_IF_HOLDING (format 2.4): a target past the end, backwards, a layer out of range
    (lambda p, op: setattr(_grouped(p, op.BRANCH_IF_HOLDING), "b", len(p.instructions) + 1),
     ["BRANCH_IF_HOLDING", "past the end"]),
    (lambda p, op: setattr(_grouped(p, op.BRANCH_IF_HOLDING), "b", 0), ["BRANCH_IF_HOLDING", "jumps back"]),
    (lambda p, op: setattr(_grouped(p, op.BRANCH_IF_HOLDING), "a", 9), ["BRANCH_IF_HOLDING", "layer"]),
])
def test_tampered_dense_fallback_hold_is_refused_with_a_reason(host_build, change, words):
    _assert_both_validators_refuse("residual_norm_dense_fallback_hold", change, words,
                                   python_too="jumps back" not in words)


def test_the_native_validator_is_at_least_as_strict_as_the_python_reader(host_build):
    """Random single-byte changes (checksum resealed): whatever FrameProgram.from_bytes
    refuses, the runtime refuses too; the runtime may refuse more (its C-only checks)."""
    import random

    from dynexport.plan.frame_program import PlanFormatError

    rng = random.Random(0)
    counts = {"both accept": 0, "both refuse": 0, "only the runtime refuses": 0}
    backend = CallbackBackend(lambda *args: None)
    for key in ("residual_gumbel", "dstep", "grids_9_4_1_blocks", "dstep_channel_groups"):
        plan = plan_bytes(compiled_small(key)[1])
        for _ in range(150):
            data = bytearray(plan)
            position = rng.randrange(HEADER.size, len(data))
            data[position] ^= rng.choice([0x01, 0x02, 0x10, 0x80, 0xFF])
            data = _reseal(bytes(data))
            try:
                FrameProgram.from_bytes(data)
                python_accepts = True
            except PlanFormatError:
                python_accepts = False
            try:
                NativeSession(data, backend).close()
                native_accepts = True
            except RuntimeStatusError as error:
                assert error.status in (Status.PLAN_INVALID, Status.OUT_OF_MEMORY), error
                native_accepts = False
            assert python_accepts or not native_accepts, \
                f"{key}: byte {position} changed: the Python reader refuses the plan, the runtime accepts it"
            counts["both accept" if native_accepts else "both refuse" if not python_accepts
                   else "only the runtime refuses"] += 1
    backend.close()
    print(counts)
    assert counts["both accept"] > 0 and counts["both refuse"] > 0


@pytest.mark.parametrize("destroy_first", [0, 1])
def test_two_sessions_on_one_callback_backend_match_lone_sessions(host_build, destroy_first):
    """Two sessions on ONE callback backend, each on its own clip, the second created while
    the first runs and either destroyed first: every output is a lone session's."""
    _, compiled = compiled_small("residual_gumbel")
    clips = [_frames(6), _frames(6)[::-1]]

    def lone(frames):
        with NativeSession(plan_bytes(compiled), torch_callback_backend(compiled.program, compiled.segments)) as s:
            return [s.step(frame) for frame in frames]

    expected = [lone(frames) for frames in clips]
    shared = torch_callback_backend(compiled.program, compiled.segments)
    sessions = [NativeSession(plan_bytes(compiled), shared)]
    got = [[sessions[0].step(clips[0][0])], []]
    sessions.append(NativeSession(plan_bytes(compiled), shared))
    for t in range(1, 3):
        got[0].append(sessions[0].step(clips[0][t]))
        got[1].append(sessions[1].step(clips[1][t - 1]))
    sessions[destroy_first].close()
    alive = 1 - destroy_first
    for t in range(len(got[alive]), 6):
        got[alive].append(sessions[alive].step(clips[alive][t]))
    sessions[alive].close()
    for clip_index in (0, 1):
        for t, output in enumerate(got[clip_index]):
            np.testing.assert_array_equal(output, expected[clip_index][t], err_msg=f"clip {clip_index} frame {t}")
    assert len(got[alive]) == 6
    shared.close()
