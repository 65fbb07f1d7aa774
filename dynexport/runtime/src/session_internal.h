/*
 * The session's private structures, shared by the files that implement it:
 *   session.c  create (one arena allocation), destroy, describe, reset, queries
 *   step.c     the frame loop: input checks, the instruction interpreter, statistics
 *   gates.c    SKIP_GATE scoring and DSTEP_DECIDE
 *   tiles.c    tile gather / scatter and the other block copies
 *   nonfinite.c the NaN / Inf scan (a leaf: step.c and gates.c call it)
 *
 * Everything below lives in the session's arena. Tables are copies of the plan (names
 * point into the session's copy of the string section). The decisions a layer made this
 * frame are kept in private arrays: the plan's `active` / `decisions` tensors are written as
 * copies for segments that read them, but the runtime never trusts what is in them, so a
 * segment that overwrites them cannot make a copy go out of range.
 */
#ifndef DYNRT_SESSION_INTERNAL_H
#define DYNRT_SESSION_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "block_grid.h"
#include "dynrt.h"
#include "dynrt_backend_impl.h"
#include "plan_format.h"
#include "status.h"

typedef struct runtime_tensor {
  const char* name;
  uint32_t dtype, layout, role, rank;  /* layout: dynrt_operand_layout (the plan's, validated) */
  uint32_t dims[4];  /* dims[rank..4) are 0 */
  size_t bytes;
  void* data;        /* aligned to the backend's buffer alignment (>= 64), zero at create, followed
                        by the backend's buffer_tail_bytes of zeros */
  /* bumped by every write (tensor_written); a fixed segment whose inputs and outputs are
   * at the versions of its last run is not run again (step.c) */
  uint64_t version;
  /* Where the tensor changed, by version (block-level change tracking, issue 14). On 4-D
   * float maps of batch 1 only (cell_versions NULL otherwise): the map is cut into cells of
   * CHANGE_CELL x CHANGE_CELL pixels, and cell_versions[cell] is the version of the last
   * write that touched that cell. A write of unknown extent sets whole_version instead.
   * "Changed since version V" at a cell: whole_version > V or cell_versions[cell] > V.
   * Within a cell, cell_boxes[cell] bounds the pixels the writes of the last version touched,
   * and cell_previous[cell] is the version of the write before: when that is <= V, the box
   * is all that changed since V (a frame that moved a few pixels of a cell does not reach
   * the blocks whose halos read only the cell's other pixels), else the whole cell may. */
  uint64_t whole_version;
  uint64_t* cell_versions;  /* [cell_rows * cell_cols], in the arena */
  uint64_t* cell_previous;  /* [cell_rows * cell_cols], in the arena */
  struct cell_box* cell_boxes;  /* [cell_rows * cell_cols], in the arena */
  uint32_t cell_rows, cell_cols;
} runtime_tensor;

#define CHANGE_CELL 8u

/* Pixel rows [row_begin, row_end) x columns [col_begin, col_end) of one change cell, in the
 * cell's own coordinates (0..CHANGE_CELL). */
typedef struct cell_box {
  uint8_t row_begin, row_end, col_begin, col_end;
} cell_box;

static const cell_box WHOLE_CELL = {0, CHANGE_CELL, 0, CHANGE_CELL};

static inline int cell_boxes_meet(cell_box a, cell_box b) {
  return a.row_begin < b.row_end && b.row_begin < a.row_end && a.col_begin < b.col_end && b.col_begin < a.col_end;
}

/* `*into` grows to bound `box` as well; an empty box (all zero) bounds nothing. */
static inline void cell_box_join(cell_box* into, cell_box box) {
  if (into->row_end <= into->row_begin) {
    *into = box;
    return;
  }
  if (box.row_begin < into->row_begin) into->row_begin = box.row_begin;
  if (box.row_end > into->row_end) into->row_end = box.row_end;
  if (box.col_begin < into->col_begin) into->col_begin = box.col_begin;
  if (box.col_end > into->col_end) into->col_end = box.col_end;
}

/* Notes a write of `box` of `cell` at the tensor's current version (region_write_begin). */
static inline void cell_written(runtime_tensor* tensor, size_t cell, cell_box box) {
  cell_box* kept = &tensor->cell_boxes[cell];
  if (tensor->cell_versions[cell] == tensor->version) {
    cell_box_join(kept, box);
    return;
  }
  tensor->cell_previous[cell] = tensor->cell_versions[cell];
  tensor->cell_versions[cell] = tensor->version;
  *kept = box;
}

