/*
 * One frame: argument checks, the NaN/Inf scan (before any state changes), the instruction
 * interpreter (dynexport/plan/interpreter.py is its specification), and the statistics.
 * Nothing here allocates.
 */
#include <string.h>

#include "nonfinite.h"
#include "session_internal.h"

static const char* const OPCODE_NAMES[OP_COUNT] = {
    "RUN_SEGMENT",  "SKIP_GATE",       "BRANCH_IF_NONE", "BRANCH_IF_DENSE", "JUMP",       "GATHER_TILES",
    "SCATTER_TILES", "COPY_BLOCKS",    "STORE_REFERENCE", "DSTEP_DECIDE",   "DSTEP_APPLY", "COPY_TENSOR",
    "BRANCH_IF_GROUP_IDLE", "COPY_CHANNELS", "BRANCH_IF_BUSY", "FORGET_LAYERS", "BRANCH_IF_HOLDING", "DSTEP_POLICY"};

static error_sink session_errors(dynrt_session_t session) {
  error_sink sink;
  sink.text = session->last_error;
  sink.capacity = sizeof session->last_error;
  return sink;
}

/* DYNRT_NONFINITE_INPUT naming the first NaN or Inf of the frame, or DYNRT_OK. */
static dynrt_status reject_nonfinite_frame(dynrt_session_t session, const float* frame, size_t count) {
  error_sink error = session_errors(session);
  uint32_t bits = 0;
  const size_t bad = dynrt_first_nonfinite(frame, count, &bits);
  if (bad == count) return DYNRT_OK;
  return dynrt_fail(&error, DYNRT_NONFINITE_INPUT,
                    "step: input element %lu of %lu is %s; the frame was rejected and no state changed",
                    (unsigned long)bad, (unsigned long)count,
                    (bits & 0x007FFFFFu) != 0 ? "NaN" : (bits & 0x80000000u) ? "-Inf" : "+Inf");
}

/* Until an instruction needs the plan's input tensor itself, the gates and tile copies read
 * the caller's frame where it is (runtime_layer.input_pixels): a frame whose active blocks
 * take the tile path is never copied whole. The input tensor is only read after
 * materialize_input copied the frame in; release_frame forgets the caller's pointer (at the
 * end of every step: it is not read afterwards). */
static void release_frame(dynrt_session_t session) {
  uint32_t i;
  session->pending_frame = NULL;
  for (i = 0; i < session->layer_count; ++i) {
    session->layers[i].input_pixels = (const float*)session->layers[i].tensor[SLOT_INPUT]->data;
  }
}

/* A frame equal to the input tensor's content is not a change: segments that read only it
 * keep their results (memcmp stops at the first difference of a changed frame). */
static void materialize_input(dynrt_session_t session) {
  if (session->pending_frame == NULL) return;
  if (memcmp(session->input->data, session->pending_frame, session->input->bytes) != 0) {
    memcpy(session->input->data, session->pending_frame, session->input->bytes);
    tensor_written(session->input);
  }
  release_frame(session);
}

/* The first and last value of [0, count) where `now` and `before` differ bit for bit, when
 * some do (memcmp's equality: a NaN equals its own bits). */
static int differing_span(const float* now, const float* before, size_t count, size_t* first, size_t* last) {
  const uint32_t* a = (const uint32_t*)(const void*)now;
  const uint32_t* b = (const uint32_t*)(const void*)before;
  size_t i = 0, j = count;
  /* memcmp's SIMD scan first: most cells of a changed row do not differ */
  if (memcmp(now, before, count * sizeof(float)) == 0) return 0;
  while (a[i] == b[i]) ++i;
  while (b[j - 1] == a[j - 1]) --j;
  *first = i;
  *last = j - 1;
  return 1;
}

/* The frame against the input tensor (which holds the previous frame's values), cell by
 * cell (CHANGE_CELL x CHANGE_CELL pixels): in each pixel row of a cell that differs, the
 * span of pixels that differ joins the cell's box, and each pixel row is checked for NaN/Inf
 * from its first differing value to its last (the values outside equal values checked
 * before); then, only if the whole frame is good, the boxes
 * are copied in and marked with one new version, so a gate scores only the blocks whose
 * tiles meet a changed pixel. A still region costs one memcmp per pixel row. On the calling
 * thread: at the start of a frame the backend's workers have slept since the last one (an
 * app steps every 33 ms; waking them costs ~32 us, README: Threads), more than half of this
 * pass saves (a still deep-net frame at 2 threads: 12-16 us serial, 16-27 us in two tasks). */
