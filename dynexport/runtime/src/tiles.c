/*
 * Block copies between NHWC maps and packed tiles: GATHER_TILES, STORE_REFERENCE,
 * SCATTER_TILES, COPY_BLOCKS, DSTEP_APPLY and COPY_CHANNELS. Every copy is a run of whole pixels (all
 * channels are contiguous in NHWC), so each tile row is at most one memcpy of its
 * in-bounds part and memsets for the zero padding on either side. Where a tile lies in the
 * input (dynrt_tile_placement) is shared with SKIP_GATE, which reads tiles in place.
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

/* The part [first, last) of a tile axis of `tile` elements starting at input coordinate
 * `origin` that lies inside an input axis of `size` elements. */
static void inside_span(ptrdiff_t origin, ptrdiff_t tile, ptrdiff_t size, size_t* first, size_t* last) {
  ptrdiff_t begin = origin < 0 ? -origin : 0;
  ptrdiff_t end = size - origin < tile ? size - origin : tile;
  if (begin > tile) begin = tile;
  if (end < begin) end = begin;
  *first = (size_t)begin;
  *last = (size_t)end;
}

tile_placement dynrt_tile_placement(const runtime_layer* layer, uint32_t block) {
  const block_grid* grid = &layer->grid;
  const size_t block_row = block / (size_t)grid->blocks[1], block_col = block % (size_t)grid->blocks[1];
  /* BlockGrid.tile_origin: negative inside the top/left padding */
  const ptrdiff_t origin_y = (ptrdiff_t)(block_row * (size_t)grid->tile_step[0]) - (ptrdiff_t)grid->padding[0];
  const ptrdiff_t origin_x = (ptrdiff_t)(block_col * (size_t)grid->tile_step[1]) - (ptrdiff_t)grid->padding[1];
  tile_placement placement;
  inside_span(origin_y, (ptrdiff_t)grid->tile_size[0], (ptrdiff_t)grid->input_size[0], &placement.first_row,
              &placement.last_row);
  inside_span(origin_x, (ptrdiff_t)grid->tile_size[1], (ptrdiff_t)grid->input_size[1], &placement.first_col,
              &placement.last_col);
  placement.input_row_values = (size_t)grid->input_size[1] * layer->in_channels;
  placement.first_input = NULL;
  if (placement.first_row == placement.last_row || placement.first_col == placement.last_col) {
    placement.first_row = placement.last_row = 0; /* all padding */
  } else {
    placement.first_input = layer->input_pixels +
                            (size_t)(origin_y + (ptrdiff_t)placement.first_row) * placement.input_row_values +
                            (size_t)(origin_x + (ptrdiff_t)placement.first_col) * layer->in_channels;
  }
  return placement;
}

void dynrt_copy_input_tile(const runtime_layer* layer, uint32_t block, float* destination, int write_padding) {
  const tile_placement placement = dynrt_tile_placement(layer, block);
  const size_t tile_h = (size_t)layer->grid.tile_size[0], tile_w = (size_t)layer->grid.tile_size[1];
  const size_t channels = layer->in_channels, row_values = tile_w * channels;
  const size_t left_values = placement.first_col * channels, right_values = (tile_w - placement.last_col) * channels;
  size_t y;
  for (y = 0; y < tile_h; ++y) {
    float* row = destination + y * row_values;
    const float* input = tile_input_row(&placement, y);
    if (input == NULL) {
      if (write_padding) memset(row, 0, row_values * sizeof(float));
      continue;
    }
    /* interior tiles have no padding columns: no calls for nothing */
    if (left_values > 0 && write_padding) memset(row, 0, left_values * sizeof(float));
    memcpy(row + left_values, input, (row_values - left_values - right_values) * sizeof(float));
    if (right_values > 0 && write_padding) memset(row + row_values - right_values, 0, right_values * sizeof(float));
  }
}

static size_t tile_values(const runtime_layer* layer) {
  return (size_t)(layer->grid.tile_size[0] * layer->grid.tile_size[1]) * layer->in_channels;
}

/* A tile copy cut into tasks (session_internal.h): task t copies its share of the layer's
 * active list; each tile and each block region is one task's alone. */
typedef struct tile_job {
  runtime_layer* layer;
  uint32_t tasks;
  int from_tiles; /* STORE_REFERENCE: copy the packed tiles */
  int write_padding; /* STORE_REFERENCE from the input: the reference's padding may not be zero */
} tile_job;

static void run_tile_copies(runtime_layer* layer, uint64_t bytes_per_tile, runtime_task task, tile_job* job) {
  job->layer = layer;
  job->tasks = dynrt_task_count(layer->session, layer->active_count, bytes_per_tile);
  dynrt_run_tasks(layer->session, job->tasks, task, job);
}

