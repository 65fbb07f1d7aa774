/*
 * Block copies between NHWC maps and packed tiles: GATHER_TILES, STORE_REFERENCE,
 * SCATTER_TILES, COPY_BLOCKS and DSTEP_APPLY. Every copy is a run of whole pixels (all
 * channels are contiguous in NHWC), so each tile row is at most one memcpy of its
 * in-bounds part and memsets for the zero padding on either side.
 */
#include <string.h>

#include "session_internal.h"

/* Output region of a block: rows [row_begin, row_end), cols [col_begin, col_end); border
 * blocks are clipped to the map. */
typedef struct block_region {
  size_t row_begin, row_end, col_begin, col_end;
} block_region;

static size_t smaller(size_t a, size_t b) {
  return a < b ? a : b;
}

static block_region region_of_block(const block_grid* grid, uint32_t block) {
  const size_t b = (size_t)grid->block;
  const size_t block_row = block / (size_t)grid->blocks[1], block_col = block % (size_t)grid->blocks[1];
  block_region region;
  region.row_begin = block_row * b;
  region.col_begin = block_col * b;
  region.row_end = smaller(region.row_begin + b, (size_t)grid->output_size[0]);
  region.col_end = smaller(region.col_begin + b, (size_t)grid->output_size[1]);
  return region;
}

void dynrt_copy_input_tile(const runtime_layer* layer, uint32_t block, float* destination) {
  const block_grid* grid = &layer->grid;
  const float* input = (const float*)layer->tensor[SLOT_INPUT]->data;
  const ptrdiff_t height = (ptrdiff_t)grid->input_size[0], width = (ptrdiff_t)grid->input_size[1];
  const ptrdiff_t tile_h = (ptrdiff_t)grid->tile_size[0], tile_w = (ptrdiff_t)grid->tile_size[1];
  const size_t channels = layer->in_channels;
  const size_t block_row = block / (size_t)grid->blocks[1], block_col = block % (size_t)grid->blocks[1];
  /* BlockGrid.tile_origin: negative inside the top/left padding */
  const ptrdiff_t origin_y = (ptrdiff_t)(block_row * (size_t)grid->tile_step[0]) - (ptrdiff_t)grid->padding[0];
  const ptrdiff_t origin_x = (ptrdiff_t)(block_col * (size_t)grid->tile_step[1]) - (ptrdiff_t)grid->padding[1];
  /* tile columns [first_col, last_col) lie inside the input; the rest read zero padding */
  ptrdiff_t first_col = origin_x < 0 ? -origin_x : 0;
  ptrdiff_t last_col = width - origin_x < tile_w ? width - origin_x : tile_w;
  const size_t row_values = (size_t)tile_w * channels;
  ptrdiff_t y;
  if (first_col > tile_w) first_col = tile_w;
  if (last_col < first_col) last_col = first_col;
  for (y = 0; y < tile_h; ++y) {
    float* row = destination + (size_t)y * row_values;
    const ptrdiff_t input_y = origin_y + y;
    if (input_y < 0 || input_y >= height || last_col == first_col) {
      memset(row, 0, row_values * sizeof(float));
      continue;
    }
    memset(row, 0, (size_t)first_col * channels * sizeof(float));
    memcpy(row + (size_t)first_col * channels,
           input + ((size_t)input_y * (size_t)width + (size_t)(origin_x + first_col)) * channels,
           (size_t)(last_col - first_col) * channels * sizeof(float));
    memset(row + (size_t)last_col * channels, 0, (size_t)(tile_w - last_col) * channels * sizeof(float));
  }
}

static size_t tile_values(const runtime_layer* layer) {
  return (size_t)(layer->grid.tile_size[0] * layer->grid.tile_size[1]) * layer->in_channels;
}

void dynrt_gather_tiles(runtime_layer* layer) {
  float* tiles = (float*)layer->tensor[SLOT_TILES]->data;
  const size_t values = tile_values(layer);
  uint32_t k;
  for (k = 0; k < layer->active_count; ++k) dynrt_copy_input_tile(layer, layer->active_blocks[k], tiles + k * values);
}

void dynrt_store_reference(runtime_layer* layer) {
  float* reference = (float*)layer->tensor[SLOT_REFERENCE]->data;
  const size_t values = tile_values(layer);
  uint32_t k;
  for (k = 0; k < layer->active_count; ++k) {
    const uint32_t block = layer->active_blocks[k];
    dynrt_copy_input_tile(layer, block, reference + (size_t)block * values);
  }
}