static dynrt_status take_frame_changes(dynrt_session_t session, const float* frame) {
  runtime_tensor* input = session->input;
  float* previous = (float*)input->data;
  const size_t height = input->dims[1], width = input->dims[2], channels = input->dims[3];
  const size_t row_values = width * channels, cell_cols = input->cell_cols;
  size_t y, cx, cell, cells = (size_t)input->cell_rows * cell_cols;
  int any = 0;
  memset(session->frame_cells, 0, cells * sizeof(cell_box));
  for (y = 0; y < height; ++y) {
    const float* now = frame + y * row_values;
    const float* before = previous + y * row_values;
    const uint8_t cell_row = (uint8_t)(y % CHANGE_CELL);
    size_t row_first = row_values, row_last = 0;
    uint32_t bits;
    if (memcmp(now, before, row_values * sizeof(float)) == 0) continue;
    for (cx = 0; cx < cell_cols; ++cx) {
      const size_t begin = cx * CHANGE_CELL * channels;
      const size_t end = (cx + 1) * CHANGE_CELL < width ? (cx + 1) * CHANGE_CELL * channels : row_values;
      cell_box changed;
      size_t first, last;
      if (!differing_span(now + begin, before + begin, end - begin, &first, &last)) continue;
      if (row_first == row_values) row_first = begin + first;
      row_last = begin + last;
      changed.row_begin = cell_row;
      changed.row_end = (uint8_t)(cell_row + 1);
      changed.col_begin = (uint8_t)(first / channels);
      changed.col_end = (uint8_t)(last / channels + 1);
      cell_box_join(&session->frame_cells[(y / CHANGE_CELL) * cell_cols + cx], changed);
      any = 1;
    }
    /* one scan per pixel row, from its first differing value to its last: the unchanged values
     * in between were checked with an earlier frame (one call per cell cost more than the scan
     * on a frame with sensor noise everywhere) */
    if (row_first < row_values &&
        dynrt_first_nonfinite(now + row_first, row_last + 1 - row_first, &bits) < row_last + 1 - row_first) {
      return reject_nonfinite_frame(session, frame, input->bytes / sizeof(float));
    }
  }
  if (!any) return DYNRT_OK;
  region_write_begin(input);
  for (cell = 0; cell < cells; ++cell) {
    const cell_box box = session->frame_cells[cell];
    const size_t first_row = (cell / cell_cols) * CHANGE_CELL, col = (cell % cell_cols) * CHANGE_CELL + box.col_begin;
    const size_t values = (size_t)(box.col_end - box.col_begin) * channels;
    size_t r;
    if (box.row_end == 0) continue;
    for (r = first_row + box.row_begin; r < first_row + box.row_end; ++r) {
      memcpy(previous + r * row_values + col * channels, frame + r * row_values + col * channels,
             values * sizeof(float));
    }
    cell_written(input, cell, box);
  }
  return DYNRT_OK;
}

/* Whether an instruction reads or writes the input tensor itself: a segment or a copy with
 * it as an operand. Layer instructions read the input through input_pixels only (with
 * frame_read_in_place, no other slot of a layer is the input tensor). */
static int needs_input_tensor(dynrt_const_session_t session, const plan_instruction* ins) {
  const uint32_t input = (uint32_t)(session->input - session->tensors);
  if (ins->op == OP_RUN_SEGMENT) return session->segments[ins->a].touches_input;
  if (ins->op == OP_COPY_TENSOR || ins->op == OP_COPY_CHANNELS) return ins->a == input || ins->b == input;
  return 0;
}

/* The count a layer's tile instructions work on must fit its packed buffers; a plan that
 * reaches a tile instruction with more active blocks than that lacks its dense branch. */
static dynrt_status check_tile_capacity(dynrt_session_t session, uint32_t pc, const runtime_layer* layer,
                                        uint32_t capacity) {
  error_sink error = session_errors(session);
  if (layer->active_count <= capacity) return DYNRT_OK;
  return dynrt_fail(&error, DYNRT_PLAN_INVALID,
                    "instruction %lu (%s): layer %s has %lu active blocks, more than its tile batch of %lu (the "
                    "plan lacks a dense branch); the session was reset",
                    (unsigned long)pc, OPCODE_NAMES[session->instructions[pc].op], layer->name,
                    (unsigned long)layer->active_count, (unsigned long)capacity);
}

