"""The frame program: dynexport's target-independent plan, and its binary file format.

A frame program says what the runtime does for one frame: which backend segments to run,
over which tensors, and the control flow around the gated layers (gate evaluation, block
lists, branches, gather/scatter of tiles). Tensors have a role: ``input`` / ``output`` (the
caller's frame and result), ``state`` (lives from frame to frame), ``scratch`` (lives within
one frame). Every 4-D tensor is stored NHWC; ``dims`` are the physical dims.

Binary format (little-endian; one place, mirrored by the C parser)::

    header   magic "DXFP" | u16 major | u16 minor | u32 payload_bytes | u32 crc32(payload)
    payload  u32 counts[10]  (tensors, segments, layers, instructions, artifacts, operands,
                              inputs, outputs, string_bytes, constant_bytes)
             TensorRecord[tensors]      Tensor.FORMAT
             SegmentRecord[segments]    Segment.FORMAT
             LayerRecord[layers]        Layer.FORMAT
             InstructionRecord[instructions]  Instruction.FORMAT
             ArtifactRecord[artifacts]  Artifact.FORMAT (backend name, size, CRC32 of its file)
             u32 operands[operands]     (segment input/output tensor ids, sliced by begin/count)
             u32 inputs[inputs]         u32 outputs[outputs]   (tensor ids)
             strings (NUL-terminated UTF-8, referenced by byte offset)
             padding to 4 bytes, then constants (float32, referenced by element offset)

The reader checks magic, version, sizes and checksum, then every index and size against the
tables it has read: a truncated or tampered plan is an error, never an out-of-range read.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib
from typing import ClassVar

MAGIC = b"DXFP"
# 2.0: per-layer MACs, artifact table; 2.1: RUN_SEGMENT flags (c), RUN_POINTWISE;
# 2.2: D-STEP channel groups (BRANCH_IF_GROUP_IDLE, COPY_CHANNELS), a D-STEP layer's
# gate_macs_per_position holds its policies' MACs per frame; 2.3: the dense fallback
# (BRANCH_IF_BUSY, FORGET_LAYERS); 2.4: a held fallback skips the first gate (BRANCH_IF_HOLDING),
# D-STEP policies computed by the runtime (DSTEP_POLICY, weights in constants: plan/dstep_policy.py);
# 2.5: RUN_NEAREST_UPSAMPLE
VERSION = (2, 5)
HEADER = struct.Struct("<4sHHII")


class PlanFormatError(ValueError):
    """The plan bytes are not a valid frame program of a version we read."""


class DType(enum.IntEnum):
    FLOAT32 = 0
    INT32 = 1


class Layout(enum.IntEnum):
    NHWC = 0  # a 4-D activation; dims are [N, H, W, C]
    PLAIN = 1  # any other rank, row-major


class Role(enum.IntEnum):
    INPUT = 0
    OUTPUT = 1
    STATE = 2
    SCRATCH = 3


class LayerKind(enum.IntEnum):
    SKIP_CONV = 0
    DSTEP = 1


class GateKind(enum.IntEnum):
    INPUT_NORM = 0
    OUTPUT_NORM = 1
    GUMBEL = 2
    DSTEP_POLICY = 3


class Op(enum.IntEnum):
    """Instructions. Operands a, b, c, d; unused ones are 0."""

    RUN_SEGMENT = 0  # a=segment; b=layer whose active count is the batch (tile segments), else NO_LAYER; c=RunFlag
    SKIP_GATE = 1  # a=layer: score blocks of layer.input against layer.reference -> active list
    BRANCH_IF_NONE = 2  # a=layer, b=target pc: jump when the layer's active count is 0
    BRANCH_IF_DENSE = 3  # a=layer, b=target pc: jump when the active count is above layer.dense_cutoff
    JUMP = 4  # a=target pc
    GATHER_TILES = 5  # a=layer: packed tiles [K, th, tw, C] of active blocks from layer.input -> layer.tiles
    SCATTER_TILES = 6  # a=layer: layer.tile_output [K, b, b, Co] -> active blocks of layer.output
    COPY_BLOCKS = 7  # a=layer: active blocks of layer.dense_output -> layer.output
    STORE_REFERENCE = 8  # a=layer: tiles of active blocks from layer.input -> layer.reference
    DSTEP_DECIDE = 9  # a=layer: patch + channel decisions from the policy logits -> active list
    DSTEP_APPLY = 10  # a=layer, b=source (0 none, 1 tiles, 2 dense): write layer.output per decision
    COPY_TENSOR = 11  # a=src tensor, b=dst tensor (same byte size)
    # a=layer, b=target pc, c=first channel, d=channel count: jump when none of the D-STEP
    # layer's output channels [c, c + d) computes this frame (2.2)
    BRANCH_IF_GROUP_IDLE = 12
    # a=src tensor [N, H, W, Cs], b=dst tensor [N, H, W, Cd] (float32 NHWC), c=first channel,
    # d=layer whose active count is the batch, or NO_LAYER (all N): dst[:n, ..., c:c + Cs] = src[:n] (2.2)
    COPY_CHANNELS = 13
    # a=layer, b=target pc, c=count, d=hold: jump when the layer's active count is above c, or
    # when this jump was taken on one of the last d frames for that reason (2.3)
    BRANCH_IF_BUSY = 14
    # a=first layer, b=layer count: skip-conv layers [a, a + b) were computed outside their
    # instructions (the dense fallback segment): every block counts as computed this frame and
    # the layer is unprimed, as its state was not kept: its next frame is computed densely (2.3)
    FORGET_LAYERS = 15
    # a=skip-conv layer, b=target pc: while BRANCH_IF_BUSY's hold has frames left, takes one
    # off, counts every block of the layer active without scoring it (computed and stored as
    # on an unprimed layer: its first frame) and jumps (2.4)
    BRANCH_IF_HOLDING = 16
    # a=D-STEP layer, b=pooled tensor [1, Cin] (written), c=previous pooled [1, Cin] (read):
    # the layer's policies on layer.input -> its spatial / channel logits and the pooled
    # input, weights at layer.gate_weight (plan/dstep_policy.py) (2.4)
    DSTEP_POLICY = 17


class RunFlag(enum.IntFlag):
    """RUN_SEGMENT's c. Hints about a segment that leave the program's semantics unchanged
    (a 2.0 reader ignores them and computes the same): the runtime uses them for speed."""

    POINTWISE = 1  # pointwise in space: each output pixel depends only on the same pixel of the inputs
    # pointwise ops and a nearest upsampling by whole factors fy x fx (the outputs' size over the
    # inputs'): output pixel (y, x) depends only on input pixel (y // fy, x // fx) (2.5)
    NEAREST_UPSAMPLE = 2


KNOWN_RUN_FLAGS = int(RunFlag.POINTWISE | RunFlag.NEAREST_UPSAMPLE)
NO_LAYER = 0xFFFFFFFF
DSTEP_SOURCE_NONE, DSTEP_SOURCE_TILES, DSTEP_SOURCE_DENSE = 0, 1, 2
NO_TENSOR = 0xFFFFFFFF


class _Record:
    """A fixed-size little-endian record described once by its dataclass fields and FORMAT."""

    FORMAT: ClassVar[struct.Struct]  # fields in dataclass order; tuple fields take len(default) slots

    def pack(self) -> bytes:
        values = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            values.extend(value if isinstance(value, (tuple, list)) else [value])
        return self.FORMAT.pack(*values)

    @classmethod
    def unpack(cls, data: bytes, offset: int):
        raw = list(cls.FORMAT.unpack_from(data, offset))
        kwargs = {}
        for field in dataclasses.fields(cls):
            width = len(field.default) if isinstance(field.default, tuple) else 1
            chunk, raw = raw[:width], raw[width:]
            kwargs[field.name] = tuple(chunk) if width > 1 else chunk[0]
        return cls(**kwargs)


@dataclasses.dataclass
class Tensor(_Record):
    name: str | int = ""
    dtype: int = DType.FLOAT32
    layout: int = Layout.NHWC
    role: int = Role.SCRATCH
    rank: int = 4
    dims: tuple = (0, 0, 0, 0)

    FORMAT: ClassVar = struct.Struct("<IBBBB4I")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dims[: self.rank])

    @property
    def elements(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count

    @property
    def nbytes(self) -> int:
        return 4 * self.elements


@dataclasses.dataclass
class Segment(_Record):
    """One backend entry point. ``max_batch`` > 0 marks a tile segment: its first input and
    output have a batch dimension that varies from 1 to max_batch per call."""

    name: str | int = ""
    input_begin: int = 0
    input_count: int = 0
    output_begin: int = 0
    output_count: int = 0
    max_batch: int = 0

    FORMAT: ClassVar = struct.Struct("<6I")


@dataclasses.dataclass
class Layer(_Record):
    """A gated layer: its block grid, gate and the tensors its instructions work on."""

    name: str | int = ""
    kind: int = LayerKind.SKIP_CONV
    gate: int = GateKind.INPUT_NORM
    input_size: tuple = (0, 0)
    kernel: tuple = (0, 0)
    stride: tuple = (0, 0)
    padding: tuple = (0, 0)
    dilation: tuple = (0, 0)
    block: int = 0
    in_channels: int = 0
    out_channels: int = 0
    dense_cutoff: int = 0  # above this many active blocks the dense segment runs
    threshold: float = 0.0  # in score units (gumbel: a logit)
    norm_scale: float = 1.0  # output_norm: max_o ||w_o||_2 of the original kernel
    gate_bias: float = 0.0  # gumbel: the (negative) bias added to the gate score
    gate_weight: int = 0  # constants offset of the gumbel gate kernel [kh, kw, C] (float32)
    gate_weight_count: int = 0
    input: int = NO_TENSOR
    output: int = NO_TENSOR  # state: the layer's output, kept between frames
    reference: int = NO_TENSOR  # state: skip conv reference tiles [blocks, th, tw, C]
    tiles: int = NO_TENSOR  # scratch [max_batch, th, tw, C]
    tile_output: int = NO_TENSOR  # scratch [max_batch, b, b, Co]
    dense_output: int = NO_TENSOR  # scratch [1, Ho, Wo, Co]
    primed: int = NO_TENSOR  # state: int32 [1], 0 after reset
    spatial_logits: int = NO_TENSOR  # D-STEP: [1, rows, cols, 2] or NO_TENSOR
    channel_logits: int = NO_TENSOR  # D-STEP: [1, Co, 3] or NO_TENSOR
    decisions: int = NO_TENSOR  # D-STEP scratch int32 [Co]: 0 skip, 1 reuse, 2 compute
    active: int = NO_TENSOR  # scratch int32 [blocks + 1]: count, then active block indices
    macs_per_position: int = 0  # the convolution's MACs per output position (all out channels)
    # skip conv: the gate's MACs per output position of a scored block; D-STEP: the policies'
    # MACs per frame (2.2; 0 in older plans)
    gate_macs_per_position: int = 0

    FORMAT: ClassVar = struct.Struct("<3I10I4I3f2I11I2I")

    @property
    def decides_on_any_change(self) -> bool:
        """A norm gate at threshold 0 (the compiler's change-driven convolutions): it computes
        the blocks whose input changed at all, so which blocks those are depends on rounding in
        the layers before it (a tile and a dense convolution of one input may differ in the
        last bit). Its outputs, not its decisions, are what a run is compared on."""
        return self.kind == LayerKind.SKIP_CONV and self.gate != GateKind.GUMBEL and self.threshold == 0.0

    @property
    def grid(self):
        from dynexport.nn.block_grid import BlockGrid

        return BlockGrid(tuple(self.input_size), tuple(self.kernel), tuple(self.stride),
                         tuple(self.padding), tuple(self.dilation), self.block)


@dataclasses.dataclass
class Instruction(_Record):
    op: int = Op.JUMP
    a: int = 0
    b: int = 0
    c: int = 0
    d: int = 0

    FORMAT: ClassVar = struct.Struct("<5I")


@dataclasses.dataclass
class Artifact(_Record):
    """The backend artifact a plan was built with: a runtime refuses another one."""

    name: str | int = ""  # backend name, e.g. "executorch"
    size: int = 0
    crc32: int = 0

    FORMAT: ClassVar = struct.Struct("<3I")


COUNTS = struct.Struct("<10I")


@dataclasses.dataclass
class FrameProgram:
    tensors: list[Tensor] = dataclasses.field(default_factory=list)
    segments: list[Segment] = dataclasses.field(default_factory=list)
    layers: list[Layer] = dataclasses.field(default_factory=list)
    instructions: list[Instruction] = dataclasses.field(default_factory=list)
    artifacts: list[Artifact] = dataclasses.field(default_factory=list)
    operands: list[int] = dataclasses.field(default_factory=list)
    inputs: list[int] = dataclasses.field(default_factory=list)
    outputs: list[int] = dataclasses.field(default_factory=list)
    constants: list[float] = dataclasses.field(default_factory=list)

    # -- building -------------------------------------------------------------------------
    def add_tensor(self, name: str, shape, role: Role, dtype: DType = DType.FLOAT32) -> int:
        shape = tuple(int(d) for d in shape)
        if len(shape) > 4:
            raise ValueError(f"tensor {name}: rank {len(shape)} > 4 is not supported in a frame program")
        layout = Layout.NHWC if len(shape) == 4 else Layout.PLAIN
        self.tensors.append(Tensor(name, dtype, layout, role, len(shape), shape + (0,) * (4 - len(shape))))
        return len(self.tensors) - 1

    def add_segment(self, name: str, inputs: list[int], outputs: list[int], max_batch: int = 0) -> int:
        begin = len(self.operands)
        self.operands.extend(inputs)
        self.operands.extend(outputs)
        self.segments.append(Segment(name, begin, len(inputs), begin + len(inputs), len(outputs), max_batch))
        return len(self.segments) - 1

    def add_constants(self, values) -> int:
        offset = len(self.constants)
        self.constants.extend(float(v) for v in values)
        return offset

    def emit(self, op: Op, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
        self.instructions.append(Instruction(op, a, b, c, d))
        return len(self.instructions) - 1

    def segment_inputs(self, segment: Segment) -> list[int]:
        return self.operands[segment.input_begin: segment.input_begin + segment.input_count]

    def segment_outputs(self, segment: Segment) -> list[int]:
        return self.operands[segment.output_begin: segment.output_begin + segment.output_count]

    def state_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.role == Role.STATE)

    # -- serialization --------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        self.validate()
        strings = bytearray()
        offsets: dict[str, int] = {}

        def intern(text: str) -> int:
            if text not in offsets:
                offsets[text] = len(strings)
                strings.extend(text.encode() + b"\0")
            return offsets[text]

        def named(records):
            return [dataclasses.replace(r, name=intern(r.name)) for r in records]

        tensors, segments, layers = named(self.tensors), named(self.segments), named(self.layers)
        artifacts = named(self.artifacts)
        while len(strings) % 4:
            strings.append(0)
        constants = struct.pack(f"<{len(self.constants)}f", *self.constants)
        payload = b"".join([
            COUNTS.pack(len(tensors), len(segments), len(layers), len(self.instructions), len(artifacts),
                        len(self.operands), len(self.inputs), len(self.outputs), len(strings), len(constants)),
            *(r.pack() for r in tensors), *(r.pack() for r in segments), *(r.pack() for r in layers),
            *(r.pack() for r in self.instructions), *(r.pack() for r in artifacts),
            struct.pack(f"<{len(self.operands)}I", *self.operands),
            struct.pack(f"<{len(self.inputs)}I", *self.inputs),
            struct.pack(f"<{len(self.outputs)}I", *self.outputs),
            bytes(strings), constants,
        ])
        return HEADER.pack(MAGIC, *VERSION, len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> "FrameProgram":
        data = bytes(data)
        if len(data) < HEADER.size:
            raise PlanFormatError(f"plan: {len(data)} bytes is shorter than the {HEADER.size}-byte header")
        magic, major, minor, payload_bytes, checksum = HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise PlanFormatError(f"plan: bad magic {magic!r}, expected {MAGIC!r} (not a dynexport plan)")
        if major != VERSION[0]:
            raise PlanFormatError(f"plan: format version {major}.{minor}, this dynexport reads {VERSION[0]}.x")
        payload = data[HEADER.size:]
        if len(payload) != payload_bytes:
            raise PlanFormatError(f"plan: payload is {len(payload)} bytes, header says {payload_bytes} (truncated?)")
        if zlib.crc32(payload) != checksum:
            raise PlanFormatError("plan: checksum mismatch (the file was modified or damaged)")
        reader = _Reader(payload)
        counts = reader.take(COUNTS)
        (n_tensors, n_segments, n_layers, n_instructions, n_artifacts, n_operands, n_inputs, n_outputs, n_strings,
         n_constants) = counts
        program = cls()
        program.tensors = reader.records(Tensor, n_tensors)
        program.segments = reader.records(Segment, n_segments)
        program.layers = reader.records(Layer, n_layers)
        program.instructions = reader.records(Instruction, n_instructions)
        program.artifacts = reader.records(Artifact, n_artifacts)
        program.operands = reader.u32s(n_operands)
        program.inputs = reader.u32s(n_inputs)
        program.outputs = reader.u32s(n_outputs)
        strings = reader.raw(n_strings)
        if n_constants % 4:
            raise PlanFormatError(f"plan: constants section of {n_constants} bytes is not float32-aligned")
        program.constants = list(struct.unpack(f"<{n_constants // 4}f", reader.raw(n_constants)))
        if reader.offset != len(payload):
            raise PlanFormatError(f"plan: {len(payload) - reader.offset} unexpected trailing bytes")
        for record in (*program.tensors, *program.segments, *program.layers, *program.artifacts):
            record.name = _string_at(strings, record.name)
        program.validate()
        return program

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        """Every index in range, every size consistent; raises PlanFormatError."""
        n_tensors = len(self.tensors)

        def check_tensor(index, what, optional=False):
            if optional and index == NO_TENSOR:
                return
            if not 0 <= index < n_tensors:
                raise PlanFormatError(f"plan: {what} refers to tensor {index}, but there are {n_tensors}")

        for i, t in enumerate(self.tensors):
            if t.dtype not in DType._value2member_map_ or t.layout not in Layout._value2member_map_ \
                    or t.role not in Role._value2member_map_:
                raise PlanFormatError(f"plan: tensor {i} ({t.name}) has an unknown dtype, layout or role")
            if not 0 <= t.rank <= 4 or (t.layout == Layout.NHWC and t.rank != 4):
                raise PlanFormatError(f"plan: tensor {i} ({t.name}) has rank {t.rank}")
            if any(d <= 0 for d in t.shape) or t.nbytes > 1 << 31:
                raise PlanFormatError(f"plan: tensor {i} ({t.name}) has invalid dims {t.shape}")
        for s in self.segments:
            for begin, count in ((s.input_begin, s.input_count), (s.output_begin, s.output_count)):
                if begin + count > len(self.operands):
                    raise PlanFormatError(f"plan: segment {s.name} operands out of range")
            for t in self.segment_inputs(s) + self.segment_outputs(s):
                check_tensor(t, f"segment {s.name}")
        for layer in self.layers:
            if layer.kind not in LayerKind._value2member_map_ or layer.gate not in GateKind._value2member_map_:
                raise PlanFormatError(f"plan: layer {layer.name} has an unknown kind or gate")
            if min(*layer.input_size, *layer.kernel, *layer.stride, *layer.dilation, layer.block) < 1 \
                    or min(layer.padding) < 0 or min(layer.grid.output_size) < 1:
                raise PlanFormatError(f"plan: layer {layer.name} has an invalid block grid")
            if layer.gate_weight + layer.gate_weight_count > len(self.constants):
                raise PlanFormatError(f"plan: layer {layer.name} gate weights out of range")
            for field in ("input", "output", "primed", "active"):
                check_tensor(getattr(layer, field), f"layer {layer.name}.{field}")
            for field in ("reference", "tiles", "tile_output", "dense_output", "spatial_logits",
                          "channel_logits", "decisions"):
                check_tensor(getattr(layer, field), f"layer {layer.name}.{field}", optional=True)
        n_layers, n_segments, n_pc = len(self.layers), len(self.segments), len(self.instructions)
        for pc, ins in enumerate(self.instructions):
            if ins.op not in Op._value2member_map_:
                raise PlanFormatError(f"plan: instruction {pc} has unknown opcode {ins.op}")
            op = Op(ins.op)
            if op == Op.RUN_SEGMENT:
                if ins.a >= n_segments or (ins.b != NO_LAYER and ins.b >= n_layers):
                    raise PlanFormatError(f"plan: instruction {pc} ({op.name}) operands out of range")
                if ins.c & ~KNOWN_RUN_FLAGS:
                    raise PlanFormatError(f"plan: instruction {pc} (RUN_SEGMENT) has unknown flags {ins.c:#x}")
                if ins.c & KNOWN_RUN_FLAGS:
                    self._check_spatial_run(pc, ins)
            elif op == Op.JUMP:
                if ins.a > n_pc:
                    raise PlanFormatError(f"plan: instruction {pc} jumps to {ins.a}, past the end")
            elif op == Op.COPY_CHANNELS:
                self._check_copy_channels(pc, ins)
            elif op == Op.DSTEP_POLICY:
                self._check_dstep_policy(pc, ins)
            elif op == Op.FORGET_LAYERS:
                if ins.b < 1 or ins.a + ins.b > n_layers or any(
                        self.layers[i].kind != LayerKind.SKIP_CONV for i in range(ins.a, ins.a + ins.b)):
                    raise PlanFormatError(f"plan: instruction {pc} (FORGET_LAYERS) covers layers [{ins.a}, "
                                          f"{ins.a + ins.b}), expected one or more skip-conv layers of the {n_layers}")
            elif op == Op.COPY_TENSOR:
                check_tensor(ins.a, f"instruction {pc}")
                check_tensor(ins.b, f"instruction {pc}")
                if self.tensors[ins.a].nbytes != self.tensors[ins.b].nbytes:
                    raise PlanFormatError(f"plan: instruction {pc} copies between tensors of different size")
            else:
                if ins.a >= n_layers:
                    raise PlanFormatError(f"plan: instruction {pc} ({op.name}) refers to layer {ins.a}")
                if op in (Op.BRANCH_IF_NONE, Op.BRANCH_IF_DENSE, Op.BRANCH_IF_GROUP_IDLE, Op.BRANCH_IF_BUSY,
                          Op.BRANCH_IF_HOLDING) and ins.b > n_pc:
                    raise PlanFormatError(f"plan: instruction {pc} branches to {ins.b}, past the end")
                if op in (Op.SKIP_GATE, Op.BRANCH_IF_HOLDING) and self.layers[ins.a].kind != LayerKind.SKIP_CONV:
                    raise PlanFormatError(f"plan: instruction {pc} ({op.name}) on D-STEP layer {self.layers[ins.a].name}")
                if op == Op.BRANCH_IF_GROUP_IDLE:
                    layer = self.layers[ins.a]
                    if layer.kind != LayerKind.DSTEP or layer.decisions == NO_TENSOR or ins.d < 1 or ins.c + ins.d > layer.out_channels:
                        raise PlanFormatError(f"plan: instruction {pc} (BRANCH_IF_GROUP_IDLE) tests channels "
                                              f"[{ins.c}, {ins.c + ins.d}) of layer {layer.name}, which is not a "
                                              f"D-STEP layer with decisions and that many output channels ({layer.out_channels})")
        for t in self.inputs + self.outputs:
            check_tensor(t, "plan inputs/outputs")


    def dense_fallback(self) -> tuple[int, int, int, bool] | None:
        """(layer, count, hold, hold_skips_gate) of the plan's BRANCH_IF_BUSY, or None: above
        ``count`` active blocks of ``layer``, and for ``hold`` frames after, the rest of the
        frame runs as the dense fallback segment; ``hold_skips_gate`` (a BRANCH_IF_HOLDING,
        2.4): on those held frames ``layer`` computes every block without scoring."""
        busy = [ins for ins in self.instructions if ins.op == Op.BRANCH_IF_BUSY]
        if not busy:
            return None
        holding = any(ins.op == Op.BRANCH_IF_HOLDING for ins in self.instructions)
        return busy[0].a, busy[0].c, busy[0].d, holding

    def _check_dstep_policy(self, pc: int, ins: Instruction) -> None:
        from dynexport.plan.dstep_policy import policy_hidden

        if ins.a >= len(self.layers) or self.layers[ins.a].kind != LayerKind.DSTEP:
            raise PlanFormatError(f"plan: instruction {pc} (DSTEP_POLICY) refers to layer {ins.a}, expected a D-STEP layer")
        layer = self.layers[ins.a]
        for operand in (ins.b, ins.c):
            if not 0 <= operand < len(self.tensors) or self.tensors[operand].shape != (1, layer.in_channels) \
                    or self.tensors[operand].dtype != DType.FLOAT32:
                raise PlanFormatError(f"plan: instruction {pc} (DSTEP_POLICY) pooled tensor {operand}: expected "
                                      f"float32 [1, {layer.in_channels}]")
        spatial, channel = layer.spatial_logits != NO_TENSOR, layer.channel_logits != NO_TENSOR
        if not (spatial or channel) or policy_hidden(layer.gate_weight_count, spatial, channel, layer.in_channels,
                                                     layer.out_channels) is None:
            raise PlanFormatError(f"plan: instruction {pc} (DSTEP_POLICY): layer {layer.name} has "
                                  f"{layer.gate_weight_count} policy weights, which fit no policy of its logits")

    def _check_copy_channels(self, pc: int, ins: Instruction) -> None:
        n = len(self.tensors)
        if not (0 <= ins.a < n and 0 <= ins.b < n) or ins.a == ins.b:
            raise PlanFormatError(f"plan: instruction {pc} (COPY_CHANNELS) refers to tensors {ins.a} and {ins.b}, "
                                  f"expected two different ones of {n}")
        source, destination = self.tensors[ins.a], self.tensors[ins.b]
        for t in (source, destination):
            if t.rank != 4 or t.layout != Layout.NHWC or t.dtype != DType.FLOAT32:
                raise PlanFormatError(f"plan: instruction {pc} (COPY_CHANNELS): {t.name} is not a float32 NHWC tensor")
        if source.dims[:3] != destination.dims[:3] or ins.c + source.dims[3] > destination.dims[3]:
            raise PlanFormatError(f"plan: instruction {pc} (COPY_CHANNELS) copies {source.name} {source.shape} into "
                                  f"channels {ins.c}.. of {destination.name} {destination.shape}: expected the same "
                                  f"N, H, W and the channels inside")
        if ins.d != NO_LAYER and ins.d >= len(self.layers):
            raise PlanFormatError(f"plan: instruction {pc} (COPY_CHANNELS) is batched by layer {ins.d}, but there "
                                  f"are {len(self.layers)}")

    def _check_spatial_run(self, pc: int, ins: Instruction) -> None:
        """POINTWISE / NEAREST_UPSAMPLE: a fixed segment over float32 NHWC maps, inputs of one
        size, outputs of one size: the inputs' (pointwise) or whole multiples of it."""
        segment = self.segments[ins.a]
        upsample = bool(ins.c & RunFlag.NEAREST_UPSAMPLE)
        kind = "a nearest upsampling" if upsample else "pointwise"
        if upsample and ins.c & RunFlag.POINTWISE:
            raise PlanFormatError(f"plan: instruction {pc} runs segment {segment.name} both as pointwise and as a "
                                  f"nearest upsampling (expected one of the two flags)")
        if ins.b != NO_LAYER or segment.max_batch or not self.segment_inputs(segment):
            raise PlanFormatError(f"plan: instruction {pc} runs segment {segment.name} as {kind}, but it is a tile "
                                  f"segment or has no input (such runs are fixed segments over maps)")
        sizes = {}
        for role, indices in (("input", self.segment_inputs(segment)), ("output", self.segment_outputs(segment))):
            for index in indices:
                tensor = self.tensors[index] if 0 <= index < len(self.tensors) else None
                if tensor is None or tensor.rank != 4 or tensor.layout != Layout.NHWC \
                        or tensor.dtype != DType.FLOAT32 or tensor.dims[0] != 1 or 0 in tensor.dims[1:3]:
                    raise PlanFormatError(f"plan: instruction {pc} runs segment {segment.name} as {kind}, but operand "
                                          f"{index} is not a float32 NHWC map [1, H, W, C]")
                sizes.setdefault(role, set()).add(tuple(tensor.dims[1:3]))
        if any(len(s) > 1 for s in sizes.values()):
            raise PlanFormatError(f"plan: instruction {pc} runs segment {segment.name} as {kind} over maps of "
                                  f"different sizes {sorted(sizes['input'] | sizes.get('output', set()))}")
        (height, width), = sizes["input"]
        for out_h, out_w in sizes.get("output", ()):
            fits = (out_h % height == 0 and out_w % width == 0) if upsample else (out_h, out_w) == (height, width)
            if not fits:
                expected = "outputs whole multiples of the inputs" if upsample else "one size"
                raise PlanFormatError(f"plan: instruction {pc} runs segment {segment.name} as {kind} over maps of "
                                      f"different sizes (inputs {height}x{width}, outputs {out_h}x{out_w}; expected "
                                      f"{expected})")


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def raw(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise PlanFormatError(f"plan: section of {size} bytes at {self.offset} runs past the end ({len(self.data)})")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def take(self, fmt: struct.Struct):
        return fmt.unpack(self.raw(fmt.size))

    def u32s(self, count: int) -> list[int]:
        return list(struct.unpack(f"<{count}I", self.raw(4 * count)))

    def records(self, cls, count: int):
        size = cls.FORMAT.size
        block = self.raw(size * count)
        return [cls.unpack(block, i * size) for i in range(count)]


def _string_at(strings: bytes, offset: int) -> str:
    if not 0 <= offset < len(strings):
        raise PlanFormatError(f"plan: string offset {offset} out of range")
    end = strings.find(b"\0", offset)
    if end < 0:
        raise PlanFormatError("plan: unterminated string")
    try:
        return strings[offset:end].decode()
    except UnicodeDecodeError as exc:
        raise PlanFormatError(f"plan: string at {offset} is not UTF-8") from exc