/* Whether `cell` of a tracked map may have changed after version `since` (whole_version
 * aside), and if so the part of it that may have: `*box`. */
static inline int cell_changed_since(const runtime_tensor* tensor, size_t cell, uint64_t since, cell_box* box) {
  if (tensor->cell_versions[cell] <= since) return 0;
  *box = tensor->cell_previous[cell] > since ? WHOLE_CELL : tensor->cell_boxes[cell];
  return 1;
}

/* The part of pixel range [begin, end) that falls in the cell starting at `origin`. */
static inline void cell_span(size_t begin, size_t end, size_t origin, uint8_t* local_begin, uint8_t* local_end) {
  *local_begin = (uint8_t)(begin > origin ? begin - origin : 0);
  *local_end = (uint8_t)(end < origin + CHANGE_CELL ? end - origin : CHANGE_CELL);
}

/* A write whose extent is not tracked: the whole tensor may have changed. */
static inline void tensor_written(runtime_tensor* tensor) {
  tensor->version += 1;
  tensor->whole_version = tensor->version;
}

/* A write of some regions of a map, as one new version: region_write_begin, then
 * region_write_cells per region of pixel rows [row_begin, row_end) x columns [col_begin,
 * col_end). On an untracked tensor it is a whole write. */
static inline uint64_t region_write_begin(runtime_tensor* tensor) {
  tensor->version += 1;
  if (tensor->cell_versions == NULL) tensor->whole_version = tensor->version;
  return tensor->version;
}

static inline void region_write_cells(runtime_tensor* tensor, size_t row_begin, size_t row_end, size_t col_begin,
                                      size_t col_end) {
  size_t r, c;
  cell_box box;
  if (tensor->cell_versions == NULL || row_end <= row_begin || col_end <= col_begin) return;
  for (r = row_begin / CHANGE_CELL; r <= (row_end - 1) / CHANGE_CELL && r < tensor->cell_rows; ++r) {
    cell_span(row_begin, row_end, r * CHANGE_CELL, &box.row_begin, &box.row_end);
    for (c = col_begin / CHANGE_CELL; c <= (col_end - 1) / CHANGE_CELL && c < tensor->cell_cols; ++c) {
      cell_span(col_begin, col_end, c * CHANGE_CELL, &box.col_begin, &box.col_end);
      cell_written(tensor, r * tensor->cell_cols + c, box);
    }
  }
}

/* Whether pixel rows [row_begin, row_end) x columns [col_begin, col_end) of a tracked map
 * may have changed after version `since` (1 for an untracked tensor that changed at all). */
static inline int region_changed_since(const runtime_tensor* tensor, uint64_t since, size_t row_begin,
                                       size_t row_end, size_t col_begin, size_t col_end) {
  size_t r, c;
  cell_box region, changed;
  if (tensor->whole_version > since) return 1;
  if (tensor->cell_versions == NULL) return tensor->version > since;
  if (row_end <= row_begin || col_end <= col_begin) return 0;
  for (r = row_begin / CHANGE_CELL; r <= (row_end - 1) / CHANGE_CELL && r < tensor->cell_rows; ++r) {
    cell_span(row_begin, row_end, r * CHANGE_CELL, &region.row_begin, &region.row_end);
    for (c = col_begin / CHANGE_CELL; c <= (col_end - 1) / CHANGE_CELL && c < tensor->cell_cols; ++c) {
      cell_span(col_begin, col_end, c * CHANGE_CELL, &region.col_begin, &region.col_end);
      if (cell_changed_since(tensor, r * tensor->cell_cols + c, since, &changed) && cell_boxes_meet(region, changed)) {
        return 1;
      }
    }
  }
  return 0;
}

typedef struct runtime_segment {
  const char* name;
  uint32_t max_batch;  /* > 0: tile segment */
  uint32_t input_count, output_count;
  dynrt_operand_info* input_info;
  dynrt_operand_info* output_info;
  void** input_buffers;   /* the same addresses on every call (adapters may bind once) */
  void** output_buffers;
  runtime_tensor** inputs;     /* the operands' tensors */
  runtime_tensor** outputs;
  /* fixed segments: the operands' versions right after the last successful run */
  uint64_t* input_versions;
  uint64_t* output_versions;
  int results_valid;           /* that run happened since create / reset */
  uint32_t last_batch;         /* the batch of that run (tile segments: reused only at the same batch) */
  int touches_input;           /* the plan's input tensor is one of its operands */
} runtime_segment;

