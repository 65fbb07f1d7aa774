"""Block grids: how a gated layer's output map is cut into b x b blocks and which input
tile (block plus halo) each block reads.

Pure integer arithmetic, no torch: the compiler, the plan and the runtime use the same
numbers. A partial block at the right or bottom border is a block too; its tile reaches
past the input and reads zero padding there.
"""

from __future__ import annotations

import dataclasses
import math


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclasses.dataclass(frozen=True)
class BlockGrid:
    """Block structure of one convolution at one input resolution (per spatial axis pairs:
    index 0 is height, 1 is width)."""

    input_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    block: int

    @property
    def output_size(self) -> tuple[int, int]:
        return tuple(
            conv_output_size(self.input_size[a], self.kernel[a], self.stride[a], self.padding[a], self.dilation[a])
            for a in (0, 1)
        )

    @property
    def blocks(self) -> tuple[int, int]:
        """Number of blocks along height and width (partial border blocks included)."""
        return tuple(math.ceil(o / self.block) for o in self.output_size)

    @property
    def num_blocks(self) -> int:
        rows, cols = self.blocks
        return rows * cols

    @property
    def tile_size(self) -> tuple[int, int]:
        """Input rows/cols one block reads: its b output positions plus the halo."""
        return tuple((self.block - 1) * self.stride[a] + self.dilation[a] * (self.kernel[a] - 1) + 1 for a in (0, 1))

    @property
    def tile_step(self) -> tuple[int, int]:
        """Input distance between the tiles of neighbouring blocks."""
        return (self.block * self.stride[0], self.block * self.stride[1])

    def tile_origin(self, block_row: int, block_col: int) -> tuple[int, int]:
        """Input coordinate of a tile's top-left element (negative inside the top/left padding)."""
        return (
            block_row * self.tile_step[0] - self.padding[0],
            block_col * self.tile_step[1] - self.padding[1],
        )

    @property
    def padded_input_size(self) -> tuple[int, int]:
        """Size of the zero-padded input from which every tile can be cut without bounds checks."""
        return tuple(
            (self.blocks[a] - 1) * self.tile_step[a] + self.tile_size[a] for a in (0, 1)
        )

    @property
    def extra_padding(self) -> tuple[int, int]:
        """Zero rows/cols to add after the input (bottom, right) beyond the conv's own padding."""
        return tuple(
            max(0, self.padded_input_size[a] - self.padding[a] - self.input_size[a]) for a in (0, 1)
        )

    def block_positions(self, block_row: int, block_col: int) -> int:
        """Number of real output positions inside a block (fewer for border blocks)."""
        out_h, out_w = self.output_size
        rows = min(self.block, out_h - block_row * self.block)
        cols = min(self.block, out_w - block_col * self.block)
        return rows * cols
