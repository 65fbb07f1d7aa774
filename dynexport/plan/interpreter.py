"""The frame-program interpreter: the executable specification of every instruction, which
the C runtime is tested against. Segments run through a ``SegmentRunner``: torch modules
(``TorchSegments``) or a backend's host runtime (e.g. ExecuTorch's).

Tensors live in preallocated buffers with the plan's physical dims (NHWC for 4-D); a segment
sees NCHW views of them with channels_last strides, so no layout conversion happens between
instructions.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from dynexport.errors import FrameError
from dynexport.plan.frame_program import (
    DSTEP_SOURCE_DENSE, DSTEP_SOURCE_NONE, DSTEP_SOURCE_TILES, NO_LAYER, NO_TENSOR,
    DType, FrameProgram, GateKind, Layer, Op,
)

SKIP, REUSE, COMPUTE = 0, 1, 2


class SegmentRunner(Protocol):
    def run(self, name: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run segment ``name`` on NCHW (channels_last) inputs; return its outputs."""


class TorchSegments:
    """Runs segments as the torch modules the compiler made (the reference backend)."""

    def __init__(self, segments):
        self.modules = {name: artifact.module.eval() for name, artifact in segments.items()}

    def run(self, name, inputs):
        with torch.no_grad():
            return list(self.modules[name](*inputs))