typedef struct runtime_layer {
  const char* name;
  uint32_t kind, gate;
  block_grid grid;
  uint32_t in_channels, out_channels, dense_cutoff;
  float threshold, norm_scale, gate_bias;
  const float* gate_weights;  /* GUMBEL: [kernel_h, kernel_w, in_channels] */
  uint64_t macs_per_position, gate_macs_per_position;
  runtime_tensor* tensor[LAYER_TENSOR_SLOTS];  /* NULL when the plan has none */
  /* where SKIP_GATE, GATHER_TILES and STORE_REFERENCE read the input pixels this frame: the
   * caller's frame while the plan input is not copied yet (step.c), else the input tensor */
  const float* input_pixels;
  uint64_t gathered_tiles_version;  /* the tiles tensor's version right after this frame's gather, or 0 */
  /* the input, active list and tiles versions right after the last gather: the same again
   * means the packed tiles already hold what a gather would write */
  uint64_t gather_versions[3];
  uint32_t tile_capacity;         /* leading dim of tiles (0 without) */
  uint32_t tile_output_capacity;  /* leading dim of tile_output (0 without) */

  /* decisions of the last frame */
  uint32_t active_count;
  uint32_t* active_blocks;      /* [block_count], ascending; the first active_count are valid */
  uint8_t* block_mask;          /* [block_count], 1 = computed */
  uint8_t* channel_decisions;   /* [out_channels], enum channel_decision */
  /* DSTEP_APPLY scratch, [block * out_channels]: per value of a patch row, 1 where its channel
   * is reused (keep) or computed (take) */
  int32_t* channel_keep;
  int32_t* channel_take;

  /* set_tie_decisions: the reference's mask for the next step */
  uint8_t* tie_reference;       /* [block_count] */
  int tie_reference_pending;

  /* what a skip-conv gate may know without scoring (gates.c: settled_without_scoring) */
  uint64_t gate_input_version;         /* the input's version at the last decision; 0: none */
  uint64_t settled_reference_version;  /* the reference's version once that decision's blocks were stored */
  int reference_store_due;             /* that decision computed blocks not stored in the reference yet */
  uint32_t gate_ties;                  /* ties of that decision */
  /* The reference's version while its tiles' padding (the positions outside the input map)
   * is known to be zero: at create (a zeroed arena, version 0) and after each STORE_REFERENCE,
   * which never writes anything else there. Any other write bumps the version. While it holds,
   * STORE_REFERENCE copies only the in-map part of a tile and a gate takes the padding's
   * residual to be 0 without reading it: a wide layer on a small map is mostly padding. */
  uint64_t reference_padding_zero_version;
  /* A norm gate's pixel energies (sum over channels of the squared residual, per tile pixel)
   * kept per block, so that a block whose tile changed in a few pixels is summed again there
   * only (gates.c: refresh_changed_energies). energy_valid[block]: its slot holds the
   * energies of the input at energy_input_version against the reference at
   * energy_reference_version; 0 for either version: no slot holds anything. NULL on gumbel
   * gates and other layers. */
  float* energy_cache;     /* [block_count * tile_h * tile_w] */
  uint8_t* energy_valid;   /* [block_count] */
  uint64_t energy_input_version, energy_reference_version;

  /* DSTEP_APPLY is idempotent: with its inputs (decisions, active list, computed values) and
   * its output at the versions right after its last run, running it again changes nothing */
  uint64_t applied_versions[4];  /* output, decisions, active, source (0 without one) */
  uint32_t applied_source;
  int applied_valid;

  /* DSTEP_POLICY (gates.c): scratch, and the versions of what it read (input, previous
   * pooled, primed) and wrote (pooled, then the logits) right after its last run: the same
   * again means its outputs still hold what it would compute */
  double* policy_sums;           /* [2 * block_count] region sums, then [in_channels] channel sums */
  float* policy_values;          /* [hidden]: the channel MLP's activations */
  double* policy_row_regions;    /* [input rows * 2 * column regions]: one row's region sums */
  float* policy_row_sums;        /* [input rows * in_channels]: one row's channel sums */
  uint32_t policy_hidden;        /* the channel policy's hidden width (0 without one) */
  uint64_t policy_versions[6];
  int policy_valid;

  struct dynrt_session* session;  /* the layer's session (its tasks: dynrt_run_tasks) */

  /* statistics of the frame being run */
  uint32_t path;                /* dynrt_layer_path */
  uint32_t ties;
  int gate_scored;              /* a skip-conv gate scored its blocks (primed) / a D-STEP policy decided, this frame */
  /* D-STEP channel groups (BRANCH_IF_GROUP_IDLE) met this frame, and the output channels of
   * the groups that ran: the convolution computed those channels only */
  int channel_groups_met;
  uint32_t channels_run;
} runtime_layer;