/* A segment computes the same outputs from the same inputs: when none of its operands was
 * written since its last run (versions, session_internal.h) and the batch is the same, its
 * outputs still hold that run's results. A still frame then costs its gates only. */
static int segment_results_current(const runtime_segment* segment, uint32_t batch) {
  uint32_t k;
  if (!segment->results_valid || segment->last_batch != batch) return 0;
  for (k = 0; k < segment->input_count; ++k) {
    if (segment->inputs[k]->version != segment->input_versions[k]) return 0;
  }
  for (k = 0; k < segment->output_count; ++k) {
    if (segment->outputs[k]->version != segment->output_versions[k]) return 0;
  }
  return 1;
}

static void record_segment_run(runtime_segment* segment) {
  uint32_t k;
  for (k = 0; k < segment->output_count; ++k) tensor_written(segment->outputs[k]);
  /* read after the outputs' bump: an operand that is both is never current again */
  for (k = 0; k < segment->input_count; ++k) segment->input_versions[k] = segment->inputs[k]->version;
  for (k = 0; k < segment->output_count; ++k) segment->output_versions[k] = segment->outputs[k]->version;
}

/* An input cell's changed box, as pixel rows / columns of its map. */
static void cell_box_pixels(const runtime_tensor* map, size_t cell, cell_box box, size_t* rows, size_t* cols) {
  const size_t origin_row = (cell / map->cell_cols) * CHANGE_CELL, origin_col = (cell % map->cell_cols) * CHANGE_CELL;
  rows[0] = origin_row + box.row_begin;
  rows[1] = origin_row + box.row_end;
  cols[0] = origin_col + box.col_begin;
  cols[1] = origin_col + box.col_end;
}

/* After a pointwise or nearest-upsampling run (RUN_POINTWISE / RUN_NEAREST_UPSAMPLE,
 * validated: every operand a map, the inputs of one size, the outputs of one size, fy x fx
 * times the inputs'): an output pixel changed only where the input pixel it is made of
 * changed since the previous run, so only the cells those pixels fall in take the new
 * version and a later gate scores only the blocks they reach (gates.c). Deterministic
 * kernels give an unchanged pixel the same value again. Falls back to a whole write when
 * there is no previous run to compare with, an input changed in a way not tracked, an output
 * was written by anything else since, or an operand is both. */
static void record_spatial_run(runtime_segment* segment, int was_valid) {
  uint32_t i, o;
  size_t cell, cells, fy = 1, fx = 1;
  int tracked = was_valid && segment->input_count > 0;
  for (i = 0; tracked && i < segment->input_count; ++i) {
    const runtime_tensor* input = segment->inputs[i];
    if (input->cell_versions == NULL || input->whole_version > segment->input_versions[i]) tracked = 0;
    for (o = 0; tracked && o < segment->output_count; ++o) tracked = input != segment->outputs[o];
  }
  for (o = 0; tracked && o < segment->output_count; ++o) {
    const runtime_tensor* output = segment->outputs[o];
    tracked = output->cell_versions != NULL && output->version == segment->output_versions[o];
  }
  if (!tracked) {
    record_segment_run(segment);
    return;
  }
  if (segment->output_count > 0) {
    fy = segment->outputs[0]->dims[1] / segment->inputs[0]->dims[1];
    fx = segment->outputs[0]->dims[2] / segment->inputs[0]->dims[2];
  }
  cells = (size_t)segment->inputs[0]->cell_rows * segment->inputs[0]->cell_cols;
  for (o = 0; o < segment->output_count; ++o) region_write_begin(segment->outputs[o]);
  for (cell = 0; cell < cells; ++cell) {
    /* the pixels the inputs changed, scaled by fy x fx (1 x 1 for a pointwise run): the boxes
     * carry over */
    cell_box box, changed = {0, 0, 0, 0};
    size_t rows[2], cols[2];
    for (i = 0; i < segment->input_count; ++i) {
      if (cell_changed_since(segment->inputs[i], cell, segment->input_versions[i], &box)) cell_box_join(&changed, box);
    }
    if (changed.row_end == 0) continue;
    cell_box_pixels(segment->inputs[0], cell, changed, rows, cols);
    for (o = 0; o < segment->output_count; ++o) {
      region_write_cells(segment->outputs[o], rows[0] * fy, rows[1] * fy, cols[0] * fx, cols[1] * fx);
    }
  }
  for (i = 0; i < segment->input_count; ++i) segment->input_versions[i] = segment->inputs[i]->version;
  for (o = 0; o < segment->output_count; ++o) segment->output_versions[o] = segment->outputs[o]->version;
}

