"""The plan file format: round trip, and every kind of damage rejected with PlanFormatError
(never another exception, never a silent success)."""

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.plan.frame_program import (
    HEADER, NO_LAYER, VERSION, NO_TENSOR, DType, FrameProgram, Layer, Op, PlanFormatError, Role,
)


def small_program() -> FrameProgram:
    p = FrameProgram()
    x = p.add_tensor("input", (1, 16, 16, 3), Role.INPUT)
    y = p.add_tensor("layer.output", (1, 16, 16, 4), Role.STATE)
    ref = p.add_tensor("layer.reference", (4, 10, 10, 3), Role.STATE)
    tiles = p.add_tensor("layer.tiles", (2, 10, 10, 3), Role.SCRATCH)
    tile_out = p.add_tensor("layer.tile_output", (2, 8, 8, 4), Role.SCRATCH)
    dense = p.add_tensor("layer.dense_output", (1, 16, 16, 4), Role.SCRATCH)
    primed = p.add_tensor("layer.primed", (1,), Role.STATE)
    active = p.add_tensor("layer.active", (5,), Role.SCRATCH, DType.INT32)
    weights = p.add_constants([0.5] * 27)
    p.layers.append(Layer("layer", input_size=(16, 16), kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                          dilation=(1, 1), block=8, in_channels=3, out_channels=4, dense_cutoff=2,
                          threshold=0.25, gate=2, gate_weight=weights, gate_weight_count=27, gate_bias=-0.5,
                          input=x, output=y, reference=ref, tiles=tiles, tile_output=tile_out,
                          dense_output=dense, primed=primed, active=active))
    tile_seg = p.add_segment("layer_tiles", [tiles], [tile_out], max_batch=2)
    dense_seg = p.add_segment("layer_dense", [x], [dense])
    p.emit(Op.SKIP_GATE, 0)
    p.emit(Op.BRANCH_IF_NONE, 0, 10)
    p.emit(Op.BRANCH_IF_DENSE, 0, 8)
    p.emit(Op.GATHER_TILES, 0)
    p.emit(Op.RUN_SEGMENT, tile_seg, 0)
    p.emit(Op.SCATTER_TILES, 0)
    p.emit(Op.STORE_REFERENCE, 0)
    p.emit(Op.JUMP, 10)
    p.emit(Op.RUN_SEGMENT, dense_seg, NO_LAYER)
    p.emit(Op.COPY_BLOCKS, 0)
    p.inputs, p.outputs = [x], [y]
    return p


def test_round_trip_keeps_everything():
    program = small_program()
    data = program.to_bytes()
    again = FrameProgram.from_bytes(data)
    assert again.to_bytes() == data
    assert [t.name for t in again.tensors] == [t.name for t in program.tensors]
    assert again.layers[0].grid.blocks == (2, 2)
    assert again.instructions == program.instructions
    assert again.constants == [0.5] * 27
    assert again.state_bytes() == 4 * (16 * 16 * 4 + 4 * 10 * 10 * 3 + 1)


def test_truncation_at_every_length_is_rejected():
    data = small_program().to_bytes()
    for length in range(0, len(data), 7):
        with pytest.raises(PlanFormatError):
            FrameProgram.from_bytes(data[:length])


def test_any_flipped_byte_is_rejected():
    data = small_program().to_bytes()
    for position in range(0, len(data), 5):
        damaged = bytearray(data)
        damaged[position] ^= 0x41
        with pytest.raises(PlanFormatError):
            FrameProgram.from_bytes(bytes(damaged))


def _reseal(payload: bytes) -> bytes:
    """A tampered payload with a valid checksum: validation must still catch it."""
    return HEADER.pack(b"DXFP", *VERSION, len(payload), zlib.crc32(payload)) + payload


def _payload(program: FrameProgram) -> bytearray:
    return bytearray(program.to_bytes()[HEADER.size:])