/* SKIP_GATE scratch of one task (gates.c). */
typedef struct gate_scratch {
  float* values;        /* [th * tw * C]: |tile - reference| of the block being scored (gumbel) */
  float* pixel_sums;    /* [th * tw]: per tile pixel, sum over channels of (tile - reference)^2 (norm) */
  float* row_sums;      /* [th]: per tile row, an upper bound of its share of any window's sum */
  uint8_t* value_rows;  /* [th]: 1 where values holds that tile row (gumbel, computed lazily) */
} gate_scratch;

/* The runtime's own work on several threads (issue 14): SKIP_GATE's blocks and the tile
 * copies (GATHER_TILES, STORE_REFERENCE, SCATTER_TILES, COPY_BLOCKS) are cut into tasks, each
 * a contiguous share of the list (blocks to score, tiles to copy) with scratch of its own,
 * run through the backend's parallel_for on the threads its segments use (no second pool
 * competes for the cores). Every task writes only its own blocks' results, so decisions and
 * outputs are those of the serial loop, bit for bit. */
#define DYNRT_MAX_TASKS 8u
/* A task is worth handing to another thread only with at least this much memory to touch:
 * waking a worker and waiting for it costs about as much as copying 32 KB (~1-3 us). */
#define DYNRT_TASK_MIN_BYTES 32768u

typedef void (*runtime_task)(void* argument, uint32_t task);

/* The [begin, end) share of `count` items that task `task` of `tasks` takes. */
static inline uint32_t task_share_begin(uint32_t count, uint32_t task, uint32_t tasks) {
  return (uint32_t)((uint64_t)count * task / tasks);
}

struct dynrt_session {
  dynrt_backend_t backend;
  void* backend_state;         /* what the backend's prepare_session made for this session */
  void* allocation;            /* the one block from malloc; the arena starts 64-aligned inside */
  size_t arena_bytes;
  size_t state_bytes;

  uint32_t tensor_count, segment_count, layer_count, instruction_count;
  runtime_tensor* tensors;
  runtime_segment* segments;
  runtime_layer* layers;
  plan_instruction* instructions;
  runtime_tensor* input;       /* the plan's frame input */
  /* the caller's frame during a step, until an instruction needs the input tensor itself
   * and it is copied in (materialize_input, step.c); NULL otherwise */
  const float* pending_frame;
  /* no layer tensor other than a layer's input is the plan input, so reading the caller's
   * frame in place is the same as reading the input tensor (else every frame is copied) */
  int frame_read_in_place;
  /* The layer whose SKIP_GATE is the program's first instruction (or second, after a
   * BRANCH_IF_HOLDING, and then on frames without a hold), reads the frame and has
   * tiles covering all of it, or NO_LAYER. Its scoring pass reads every frame value, so it
   * checks them for NaN/Inf instead of a separate scan (frame_check_deferred this step). */
  uint32_t frame_checking_layer;
  int frame_check_deferred;
  runtime_tensor* output;      /* the plan's result */
  /* BRANCH_IF_BUSY: frames that still take the dense fallback after a busy one (its d);
   * 0 after create and reset */
  uint32_t fallback_hold;
  /* [cell_rows * cell_cols] of the input tensor when it is a tracked map, else NULL: then
   * each frame is diffed against the input tensor (the previous frame) cell by cell and
   * only the changed cells are checked for NaN/Inf, copied in and marked (step.c), so the
   * first gate scores only the blocks they reach, like every other gate */
  cell_box* frame_cells;  /* per cell, the pixels that differ; empty (row_end 0): none */

  /* SKIP_GATE scratch (gates.c), sized for the largest of any skip-conv layer: one per task */
  gate_scratch gate_scratch[DYNRT_MAX_TASKS];
  uint8_t* gate_decisions;     /* [blocks]: decisions held back until the frame check passed */
  uint32_t* gate_blocks;       /* [blocks]: the blocks SKIP_GATE scores this frame, ascending */
  /* how many tasks the runtime's own work may be split into: the backend's parallel_threads
   * (at most DYNRT_MAX_TASKS) when it has parallel_for, else 1 */
  uint32_t task_limit;