def _logical(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t


class FrameProgramInterpreter:
    def __init__(self, program: FrameProgram, runner: SegmentRunner):
        self.program = program
        self.runner = runner
        self.buffers = [
            torch.zeros(t.shape, dtype=torch.float32 if t.dtype == DType.FLOAT32 else torch.int32)
            for t in program.tensors
        ]
        self.counts = [0] * len(program.layers)
        self.fallback_hold = 0  # frames that still take BRANCH_IF_BUSY after a busy one

    # -- public -------------------------------------------------------------------------
    def reset(self) -> None:
        """Scene cut / keyframe: the next frame is computed densely."""
        for layer in self.program.layers:
            self.buffers[layer.primed].zero_()
        self.fallback_hold = 0

    def step(self, frame: torch.Tensor) -> torch.Tensor:
        """One frame, NCHW float32 [1, C, H, W] -> the model output (NCHW for 4-D)."""
        input_buffer = self.buffers[self.program.inputs[0]]
        expected = tuple(_logical(input_buffer).shape)
        if not isinstance(frame, torch.Tensor) or tuple(frame.shape) != expected or frame.dtype != torch.float32:
            got = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
            raise FrameError(f"plan input: expected float32 {expected}, got {got}")
        if not bool(torch.isfinite(frame).all()):
            raise FrameError("plan input: frame contains NaN or Inf; rejected before any state changed")
        _logical(input_buffer).copy_(frame)
        self._run()
        return _logical(self.buffers[self.program.outputs[0]]).clone()

    def layer_decisions(self) -> list:
        """Per layer: active block indices (skip conv) or (active patches, channel decisions)."""
        result = []
        for i, layer in enumerate(self.program.layers):
            active = self.buffers[layer.active][1:1 + self.counts[i]].tolist()
            if layer.decisions != NO_TENSOR:
                result.append((active, self.buffers[layer.decisions].tolist()))
            else:
                result.append(active)
        return result

    # -- execution ------------------------------------------------------------------------
    def _run(self) -> None:
        pc, instructions = 0, self.program.instructions
        while pc < len(instructions):
            ins = instructions[pc]
            op = Op(ins.op)
            pc += 1
            if op == Op.JUMP:
                pc = ins.a
            elif op == Op.BRANCH_IF_NONE:
                if self.counts[ins.a] == 0:
                    pc = ins.b
            elif op == Op.BRANCH_IF_DENSE:
                if self.counts[ins.a] > self.program.layers[ins.a].dense_cutoff:
                    pc = ins.b
            elif op == Op.BRANCH_IF_BUSY:
                if self.counts[ins.a] > ins.c:
                    self.fallback_hold, pc = ins.d, ins.b
                elif self.fallback_hold > 0:
                    self.fallback_hold, pc = self.fallback_hold - 1, ins.b
            elif op == Op.BRANCH_IF_HOLDING:
                if self.fallback_hold > 0:
                    layer = self.program.layers[ins.a]
                    self.fallback_hold, pc = self.fallback_hold - 1, ins.b
                    self._set_active(ins.a, layer, torch.arange(layer.grid.num_blocks))
                    self.buffers[layer.primed].fill_(1.0)
            elif op == Op.FORGET_LAYERS:
                for index in range(ins.a, ins.a + ins.b):
                    layer = self.program.layers[index]
                    self._set_active(index, layer, torch.arange(layer.grid.num_blocks))
                    self.buffers[layer.primed].zero_()
            elif op == Op.RUN_SEGMENT:
                # ins.c holds RunFlag hints (e.g. POINTWISE) for the runtime's change tracking:
                # they change nothing that is computed
                self._run_segment(ins.a, ins.b)
            elif op == Op.COPY_TENSOR:
                self.buffers[ins.b].view(-1).copy_(self.buffers[ins.a].view(-1))
            elif op == Op.BRANCH_IF_GROUP_IDLE:
                # channel group [c, c + d) of a D-STEP layer: its segments run only when one of
                # its channels computes (skip and reuse channels need no convolution)
                decisions = self.buffers[self.program.layers[ins.a].decisions][ins.c:ins.c + ins.d]
                if not bool((decisions == COMPUTE).any()):
                    pc = ins.b
            elif op == Op.DSTEP_POLICY:
                self._dstep_policy(self.program.layers[ins.a], ins.b, ins.c)
            elif op == Op.COPY_CHANNELS:
                source, destination = self.buffers[ins.a], self.buffers[ins.b]
                n = source.shape[0] if ins.d == NO_LAYER else self.counts[ins.d]
                if n > source.shape[0]:
                    raise FrameError(f"COPY_CHANNELS: {n} active blocks, more than the {source.shape[0]} of "
                                     f"{self.program.tensors[ins.a].name}")
                destination[:n, ..., ins.c:ins.c + source.shape[3]] = source[:n]
            else:
                getattr(self, f"_{op.name.lower()}")(ins.a, self.program.layers[ins.a], ins.b)

    def _run_segment(self, index: int, batch_layer: int) -> None:
        segment = self.program.segments[index]
        inputs = [_logical(self.buffers[t]) for t in self.program.segment_inputs(segment)]
        outputs = [self.buffers[t] for t in self.program.segment_outputs(segment)]
        if batch_layer != NO_LAYER:
            batch = self.counts[batch_layer]
            inputs = [inputs[0][:batch].contiguous(memory_format=torch.channels_last)] + inputs[1:]
            outputs = [outputs[0][:batch]] + outputs[1:]
        results = self.runner.run(segment.name, inputs)
        for buffer, result in zip(outputs, results):
            _logical(buffer).copy_(result.reshape(_logical(buffer).shape))

    # -- gate and block instructions ----------------------------------------------------------
    def _set_active(self, index: int, layer: Layer, blocks: torch.Tensor) -> None:
        active = self.buffers[layer.active]
        active.zero_()
        active[0] = len(blocks)
        active[1:1 + len(blocks)] = blocks.to(torch.int32)
        self.counts[index] = len(blocks)

    def _all_tiles(self, layer: Layer) -> torch.Tensor:
        """Every block's input tile of layer.input: [blocks, th, tw, C] (zero padding outside)."""
        grid = layer.grid
        x = self.buffers[layer.input]  # [1, H, W, C]
        pad_bottom, pad_right = grid.extra_padding
        padded = F.pad(x, (0, 0, grid.padding[1], pad_right, grid.padding[0], pad_bottom))[0]
        rows, cols = grid.blocks
        th, tw = grid.tile_size
        sh, sw = grid.tile_step
        tiles = padded.unfold(0, th, sh).unfold(1, tw, sw)[:rows, :cols]  # [rows, cols, C, th, tw]
        return tiles.permute(0, 1, 3, 4, 2).reshape(rows * cols, th, tw, -1)

    def _skip_gate(self, index: int, layer: Layer, _unused: int) -> None:
        grid = layer.grid
        primed = self.buffers[layer.primed]
        if primed[0] == 0:
            blocks = torch.arange(grid.num_blocks)
        else:
            residual = (self._all_tiles(layer) - self.buffers[layer.reference]).permute(0, 3, 1, 2)
            if layer.gate == GateKind.GUMBEL:
                kernel = torch.tensor(self.program.constants[layer.gate_weight:layer.gate_weight + layer.gate_weight_count])
                kernel = kernel.reshape(*grid.kernel, layer.in_channels).permute(2, 0, 1)[None]
                scores = F.conv2d(residual.abs(), kernel, None, grid.stride, 0, grid.dilation) + layer.gate_bias
            else:
                window = torch.ones(1, 1, *grid.kernel)
                squared = F.conv2d(residual.square().sum(1, keepdim=True), window, None, grid.stride, 0, grid.dilation)
                scores = squared.clamp_min(0).sqrt() * layer.norm_scale
            from dynexport.nn.skip_conv import valid_positions

            scores = scores[:, 0].masked_fill(~valid_positions(grid, "cpu"), float("-inf")).amax(dim=(1, 2))
            blocks = torch.nonzero(scores > torch.tensor(layer.threshold, dtype=torch.float32)).flatten()
        primed.fill_(1.0)
        self._set_active(index, layer, blocks)

    def _active_blocks(self, index: int, layer: Layer) -> list[int]:
        return self.buffers[layer.active][1:1 + self.counts[index]].tolist()

    def _block_region(self, layer: Layer, block: int):
        grid = layer.grid
        rows, cols = grid.blocks
        r, c = divmod(block, cols)
        b = grid.block
        out_h, out_w = grid.output_size
        return slice(r * b, min((r + 1) * b, out_h)), slice(c * b, min((c + 1) * b, out_w))

    def _gather_tiles(self, index: int, layer: Layer, _unused: int) -> None:
        blocks = self._active_blocks(index, layer)
        self.buffers[layer.tiles][: len(blocks)] = self._all_tiles(layer)[blocks]

    def _scatter_tiles(self, index: int, layer: Layer, _unused: int) -> None:
        out = self.buffers[layer.output][0]
        tiles = self.buffers[layer.tile_output]
        for k, block in enumerate(self._active_blocks(index, layer)):
            rows, cols = self._block_region(layer, block)
            out[rows, cols] = tiles[k, : rows.stop - rows.start, : cols.stop - cols.start]

    def _copy_blocks(self, index: int, layer: Layer, _unused: int) -> None:
        out, dense = self.buffers[layer.output][0], self.buffers[layer.dense_output][0]
        for block in self._active_blocks(index, layer):
            rows, cols = self._block_region(layer, block)
            out[rows, cols] = dense[rows, cols]

    def _store_reference(self, index: int, layer: Layer, _unused: int) -> None:
        blocks = self._active_blocks(index, layer)
        self.buffers[layer.reference][blocks] = self._all_tiles(layer)[blocks]

    def _dstep_policy(self, layer: Layer, pooled_tensor: int, previous_tensor: int) -> None:
        """The reference's policies (dynexport.nn.dstep) on the layer's input."""
        from dynexport.nn.dstep import channel_logits, spatial_logits
        from dynexport.plan.dstep_policy import unpack_policies

        has_spatial, has_channel = layer.spatial_logits != NO_TENSOR, layer.channel_logits != NO_TENSOR
        spatial, channel = unpack_policies(self.program.constants, layer, has_spatial, has_channel)
        x = _logical(self.buffers[layer.input])
        pooled = x.mean((2, 3))
        if spatial is not None:
            _logical(self.buffers[layer.spatial_logits]).copy_(spatial_logits(x, layer.grid, *spatial))
        if channel is not None:
            previous = pooled if self.buffers[layer.primed][0] == 0 else self.buffers[previous_tensor]
            self.buffers[layer.channel_logits].copy_(channel_logits(pooled, previous, *channel))
        self.buffers[pooled_tensor].copy_(pooled)

    def _dstep_decide(self, index: int, layer: Layer, _unused: int) -> None:
        grid = layer.grid
        primed = self.buffers[layer.primed]
        if layer.spatial_logits != NO_TENSOR:
            logits = self.buffers[layer.spatial_logits][0].reshape(-1, 2)  # [rows*cols, 2]
            patches = torch.nonzero(logits.argmax(-1) == 1).flatten()
        else:
            patches = torch.arange(grid.num_blocks)
        decisions = self.buffers[layer.decisions]
        if layer.channel_logits != NO_TENSOR:
            choice = self.buffers[layer.channel_logits][0].argmax(-1)  # [Co]
            if primed[0] == 0:
                choice = torch.where(choice == REUSE, torch.full_like(choice, COMPUTE), choice)
            decisions.copy_(choice.to(torch.int32))
        else:
            decisions.fill_(COMPUTE)
        primed.fill_(1.0)
        if not bool((decisions == COMPUTE).any()):
            patches = patches[:0]
        self._set_active(index, layer, patches)

    def _dstep_apply(self, index: int, layer: Layer, source: int) -> None:
        out = self.buffers[layer.output][0]  # [Ho, Wo, Co]
        decisions = self.buffers[layer.decisions].long()
        compute = decisions == COMPUTE
        computed = torch.zeros_like(out)
        blocks = self._active_blocks(index, layer)
        if source == DSTEP_SOURCE_TILES:
            tiles = self.buffers[layer.tile_output]
            for k, block in enumerate(blocks):
                rows, cols = self._block_region(layer, block)
                computed[rows, cols] = tiles[k, : rows.stop - rows.start, : cols.stop - cols.start]
        elif source == DSTEP_SOURCE_DENSE:
            dense = self.buffers[layer.dense_output][0]
            for block in blocks:
                rows, cols = self._block_region(layer, block)
                computed[rows, cols] = dense[rows, cols]
        else:
            assert source == DSTEP_SOURCE_NONE
        out[..., compute] = computed[..., compute]
        out[..., decisions == SKIP] = 0.0