static dynrt_status run_segment(dynrt_session_t session, uint32_t pc, uint32_t segment_index, uint32_t batch_layer,
                                uint32_t flags, dynrt_frame_stats* stats) {
  runtime_segment* segment = &session->segments[segment_index];
  dynrt_backend_t backend = session->backend;
  error_sink error = session_errors(session);
  uint32_t batch = 1;
  uint64_t start, elapsed;
  dynrt_status status;
  if (batch_layer != NO_LAYER) {
    runtime_layer* layer = &session->layers[batch_layer];
    batch = layer->active_count;
    status = check_tile_capacity(session, pc, layer, segment->max_batch);
    if (status != DYNRT_OK) return status;
    layer->path = DYNRT_PATH_TILES;
    if (batch == 0) return DYNRT_OK; /* an empty batch computes nothing (the interpreter's [:0]) */
  }
  if (segment_results_current(segment, batch)) {
    if (stats != NULL) stats->segments_reused += 1;
    return DYNRT_OK;
  }
  start = dynrt_monotonic_ns();
  status = backend->run_segment(backend->context, session->backend_state, segment_index, batch,
                                segment->input_buffers, segment->output_buffers);
  elapsed = dynrt_monotonic_ns() - start;
  if (stats != NULL) {
    stats->segments_ns += elapsed;
    if (segment_index < stats->segment_capacity) stats->segment_ns[segment_index] += elapsed;
  }
  if (status != DYNRT_OK) {
    segment->results_valid = 0;
    return dynrt_fail(&error, DYNRT_BACKEND_ERROR,
                      "segment %lu (%s) failed in backend %s with status %d (%s); the session was reset: the next "
                      "frame is computed densely",
                      (unsigned long)segment_index, segment->name, backend->name != NULL ? backend->name : "(unnamed)",
                      (int)status, dynrt_status_string(status));
  }
  if (flags & RUN_KNOWN_FLAGS) {
    record_spatial_run(segment, segment->results_valid);
  } else {
    record_segment_run(segment);
  }
  segment->results_valid = 1;
  segment->last_batch = batch;
  return DYNRT_OK;
}

