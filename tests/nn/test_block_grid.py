"""Property tests: a block grid covers every output position exactly once, and each block's
tile is exactly the input its outputs read."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.nn.block_grid import BlockGrid
from dynexport.nn.skip_conv import expand_block_mask, extract_tiles, valid_positions

grids = st.builds(
    lambda h, w, k, s, p, d, b: BlockGrid((h, w), (k, k), (s, s), (p, p), (d, d), b),
    h=st.integers(5, 40), w=st.integers(5, 40), k=st.sampled_from([1, 3, 5]), s=st.integers(1, 2),
    p=st.integers(0, 2), d=st.integers(1, 2), b=st.sampled_from([1, 2, 4, 8]),
).filter(lambda g: min(g.output_size) >= 1)


@settings(max_examples=60, deadline=None)
@given(grids)
def test_blocks_cover_every_output_position_once(grid):
    rows, cols = grid.blocks
    total = sum(grid.block_positions(r, c) for r in range(rows) for c in range(cols))
    assert total == grid.output_size[0] * grid.output_size[1]
    assert int(valid_positions(grid, "cpu").sum()) == total
    covered = expand_block_mask(torch.ones(1, grid.num_blocks), grid)
    assert covered.shape[-2:] == grid.output_size


@settings(max_examples=60, deadline=None)
@given(grids)
def test_convolving_a_tile_gives_that_blocks_outputs(grid):
    x = torch.randn(1, 2, *grid.input_size, dtype=torch.float64)
    w = torch.randn(3, 2, *grid.kernel, dtype=torch.float64)
    dense = F.conv2d(x, w, None, grid.stride, grid.padding, grid.dilation)
    tiles = extract_tiles(x, grid)
    assert tiles.shape == (1, grid.num_blocks, 2, *grid.tile_size)
    per_tile = F.conv2d(tiles[0], w, None, grid.stride, 0, grid.dilation)  # [blocks, 3, b, b]
    rows, cols = grid.blocks
    b = grid.block
    for r in range(rows):
        for c in range(cols):
            want = dense[0, :, r * b:(r + 1) * b, c * b:(c + 1) * b]
            got = per_tile[r * cols + c, :, :want.shape[1], :want.shape[2]]
            torch.testing.assert_close(got, want)


def test_tile_origin_and_size_for_a_strided_padded_conv():
    grid = BlockGrid((56, 56), (3, 3), (2, 2), (1, 1), (1, 1), 8)
    assert grid.output_size == (28, 28)
    assert grid.blocks == (4, 4)
    assert grid.tile_size == (17, 17)
    assert grid.tile_origin(1, 2) == (15, 31)