@pytest.mark.parametrize("field, value, message", [
    ("input", 99, "tensor 99"),
    ("active", NO_TENSOR, "tensor"),
    ("block", 0, "block grid"),
    ("gate_weight_count", 10_000, "gate weights"),
])
def test_resealed_out_of_range_layer_fields_are_rejected(field, value, message):
    program = small_program()
    setattr(program.layers[0], field, value)
    payload = bytearray()
    # serialize without the writer's own validation, as an attacker would
    program.validate = lambda: None
    payload = program.to_bytes()[HEADER.size:]
    with pytest.raises(PlanFormatError, match=message):
        FrameProgram.from_bytes(_reseal(payload))


def test_resealed_bad_jump_and_opcode_are_rejected():
    for change in ({"op": 99}, {"op": Op.JUMP, "a": 1000}, {"op": Op.RUN_SEGMENT, "a": 7}):
        program = small_program()
        for key, value in change.items():
            setattr(program.instructions[3], key, value)
        program.validate = lambda: None
        with pytest.raises(PlanFormatError):
            FrameProgram.from_bytes(_reseal(program.to_bytes()[HEADER.size:]))


def test_wrong_magic_and_version():
    data = bytearray(small_program().to_bytes())
    with pytest.raises(PlanFormatError, match="magic"):
        FrameProgram.from_bytes(b"XXXX" + bytes(data[4:]))
    struct.pack_into("<H", data, 4, 7)
    with pytest.raises(PlanFormatError, match="version 7"):
        FrameProgram.from_bytes(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_never_crash_the_reader(blob, sealed):
    data = _reseal(blob) if sealed else blob
    try:
        FrameProgram.from_bytes(data)
    except PlanFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_resealed_mutations_are_rejected_or_valid(mutations):
    payload = _payload(small_program())
    for position, value in mutations:
        payload[position % len(payload)] = value
    try:
        program = FrameProgram.from_bytes(_reseal(bytes(payload)))
    except PlanFormatError:
        return
    program.validate()  # whatever was accepted is internally consistent


def test_artifact_table_and_layer_macs_round_trip():
    from dynexport.plan.frame_program import Artifact

    program = small_program()
    program.layers[0].macs_per_position = 108
    program.layers[0].gate_macs_per_position = 27
    program.artifacts = [Artifact("executorch", 1234, 0xDEADBEEF)]
    again = FrameProgram.from_bytes(program.to_bytes())
    assert again.artifacts == [Artifact("executorch", 1234, 0xDEADBEEF)]
    assert (again.layers[0].macs_per_position, again.layers[0].gate_macs_per_position) == (108, 27)


def test_run_flags_round_trip_and_are_checked():
    """RUN_SEGMENT's c holds RunFlag hints (format 2.1): POINTWISE round-trips on a fixed
    segment over maps of one size; unknown bits, a pointwise tile run and a pointwise run over
    maps of different sizes are refused; a 2.0 header still reads (the hint is optional)."""
    from dynexport.plan.frame_program import RunFlag

    assert VERSION[0] == 2 and VERSION >= (2, 1)
    program = small_program()
    dense_run = next(i for i in program.instructions if i.op == Op.RUN_SEGMENT and i.b == NO_LAYER)
    dense_run.c = int(RunFlag.POINTWISE)  # input [1,16,16,3] -> dense_output [1,16,16,4]
    data = program.to_bytes()
    assert FrameProgram.from_bytes(data).instructions == program.instructions
    older = bytearray(data)
    struct.pack_into("<H", older, 6, 0)
    assert FrameProgram.from_bytes(bytes(older)).instructions == program.instructions
    # NEAREST_UPSAMPLE (2.5): outputs a whole multiple of the inputs, 16x16 -> 32x48
    program = small_program()
    _resize_dense_output(program, RunFlag.NEAREST_UPSAMPLE, (1, 32, 48, 4))
    assert FrameProgram.from_bytes(program.to_bytes()).instructions == program.instructions

    for change, message in ((lambda p: setattr(_dense_run(p), "c", 4), "unknown flags"),
                            (lambda p: setattr(_tile_run(p), "c", 1), "tile segment"),
                            (lambda p: _resize_dense_output(p), "different sizes"),
                            (lambda p: _resize_dense_output(p, RunFlag.NEAREST_UPSAMPLE, (1, 24, 20, 4)),
                             "outputs whole multiples"),
                            (lambda p: setattr(_dense_run(p), "c", 3), "both as pointwise")):
        program = small_program()
        change(program)
        program.validate = lambda: None
        with pytest.raises(PlanFormatError, match=message):
            FrameProgram.from_bytes(_reseal(program.to_bytes()[HEADER.size:]))


def _dense_run(program):
    return next(i for i in program.instructions if i.op == Op.RUN_SEGMENT and i.b == NO_LAYER)


def _tile_run(program):
    return next(i for i in program.instructions if i.op == Op.RUN_SEGMENT and i.b != NO_LAYER)


def _resize_dense_output(program, flag=None, dims=(1, 8, 8, 4)):
    from dynexport.plan.frame_program import RunFlag

    _dense_run(program).c = int(RunFlag.POINTWISE if flag is None else flag)
    program.add_tensor("other", dims, Role.SCRATCH)
    segment = program.segments[_dense_run(program).a]
    program.operands[segment.output_begin] = len(program.tensors) - 1


def _dstep_group_program():
    """A compiled D-STEP layer of 32 output channels: two channel groups (lower_dstep; at
    64x64 each group's dense convolution is worth its call: MIN_GROUP_DENSE_MACS)."""
    from torch import nn

    from dynexport.compiler.pipeline import compile_model
    from dynexport.nn import DStepConv2d

    return compile_model(nn.Sequential(DStepConv2d(3, 32, 3, padding=1, patch=4)).eval(), (1, 3, 64, 64)).program


def test_channel_group_instructions_round_trip_and_are_checked():
    """BRANCH_IF_GROUP_IDLE and COPY_CHANNELS (format 2.2) round-trip; a group past the
    layer's channels, a copy past the destination's channels, between maps of other sizes,
    onto itself or batched by a missing layer are refused."""
    assert VERSION >= (2, 2)
    program = _dstep_group_program()
    ops = [Op(i.op) for i in program.instructions]
    assert Op.BRANCH_IF_GROUP_IDLE in ops and Op.COPY_CHANNELS in ops
    assert FrameProgram.from_bytes(program.to_bytes()).instructions == program.instructions

    def first(p, op):
        return next(i for i in p.instructions if i.op == op)

    def tile_copy(p):
        return next(i for i in p.instructions if i.op == Op.COPY_CHANNELS and i.d != NO_LAYER)

    for change, message in ((lambda p: setattr(first(p, Op.BRANCH_IF_GROUP_IDLE), "d", 33), "BRANCH_IF_GROUP_IDLE"),
                            (lambda p: setattr(first(p, Op.BRANCH_IF_GROUP_IDLE), "d", 0), "BRANCH_IF_GROUP_IDLE"),
                            (lambda p: setattr(tile_copy(p), "c", 20), "channels inside"),
                            (lambda p: setattr(tile_copy(p), "b", p.layers[0].dense_output), "channels inside"),
                            (lambda p: setattr(tile_copy(p), "b", tile_copy(p).a), "two different"),
                            (lambda p: setattr(tile_copy(p), "d", 7), "batched by layer"),
                            (lambda p: setattr(tile_copy(p), "a", p.layers[0].decisions), "float32 NHWC")):
        program = _dstep_group_program()
        change(program)
        program.validate = lambda: None
        with pytest.raises(PlanFormatError, match=message):
            FrameProgram.from_bytes(_reseal(program.to_bytes()[HEADER.size:]))