/* Runs the instructions; every jump goes forward (validated), so this ends. */
static dynrt_status run_program(dynrt_session_t session, dynrt_frame_stats* stats) {
  uint32_t pc = 0;
  while (pc < session->instruction_count) {
    const plan_instruction* ins = &session->instructions[pc];
    runtime_layer* layer = ins->op != OP_RUN_SEGMENT && ins->op != OP_JUMP && ins->op != OP_COPY_TENSOR &&
                                   ins->op != OP_COPY_CHANNELS
                               ? &session->layers[ins->a]
                               : NULL;
    dynrt_status status = DYNRT_OK;
    uint32_t next = pc + 1;
    if (session->pending_frame != NULL && needs_input_tensor(session, ins)) materialize_input(session);
    switch (ins->op) {
      case OP_RUN_SEGMENT:
        status = run_segment(session, pc, ins->a, ins->b, ins->c, stats);
        break;
      case OP_SKIP_GATE:
        status = dynrt_skip_gate(session, layer);
        break;
      case OP_BRANCH_IF_NONE:
        if (layer->active_count == 0) {
          layer->path = DYNRT_PATH_REUSE;
          next = ins->b;
        }
        break;
      case OP_BRANCH_IF_DENSE:
        if (layer->active_count > layer->dense_cutoff) {
          layer->path = DYNRT_PATH_DENSE;
          next = ins->b;
        }
        break;
      case OP_BRANCH_IF_BUSY:
        if (layer->active_count > ins->c) {
          session->fallback_hold = ins->d;
          next = ins->b;
        } else if (session->fallback_hold > 0) {
          session->fallback_hold -= 1;
          next = ins->b;
        }
        break;
      case OP_BRANCH_IF_HOLDING:
        if (session->fallback_hold > 0) {
          session->fallback_hold -= 1;
          dynrt_gate_every_block(layer);
          next = ins->b;
        }
        break;
      case OP_FORGET_LAYERS: {
        uint32_t i;
        for (i = ins->a; i < ins->a + ins->b; ++i) dynrt_forget_layer(&session->layers[i]);
        break;
      }
      case OP_JUMP:
        next = ins->a;
        break;
      case OP_GATHER_TILES:
        status = check_tile_capacity(session, pc, layer, layer->tile_capacity);
        if (status == DYNRT_OK) dynrt_gather_tiles(layer);
        break;
      case OP_SCATTER_TILES:
        status = check_tile_capacity(session, pc, layer, layer->tile_output_capacity);
        if (status == DYNRT_OK) dynrt_scatter_tiles(layer);
        break;
      case OP_COPY_BLOCKS:
        dynrt_copy_blocks(layer);
        break;
      case OP_STORE_REFERENCE:
        dynrt_store_reference(layer);
        break;
      case OP_DSTEP_POLICY:
        dynrt_dstep_policy(layer, &session->tensors[ins->b], &session->tensors[ins->c]);
        break;
      case OP_DSTEP_DECIDE:
        dynrt_dstep_decide(layer);
        layer->gate_scored = 1;
        break;
      case OP_BRANCH_IF_GROUP_IDLE: {
        uint32_t channel;
        int computes = 0;
        for (channel = ins->c; channel < ins->c + ins->d && !computes; ++channel) {
          computes = layer->channel_decisions[channel] == CHANNEL_COMPUTE;
        }
        layer->channel_groups_met = 1;
        if (computes) {
          layer->channels_run += ins->d;
        } else {
          next = ins->b;
        }
        break;
      }
      case OP_COPY_CHANNELS: {
        const runtime_tensor* source = &session->tensors[ins->a];
        uint32_t batch = source->dims[0];
        if (ins->d != NO_LAYER) {
          status = check_tile_capacity(session, pc, &session->layers[ins->d], batch);
          batch = session->layers[ins->d].active_count;
        }
        if (status == DYNRT_OK) dynrt_copy_channels(&session->tensors[ins->b], source, ins->c, batch);
        break;
      }
      case OP_DSTEP_APPLY:
        if (ins->b == DSTEP_SOURCE_TILES) status = check_tile_capacity(session, pc, layer, layer->tile_output_capacity);
        if (status == DYNRT_OK) dynrt_dstep_apply(layer, ins->b);
        break;
      case OP_COPY_TENSOR: {
        const runtime_tensor* source = &session->tensors[ins->a];
        runtime_tensor* destination = &session->tensors[ins->b];
        /* an equal copy is no change (a still frame's state stays current); memmove: a plan
         * may copy a tensor onto itself */
        if (memcmp(destination->data, source->data, source->bytes) != 0) {
          memmove(destination->data, source->data, source->bytes);
          tensor_written(destination);
        }
        break;
      }
      default:
        break; /* unreachable: opcodes are validated */
    }
    if (status != DYNRT_OK) return status;
    pc = next;
  }
  return DYNRT_OK;
}

static void begin_frame(dynrt_session_t session, dynrt_frame_stats* stats) {
  uint32_t i;
  for (i = 0; i < session->layer_count; ++i) {
    runtime_layer* layer = &session->layers[i];
    layer->path = DYNRT_PATH_REUSE;
    layer->ties = 0;
    layer->gate_scored = 0;
    layer->channel_groups_met = 0;
    layer->channels_run = 0;
    layer->gathered_tiles_version = 0;
  }
  if (stats != NULL) {
    stats->frame_ns = 0;
    stats->segments_ns = 0;
    stats->segments_reused = 0;
    if (stats->segment_ns != NULL) memset(stats->segment_ns, 0, stats->segment_capacity * sizeof(uint64_t));
  }
}