#define TILE_TASK(name, copy_one)                                                         \
  static void name(void* argument, uint32_t task) {                                      \
    const tile_job* job = (const tile_job*)argument;                                     \
    const uint32_t end = task_share_begin(job->layer->active_count, task + 1, job->tasks); \
    uint32_t k;                                                                          \
    for (k = task_share_begin(job->layer->active_count, task, job->tasks); k < end; ++k) \
      copy_one(job, k);                                                                  \
  }

static void gather_one(const tile_job* job, uint32_t k) {
  const runtime_layer* layer = job->layer;
  float* tile = (float*)layer->tensor[SLOT_TILES]->data + k * tile_values(layer);
  dynrt_copy_input_tile(layer, layer->active_blocks[k], tile, 1);
}
TILE_TASK(gather_task, gather_one)

/* Skipped when the tiles already hold this gather's result: same input, same active list,
 * tiles untouched since. Not for a layer reading the caller's frame (frames carry no version). */
void dynrt_gather_tiles(runtime_layer* layer) {
  runtime_tensor* tiles = layer->tensor[SLOT_TILES];
  const runtime_tensor* input = layer->tensor[SLOT_INPUT];
  const size_t values = tile_values(layer);
  if (layer->input_pixels == (const float*)input->data && layer->gather_versions[0] == input->version &&
      layer->gather_versions[1] == layer->tensor[SLOT_ACTIVE]->version && layer->gather_versions[2] == tiles->version &&
      tiles->version != 0) {
    layer->gathered_tiles_version = tiles->version;
    return;
  }
  {
    tile_job job;
    job.from_tiles = 0;
    run_tile_copies(layer, values * sizeof(float), gather_task, &job);
  }
  tensor_written(tiles);
  layer->gathered_tiles_version = tiles->version;
  layer->gather_versions[0] = input->version;
  layer->gather_versions[1] = layer->tensor[SLOT_ACTIVE]->version;
  layer->gather_versions[2] = tiles->version;
}

/* The reference takes the active blocks' input tiles. Right after GATHER_TILES they are
 * already packed, in active-list order and still in cache: whole-tile copies from there
 * instead of a second gather with its padding logic. Otherwise the padding is written only
 * when it may not be zero (session_internal.h: reference_padding_zero_version). */
static void store_reference_one(const tile_job* job, uint32_t k) {
  const runtime_layer* layer = job->layer;
  const size_t values = tile_values(layer);
  const uint32_t block = layer->active_blocks[k];
  float* destination = (float*)layer->tensor[SLOT_REFERENCE]->data + (size_t)block * values;
  if (job->from_tiles) {
    memcpy(destination, (const float*)layer->tensor[SLOT_TILES]->data + k * values, values * sizeof(float));
  } else {
    dynrt_copy_input_tile(layer, block, destination, job->write_padding);
  }
}
TILE_TASK(store_reference_task, store_reference_one)