  int backend_state_made;      /* prepare_session succeeded: release_session is due at destroy */
  char last_error[256];
};

/* session.c: how many tasks `count` items of `item_bytes` each are cut into (1: run them on
 * the calling thread), and running them: task(argument, t) for every t < tasks, through the
 * backend's parallel_for when tasks > 1. */
uint32_t dynrt_task_count(dynrt_const_session_t session, uint32_t count, uint64_t item_bytes);
void dynrt_run_tasks(dynrt_session_t session, uint32_t tasks, runtime_task task, void* argument);

/* session.c: primed = 0 in every layer (the next frame is computed densely), no segment
 * result is reused, and no dense fallback is held. */
void dynrt_reset_primed(dynrt_session_t session);

/* gates.c. SKIP_GATE returns DYNRT_NONFINITE_INPUT, having changed nothing, when it checked
 * the frame for step.c (frame_check_deferred) and found a NaN or Inf; else DYNRT_OK. */
dynrt_status dynrt_skip_gate(dynrt_session_t session, runtime_layer* layer);
void dynrt_dstep_decide(runtime_layer* layer);
/* FORGET_LAYERS: the layer was computed outside its instructions (the dense fallback): every
 * block counts as computed, and it is unprimed (its state was not kept). */
void dynrt_forget_layer(runtime_layer* layer);
/* gates.c: BRANCH_IF_HOLDING's decisions: every block of a skip-conv layer is computed this
 * frame, without scoring (as on its first frame), and the layer is primed. */
void dynrt_gate_every_block(runtime_layer* layer);
/* gates.c: DSTEP_POLICY: the D-STEP layer's policies on its input (dynexport.nn.dstep's
 * spatial_logits / channel_logits) -> its logits tensors and `pooled` [1, Cin]. */
void dynrt_dstep_policy(runtime_layer* layer, runtime_tensor* pooled, const runtime_tensor* previous_pooled);

/* tiles.c */

/* Where a block's input tile lies in the layer's input: tile rows [first_row, last_row) and
 * columns [first_col, last_col) are inside it, the rest reads zero padding. */
typedef struct tile_placement {
  size_t first_row, last_row, first_col, last_col;
  const float* first_input;  /* the input pixel under tile (first_row, first_col); NULL if all padding */
  size_t input_row_values;   /* floats from one input row to the next: W * C */
} tile_placement;
tile_placement dynrt_tile_placement(const runtime_layer* layer, uint32_t block);

/* The input pixel under tile column first_col of tile row y (the row's in-bounds pixels
 * follow it, all channels contiguous), or NULL when that row is all padding. */
static inline const float* tile_input_row(const tile_placement* placement, size_t y) {
  if (y < placement->first_row || y >= placement->last_row) return NULL;
  return placement->first_input + (y - placement->first_row) * placement->input_row_values;
}

/* The block copies; the batch capacity was checked by the caller. dynrt_copy_input_tile
 * writes the padding's zeros only when `write_padding` (the destination's may be zero already). */
void dynrt_copy_input_tile(const runtime_layer* layer, uint32_t block, float* destination, int write_padding);
static inline int reference_padding_is_zero(const runtime_layer* layer) {
  return layer->tensor[SLOT_REFERENCE] != NULL &&
         layer->tensor[SLOT_REFERENCE]->version == layer->reference_padding_zero_version;
}
void dynrt_gather_tiles(runtime_layer* layer);
void dynrt_store_reference(runtime_layer* layer);
void dynrt_scatter_tiles(runtime_layer* layer);
void dynrt_copy_blocks(runtime_layer* layer);
void dynrt_dstep_apply(runtime_layer* layer, uint32_t source);
/* COPY_CHANNELS: destination[:batch, ..., first:first + Cs] = source[:batch] (validated shapes);
 * no write (no new version) when the destination already holds those values. */
void dynrt_copy_channels(runtime_tensor* destination, const runtime_tensor* source, uint32_t first, uint32_t batch);

/* clock.c: a monotonic clock in nanoseconds (0 where the platform has none). */
uint64_t dynrt_monotonic_ns(void);

#endif /* DYNRT_SESSION_INTERNAL_H */