/* Per-layer statistics of the frame just run; MACs as dynrt.h defines them. */
static void finish_layer_stats(dynrt_session_t session, dynrt_frame_stats* stats) {
  uint32_t i;
  for (i = 0; i < session->layer_count && i < stats->layer_capacity; ++i) {
    const runtime_layer* layer = &session->layers[i];
    const block_grid* grid = &layer->grid;
    const uint64_t positions = grid->output_size[0] * grid->output_size[1];
    dynrt_layer_stats* out = &stats->layers[i];
    out->active_blocks = layer->active_count;
    out->total_blocks = (uint32_t)grid->block_count;
    out->path = layer->path;
    out->ties = layer->ties;
    /* the convolution's MACs per position of the output channels it ran: all of them, or the
     * D-STEP channel groups that had a compute channel (macs_per_position is per position
     * over every output channel, a whole multiple of out_channels) */
    const uint64_t run_macs_per_position =
        layer->channel_groups_met && layer->out_channels > 0
            ? layer->macs_per_position / layer->out_channels * layer->channels_run
            : layer->macs_per_position;
    out->dense_macs = positions * layer->macs_per_position;
    if (layer->path == DYNRT_PATH_TILES) {
      out->executed_macs = (uint64_t)layer->active_count * grid->block * grid->block * run_macs_per_position;
    } else if (layer->path == DYNRT_PATH_DENSE) {
      out->executed_macs = positions * run_macs_per_position;
    } else {
      out->executed_macs = 0;
    }
    if (layer->kind == LAYER_SKIP_CONV && layer->gate_scored) {
      out->executed_macs += positions * layer->gate_macs_per_position;
    } else if (layer->kind == LAYER_DSTEP && layer->gate_scored) {
      out->executed_macs += layer->gate_macs_per_position; /* the policies' MACs per frame (format 2.2) */
    }
  }
}

/* The output into the caller's buffer, cut into tasks of whole cache lines. */
typedef struct output_copy_job {
  unsigned char* destination;
  const unsigned char* source;
  size_t bytes;
  uint32_t tasks;
} output_copy_job;

static void copy_output_task(void* argument, uint32_t task) {
  const output_copy_job* job = (const output_copy_job*)argument;
  const size_t lines = (job->bytes + 63) / 64;
  const size_t begin = (size_t)((uint64_t)lines * task / job->tasks) * 64;
  const size_t end = task + 1 == job->tasks ? job->bytes : (size_t)((uint64_t)lines * (task + 1) / job->tasks) * 64;
  memcpy(job->destination + begin, job->source + begin, end - begin);
}

static void copy_output(dynrt_session_t session, float* output, size_t bytes) {
  output_copy_job job;
  job.destination = (unsigned char*)output;
  job.source = (const unsigned char*)session->output->data;
  job.bytes = bytes;
  /* one item per 4 KiB: tasks only where the copy is worth a wake-up */
  job.tasks = dynrt_task_count(session, (uint32_t)((bytes + 4095) / 4096), 4096);
  dynrt_run_tasks(session, job.tasks, copy_output_task, &job);
}

static dynrt_status finish_step(dynrt_session_t session, dynrt_status status, float* output, size_t output_bytes,
                               dynrt_frame_stats* stats, uint64_t frame_start) {
  uint32_t i;
  for (i = 0; i < session->layer_count; ++i) session->layers[i].tie_reference_pending = 0;
  if (status != DYNRT_OK) {
    /* state may be half-updated: start over densely */
    dynrt_reset_primed(session);
  } else {
    copy_output(session, output, output_bytes);
  }
  if (stats != NULL) {
    finish_layer_stats(session, stats);
    stats->frame_ns = dynrt_monotonic_ns() - frame_start;
  }
  return status;
}