void dynrt_store_reference(runtime_layer* layer) {
  runtime_tensor* reference = layer->tensor[SLOT_REFERENCE];
  const runtime_tensor* tiles = layer->tensor[SLOT_TILES];
  tile_job job;
  job.from_tiles =
      tiles != NULL && layer->gathered_tiles_version != 0 && layer->gathered_tiles_version == tiles->version;
  /* the gate's energies were of this input and this reference: a stored tile's residual is 0 */
  const int energies_current = layer->energy_cache != NULL && layer->energy_input_version != 0 &&
                               layer->energy_input_version == layer->tensor[SLOT_INPUT]->version &&
                               layer->energy_reference_version == reference->version;
  job.write_padding = !reference_padding_is_zero(layer);
  run_tile_copies(layer, tile_values(layer) * sizeof(float), store_reference_task, &job);
  tensor_written(reference);
  if (energies_current) {
    const size_t pixels = (size_t)layer->grid.tile_size[0] * layer->grid.tile_size[1];
    uint32_t k;
    for (k = 0; k < layer->active_count; ++k) {
      const uint32_t block = layer->active_blocks[k];
      memset(layer->energy_cache + (size_t)block * pixels, 0, pixels * sizeof(float));
      layer->energy_valid[block] = 1;
    }
    layer->energy_reference_version = reference->version;
  }
  /* zero still only if it was: a tile not stored keeps whatever padding it had */
  if (!job.write_padding) layer->reference_padding_zero_version = reference->version;
  if (layer->reference_store_due) {
    layer->reference_store_due = 0;
    layer->settled_reference_version = reference->version;
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

static void scatter_one(const tile_job* job, uint32_t k) {
  const runtime_layer* layer = job->layer;
  const size_t b = (size_t)layer->grid.block, channels = layer->out_channels;
  const block_region region = region_of_block(&layer->grid, layer->active_blocks[k]);
  /* tile_output[k, :rows, :cols, :] */
  copy_region_rows((float*)layer->tensor[SLOT_OUTPUT]->data, (size_t)layer->grid.output_size[1],
                   (const float*)layer->tensor[SLOT_TILE_OUTPUT]->data + k * b * b * channels, b, 0, 0, &region,
                   channels);
}
TILE_TASK(scatter_task, scatter_one)

static void copy_block_one(const tile_job* job, uint32_t k) {
  const runtime_layer* layer = job->layer;
  const size_t width = (size_t)layer->grid.output_size[1];
  const block_region region = region_of_block(&layer->grid, layer->active_blocks[k]);
  copy_region_rows((float*)layer->tensor[SLOT_OUTPUT]->data, width,
                   (const float*)layer->tensor[SLOT_DENSE_OUTPUT]->data, width, region.row_begin, region.col_begin,
                   &region, layer->out_channels);
}
TILE_TASK(copy_block_task, copy_block_one)

/* Writes the active blocks of the layer's output with `task` (scatter or copy), then marks
 * their change cells on the calling thread: neighbouring blocks may share a cell. */
static void write_output_blocks(runtime_layer* layer, runtime_task task) {
  const size_t b = (size_t)layer->grid.block;
  tile_job job;
  uint32_t k;
  region_write_begin(layer->tensor[SLOT_OUTPUT]);
  job.from_tiles = 0;
  run_tile_copies(layer, b * b * layer->out_channels * sizeof(float), task, &job);
  for (k = 0; k < layer->active_count; ++k) {
    const block_region region = region_of_block(&layer->grid, layer->active_blocks[k]);
    region_write_cells(layer->tensor[SLOT_OUTPUT], region.row_begin, region.row_end, region.col_begin,
                       region.col_end);
  }
}

void dynrt_scatter_tiles(runtime_layer* layer) { write_output_blocks(layer, scatter_task); }

void dynrt_copy_blocks(runtime_layer* layer) { write_output_blocks(layer, copy_block_task); }

/* What DSTEP_APPLY does to each value of a patch row this frame. keep and take hold the
 * channel decisions once per pixel of a whole patch row, so that a row is one flat loop. */
typedef struct channel_plan {
  const int32_t* keep;  /* 1: reuse, the value stays */
  const int32_t* take;  /* 1: compute, the computed value (0 in an inactive patch) */
  int none_kept;        /* no channel reuses: an inactive patch becomes all 0 */
  int all_taken;        /* every channel computes: an active patch is a plain copy */
} channel_plan;

/* DSTEP_APPLY on the `count` values of one patch row; computed is NULL in an inactive
 * patch. Channels that neither reuse nor compute (skip) become 0. Both loads are
 * unconditional and the choice is a select, so the loop becomes SIMD code without branches. */
static void apply_channel_decisions(float* restrict values, const float* restrict computed, const channel_plan* plan,
                                    size_t count) {
  const int32_t* keep = plan->keep;
  const int32_t* take = plan->take;
  size_t i;
  if (computed == NULL) {
    if (plan->none_kept) {
      memset(values, 0, count * sizeof(float));
      return;
    }
    for (i = 0; i < count; ++i) values[i] = keep[i] ? values[i] : 0.0f;
    return;
  }
  if (plan->all_taken) {
    memcpy(values, computed, count * sizeof(float));
    return;
  }
  for (i = 0; i < count; ++i) {
    const float current = values[i], value = computed[i];
    const float replacement = take[i] ? value : 0.0f;
    values[i] = keep[i] ? current : replacement;
  }
}

static void dstep_apply_versions(const runtime_layer* layer, uint32_t source, uint64_t versions[4]) {
  const runtime_tensor* computed = source == DSTEP_SOURCE_TILES   ? layer->tensor[SLOT_TILE_OUTPUT]
                                   : source == DSTEP_SOURCE_DENSE ? layer->tensor[SLOT_DENSE_OUTPUT]
                                                                  : NULL;
  versions[0] = layer->tensor[SLOT_OUTPUT]->version;
  versions[1] = layer->tensor[SLOT_DECISIONS]->version;
  versions[2] = layer->tensor[SLOT_ACTIVE]->version;
  versions[3] = computed != NULL ? computed->version : 0;
}

static void dstep_apply_values(runtime_layer* layer, uint32_t source);

/* DSTEP_APPLY, skipped when it would write what the output already holds. The decisions and
 * active tensors mirror the layer's decision arrays and change version only when they do. */
void dynrt_dstep_apply(runtime_layer* layer, uint32_t source) {
  uint64_t versions[4];
  dstep_apply_versions(layer, source, versions);
  if (layer->applied_valid && layer->applied_source == source &&
      memcmp(versions, layer->applied_versions, sizeof versions) == 0) {
    return;
  }
  dstep_apply_values(layer, source);
  dstep_apply_versions(layer, source, layer->applied_versions);
  layer->applied_source = source;
  layer->applied_valid = 1;
}

/* DSTEP_APPLY over patches cut into tasks: task t applies its share of the patches, each
 * patch region written by one task only. */
typedef struct apply_job {
  runtime_layer* layer;
  uint32_t source, tasks;
  channel_plan plan;
} apply_job;

static void apply_patches_task(void* argument, uint32_t task) {
  const apply_job* job = (const apply_job*)argument;
  runtime_layer* layer = job->layer;
  float* output = (float*)layer->tensor[SLOT_OUTPUT]->data;
  const size_t width = (size_t)layer->grid.output_size[1], channels = layer->out_channels;
  const size_t b = (size_t)layer->grid.block;
  const uint32_t patches = (uint32_t)layer->grid.block_count, source = job->source;
  const uint32_t first = task_share_begin(patches, task, job->tasks), end = task_share_begin(patches, task + 1, job->tasks);
  uint32_t patch, k = 0; /* k: the patch's position in the active list (ascending) */
  for (patch = 0; patch < first; ++patch) k += layer->block_mask[patch] != 0;
  for (patch = first; patch < end; ++patch) {
    const block_region region = region_of_block(&layer->grid, patch);
    const int active = layer->block_mask[patch] && source != DSTEP_SOURCE_NONE;
    const float* computed = NULL;
    size_t computed_width = 0, computed_row = 0, computed_col = 0, y;
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
      apply_channel_decisions(
          output + ((region.row_begin + y) * width + region.col_begin) * channels,
          computed != NULL ? computed + ((computed_row + y) * computed_width + computed_col) * channels : NULL,
          &job->plan, (region.col_end - region.col_begin) * channels);
    }
  }
}

/* DSTEP_APPLY: per output channel, skip -> 0, reuse -> unchanged, compute -> the computed
 * value in active patches and 0 in the others. `source` says where the computed values
 * are: the packed tile outputs (in active-list order), the dense output, or nowhere
 * (nothing computed: compute channels are 0). */
static void dstep_apply_values(runtime_layer* layer, uint32_t source) {
  const size_t channels = layer->out_channels;
  const size_t b = (size_t)layer->grid.block;
  const uint8_t* decisions = layer->channel_decisions;
  int32_t* keep = layer->channel_keep;
  int32_t* take = layer->channel_take;
  size_t c, x, kept = 0, taken = 0;
  apply_job job;
  for (c = 0; c < channels; ++c) {
    keep[c] = decisions[c] == CHANNEL_REUSE;
    take[c] = decisions[c] == CHANNEL_COMPUTE;
    kept += (size_t)keep[c];
    taken += (size_t)take[c];
  }
  if (kept == channels) return; /* every channel keeps its previous values */
  tensor_written(layer->tensor[SLOT_OUTPUT]);
  for (x = 1; x < b; ++x) {
    memcpy(keep + x * channels, keep, channels * sizeof(int32_t));
    memcpy(take + x * channels, take, channels * sizeof(int32_t));
  }
  job.layer = layer;
  job.source = source;
  job.plan.keep = keep;
  job.plan.take = take;
  job.plan.none_kept = kept == 0;
  job.plan.all_taken = taken == channels;
  /* a patch writes its b x b x channels values and reads as many */
  job.tasks = dynrt_task_count(layer->session, (uint32_t)layer->grid.block_count, 2 * b * b * channels * sizeof(float));
  dynrt_run_tasks(layer->session, job.tasks, apply_patches_task, &job);
}

/* COPY_CHANNELS: a D-STEP channel group's output into its channels of the layer's assembled
 * output. Compared first, pixel by pixel up to the first difference: a group whose results
 * were reused (a still frame) leaves the destination at its version, so DSTEP_APPLY after it
 * can be skipped too. */
void dynrt_copy_channels(runtime_tensor* destination, const runtime_tensor* source, uint32_t first, uint32_t batch) {
  const size_t pixels = (size_t)batch * source->dims[1] * source->dims[2];
  const size_t source_channels = source->dims[3], destination_channels = destination->dims[3];
  const size_t bytes = source_channels * sizeof(float);
  const float* from = (const float*)source->data;
  float* to = (float*)destination->data + first;
  size_t p = 0;
  while (p < pixels && memcmp(to + p * destination_channels, from + p * source_channels, bytes) == 0) ++p;
  if (p == pixels) return;
  for (; p < pixels; ++p) memcpy(to + p * destination_channels, from + p * source_channels, bytes);
  tensor_written(destination);
}