/* Copies a block region of a [rows, row_pitch_pixels, C] source into the output map. */
static void copy_region_rows(float* output, size_t output_width, const float* source, size_t source_width,
                             size_t source_row, size_t source_col, const block_region* region, size_t channels) {
  const size_t rows = region->row_end - region->row_begin, cols = region->col_end - region->col_begin;
  size_t y;
  for (y = 0; y < rows; ++y) {
    memcpy(output + ((region->row_begin + y) * output_width + region->col_begin) * channels,
           source + ((source_row + y) * source_width + source_col) * channels, cols * channels * sizeof(float));
  }
}

void dynrt_scatter_tiles(runtime_layer* layer) {
  float* output = (float*)layer->tensor[SLOT_OUTPUT]->data;
  const float* tile_output = (const float*)layer->tensor[SLOT_TILE_OUTPUT]->data;
  const size_t b = (size_t)layer->grid.block, channels = layer->out_channels;
  uint32_t k;
  for (k = 0; k < layer->active_count; ++k) {
    const block_region region = region_of_block(&layer->grid, layer->active_blocks[k]);
    /* tile_output[k, :rows, :cols, :] */
    copy_region_rows(output, (size_t)layer->grid.output_size[1], tile_output + k * b * b * channels, b, 0, 0, &region,
                     channels);
  }
}

void dynrt_copy_blocks(runtime_layer* layer) {
  float* output = (float*)layer->tensor[SLOT_OUTPUT]->data;
  const float* dense = (const float*)layer->tensor[SLOT_DENSE_OUTPUT]->data;
  const size_t width = (size_t)layer->grid.output_size[1];
  uint32_t k;
  for (k = 0; k < layer->active_count; ++k) {
    const block_region region = region_of_block(&layer->grid, layer->active_blocks[k]);
    copy_region_rows(output, width, dense, width, region.row_begin, region.col_begin, &region, layer->out_channels);
  }
}

/* DSTEP_APPLY: per output channel, skip -> 0, reuse -> unchanged, compute -> the computed
 * value in active patches and 0 in the others. `source` says where the computed values
 * are: the packed tile outputs (in active-list order), the dense output, or nowhere
 * (nothing computed: compute channels are 0). */
void dynrt_dstep_apply(runtime_layer* layer, uint32_t source) {
  float* output = (float*)layer->tensor[SLOT_OUTPUT]->data;
  const size_t width = (size_t)layer->grid.output_size[1], channels = layer->out_channels;
  const size_t b = (size_t)layer->grid.block;
  const uint8_t* decisions = layer->channel_decisions;
  const uint32_t patches = (uint32_t)layer->grid.block_count;
  uint32_t patch, k = 0; /* k: the patch's position in the active list */
  for (patch = 0; patch < patches; ++patch) {
    const block_region region = region_of_block(&layer->grid, patch);
    const int active = layer->block_mask[patch] && source != DSTEP_SOURCE_NONE;
    const float* computed = NULL;
    size_t computed_width = 0, computed_row = 0, computed_col = 0, y, x, c;
    if (active && source == DSTEP_SOURCE_TILES) {
      computed = (const float*)layer->tensor[SLOT_TILE_OUTPUT]->data + (size_t)k * b * b * channels;
      computed_width = b;
    } else if (active) {
      computed = (const float*)layer->tensor[SLOT_DENSE_OUTPUT]->data;
      computed_width = width;
      computed_row = region.row_begin;
      computed_col = region.col_begin;
    }
    if (layer->block_mask[patch]) ++k;
    for (y = 0; y < region.row_end - region.row_begin; ++y) {
      for (x = 0; x < region.col_end - region.col_begin; ++x) {
        float* pixel = output + ((region.row_begin + y) * width + region.col_begin + x) * channels;
        const float* value =
            computed != NULL ? computed + ((computed_row + y) * computed_width + computed_col + x) * channels : NULL;
        for (c = 0; c < channels; ++c) {
          if (decisions[c] == CHANNEL_COMPUTE) pixel[c] = value != NULL ? value[c] : 0.0f;
          else if (decisions[c] == CHANNEL_SKIP) pixel[c] = 0.0f;
        }
      }
    }
  }
}
