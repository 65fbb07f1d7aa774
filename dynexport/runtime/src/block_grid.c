/* Block-grid arithmetic, the same integers as dynexport/nn/block_grid.py. */
#include "block_grid.h"

uint64_t dynrt_saturating_add(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

uint64_t dynrt_saturating_multiply(uint64_t a, uint64_t b) {
  if (a != 0 && b > UINT64_MAX / a) return UINT64_MAX;
  return a * b;
}

int dynrt_block_grid_from_layer(const plan_layer* layer, block_grid* grid) {
  int axis;
  grid->block = layer->block;
  if (layer->block < 1) return 0;
  grid->block_count = 1;
  for (axis = 0; axis < 2; ++axis) {
    uint64_t padded, reach;
    grid->input_size[axis] = layer->input_size[axis];
    grid->kernel[axis] = layer->kernel[axis];
    grid->stride[axis] = layer->stride[axis];
    grid->padding[axis] = layer->padding[axis];
    grid->dilation[axis] = layer->dilation[axis];
    if (layer->input_size[axis] < 1 || layer->kernel[axis] < 1 || layer->stride[axis] < 1 ||
        layer->dilation[axis] < 1) {
      return 0;
    }
    /* conv_output_size: (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1,
     * at least 1 exactly when the padded input covers the dilated kernel once */
    padded = grid->input_size[axis] + 2 * grid->padding[axis];                    /* < 2^35 */
    reach = grid->dilation[axis] * (grid->kernel[axis] - 1) + 1;                  /* < 2^64 */
    if (padded < reach) return 0;
    grid->output_size[axis] = (padded - reach) / grid->stride[axis] + 1;
    grid->blocks[axis] = (grid->output_size[axis] + grid->block - 1) / grid->block;
    grid->block_count = dynrt_saturating_multiply(grid->block_count, grid->blocks[axis]);
    grid->tile_size[axis] = dynrt_saturating_add(dynrt_saturating_multiply(grid->block - 1, grid->stride[axis]), reach);
    grid->tile_step[axis] = dynrt_saturating_multiply(grid->block, grid->stride[axis]);
  }
  return 1;
}
