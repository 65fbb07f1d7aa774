/*
 * Block grids (dynexport/nn/block_grid.py): how a gated layer's output map is cut into
 * b x b blocks (partial blocks at the right/bottom border included) and which input tile
 * (the block plus its halo) each block reads. Index 0 of a pair is height, 1 is width.
 *
 * All values are uint64_t and saturate at UINT64_MAX instead of wrapping, so a tampered
 * plan with huge fields yields huge numbers that the validator rejects (they cannot match
 * a tensor's 32-bit dims), never small wrapped ones.
 */
#ifndef DYNRT_BLOCK_GRID_H
#define DYNRT_BLOCK_GRID_H

#include <stdint.h>

#include "plan_format.h"

typedef struct block_grid {
  uint64_t input_size[2];
  uint64_t kernel[2], stride[2], padding[2], dilation[2];
  uint64_t block;            /* output positions per block edge */
  uint64_t output_size[2];   /* the convolution's output map */
  uint64_t blocks[2];        /* block rows, block columns */
  uint64_t block_count;
  uint64_t tile_size[2];     /* input rows/cols one block reads: (b-1)*stride + dilation*(k-1) + 1 */
  uint64_t tile_step[2];     /* input distance between neighbouring tiles: b*stride */
} block_grid;

/* Fills the grid of a layer; returns 0 when the grid is invalid the way frame_program.py
 * rejects it (a field below 1, or an output map smaller than 1x1). */
int dynrt_block_grid_from_layer(const plan_layer* layer, block_grid* grid);

uint64_t dynrt_saturating_add(uint64_t a, uint64_t b);
uint64_t dynrt_saturating_multiply(uint64_t a, uint64_t b);

#endif /* DYNRT_BLOCK_GRID_H */