dynrt_status dynrt_session_step(dynrt_session_t session, const float* input, size_t input_bytes, float* output,
                                size_t output_bytes, dynrt_frame_stats* stats) {
  const uint64_t frame_start = dynrt_monotonic_ns();
  error_sink error;
  uint32_t i;
  int in_place;
  dynrt_status status;

  if (session == NULL) return DYNRT_INVALID_ARGUMENT;
  error = session_errors(session);
  if (input == NULL || output == NULL) {
    return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "step: %s buffer is NULL", input == NULL ? "input" : "output");
  }
  if (input_bytes != session->input->bytes) {
    return dynrt_fail(&error, DYNRT_WRONG_BUFFER_SIZE, "step: input buffer is %lu bytes, the plan's input needs %lu",
                      (unsigned long)input_bytes, (unsigned long)session->input->bytes);
  }
  if (output_bytes != session->output->bytes) {
    return dynrt_fail(&error, DYNRT_WRONG_BUFFER_SIZE, "step: output buffer is %lu bytes, the plan's output needs %lu",
                      (unsigned long)output_bytes, (unsigned long)session->output->bytes);
  }
  if (stats != NULL && ((stats->layers == NULL && stats->layer_capacity > 0) ||
                        (stats->segment_ns == NULL && stats->segment_capacity > 0))) {
    return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "step: stats has a capacity but a NULL array");
  }
  if (session->frame_cells != NULL) {
    /* the input is a tracked map: only its changed cells are checked and copied */
    session->frame_check_deferred = 0;
    status = take_frame_changes(session, input);
    if (status != DYNRT_OK) return status;
    begin_frame(session, stats);
    status = run_program(session, stats);
    return finish_step(session, status, output, output_bytes, stats, frame_start);
  }
  /* Every frame is checked for NaN/Inf before any state changes: by the first gate's scoring
   * pass when it reads the whole frame anyway (one pass over the frame instead of two),
   * else by a scan here. */
  in_place = (uintptr_t)input % sizeof(float) == 0 && session->frame_read_in_place; /* float reads need alignment */
  /* a held dense fallback (BRANCH_IF_HOLDING) does not score the first gate */
  session->frame_check_deferred =
      in_place && session->frame_checking_layer != NO_LAYER && session->fallback_hold == 0 &&
      ((const float*)session->layers[session->frame_checking_layer].tensor[SLOT_PRIMED]->data)[0] != 0.0f;
  if (!session->frame_check_deferred) {
    status = reject_nonfinite_frame(session, input, input_bytes / sizeof(float));
    if (status != DYNRT_OK) return status;
  }

  begin_frame(session, stats);
  session->pending_frame = input;
  if (!in_place) {
    materialize_input(session);
  } else {
    for (i = 0; i < session->layer_count; ++i) {
      runtime_layer* layer = &session->layers[i];
      if (layer->tensor[SLOT_INPUT] == session->input) layer->input_pixels = input;
    }
  }
  status = run_program(session, stats);
  if (status == DYNRT_NONFINITE_INPUT) {
    /* the first gate found it before anything changed (gates.c): the tie decisions given
     * for this frame stay for the next one, as with a frame rejected up front */
    status = reject_nonfinite_frame(session, input, input_bytes / sizeof(float));
    release_frame(session);
    return status;
  }
  release_frame(session);
  return finish_step(session, status, output, output_bytes, stats, frame_start);
}

dynrt_status dynrt_session_time_segment(dynrt_session_t session, uint32_t segment_index, uint32_t batch,
                                        uint64_t* elapsed_ns) {
  error_sink error;
  runtime_segment* segment;
  dynrt_backend_t backend;
  uint64_t start;
  dynrt_status status;
  uint32_t k;
  if (session == NULL) return DYNRT_INVALID_ARGUMENT;
  error = session_errors(session);
  if (elapsed_ns == NULL) return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "time_segment: elapsed_ns is NULL");
  *elapsed_ns = 0;
  if (segment_index >= session->segment_count) {
    return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "time_segment: segment %lu of %lu", (unsigned long)segment_index,
                      (unsigned long)session->segment_count);
  }
  segment = &session->segments[segment_index];
  if (segment->max_batch > 0 ? batch < 1 || batch > segment->max_batch : batch != 1) {
    return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "time_segment: segment %lu (%s) runs at batch %s%lu, not %lu",
                      (unsigned long)segment_index, segment->name, segment->max_batch > 0 ? "1.." : "",
                      (unsigned long)(segment->max_batch > 0 ? segment->max_batch : 1), (unsigned long)batch);
  }
  backend = session->backend;
  start = dynrt_monotonic_ns();
  status = backend->run_segment(backend->context, session->backend_state, segment_index, batch,
                                segment->input_buffers, segment->output_buffers);
  *elapsed_ns = dynrt_monotonic_ns() - start;
  /* its outputs changed under the program: nothing computed before may be reused */
  for (k = 0; k < segment->output_count; ++k) tensor_written(segment->outputs[k]);
  dynrt_reset_primed(session);
  if (status != DYNRT_OK) {
    return dynrt_fail(&error, DYNRT_BACKEND_ERROR, "time_segment: segment %lu (%s) failed in backend %s with status %d (%s)",
                      (unsigned long)segment_index, segment->name, backend->name != NULL ? backend->name : "(unnamed)",
                      (int)status, dynrt_status_string(status));
  }
  return DYNRT_OK;
}
