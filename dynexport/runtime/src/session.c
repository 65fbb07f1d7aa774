/*
 * Session lifetime and queries. dynrt_session_create validates the plan, then makes ONE
 * allocation (the arena) holding the session, its tables, its copies of the plan's strings
 * and constants, the decision arrays, the gate scratch and every tensor buffer; step, reset
 * and the queries never allocate.
 *
 * The arena is laid out by lay_out_arena twice with the same sequence of takes: first to
 * measure (no memory yet), then to place. Sizes are uint64_t and saturate, so a plan whose
 * buffers would not fit in memory fails with DYNRT_OUT_OF_MEMORY instead of wrapping.
 */
#include <stdlib.h>
#include <string.h>

#include "crc32.h"
#include "plan_reader.h"
#include "plan_validator.h"
#include "session_internal.h"

/* The largest arena a session may allocate. Builds that must not try huge allocations
 * (the fuzzer, sanitizer runs) define a smaller limit; by default only memory limits it. */
#ifndef DYNRT_MAX_ARENA_BYTES
#define DYNRT_MAX_ARENA_BYTES ((uint64_t)SIZE_MAX - DYNRT_MAX_BUFFER_ALIGNMENT)
#endif

#define BUFFER_ALIGNMENT 64u  /* tensor buffers: cache lines and any SIMD width */
#define TABLE_ALIGNMENT 16u   /* tables of structs, pointers, doubles */

typedef struct arena_cursor {
  unsigned char* base;  /* NULL while measuring */
  uint64_t offset;
  /* the backend's buffer needs, defaults applied (check_backend validated them) */
  uint64_t buffer_alignment;
  uint64_t buffer_tail_bytes;
  uint32_t task_limit;  /* tasks the runtime's own work is cut into at most (gate scratch per task) */
} arena_cursor;

/* The next `bytes` of the arena at `alignment` (a power of two), or NULL while measuring. */
static void* arena_take(arena_cursor* arena, uint64_t bytes, uint64_t alignment) {
  uint64_t start = dynrt_saturating_add(arena->offset, alignment - 1) & ~(alignment - 1);
  arena->offset = dynrt_saturating_add(start, bytes);
  return arena->base != NULL ? arena->base + start : NULL;
}

static void* arena_take_array(arena_cursor* arena, uint64_t count, size_t element_bytes, uint64_t alignment) {
  return arena_take(arena, dynrt_saturating_multiply(count, element_bytes), alignment);
}

/* A table of `count` elements of `type` (NULL while measuring). */
#define TAKE_TABLE(arena, type, count) ((type*)arena_take_array((arena), (count), sizeof(type), TABLE_ALIGNMENT))

/* Takes every region of the session from the arena; while placing (arena->base set) it
 * records where each went. Returns the session (NULL while measuring). */
static dynrt_session_t lay_out_arena(const plan_view* plan, arena_cursor* arena) {
  dynrt_session_t session = (dynrt_session_t)arena_take(arena, sizeof(struct dynrt_session), BUFFER_ALIGNMENT);
  const int placing = session != NULL;
  /* the largest of any skip-conv layer, for the gate scratch */
  uint64_t largest_tile_values = 0, largest_tile_pixels = 0, largest_tile_rows = 0, largest_block_count = 0;
  runtime_tensor* tensors = TAKE_TABLE(arena, runtime_tensor, plan->tensor_count);
  runtime_segment* segments = TAKE_TABLE(arena, runtime_segment, plan->segment_count);
  runtime_layer* layers = TAKE_TABLE(arena, runtime_layer, plan->layer_count);
  plan_instruction* instructions = TAKE_TABLE(arena, plan_instruction, plan->instruction_count);
  char* strings = (char*)arena_take(arena, (uint64_t)plan->string_bytes + 1, 1);
  float* constants = TAKE_TABLE(arena, float, plan->constant_bytes / 4);
  uint8_t* gate_decisions;
  uint32_t* gate_blocks;
  uint32_t i;

  if (placing) {
    session->tensors = tensors;
    session->segments = segments;
    session->layers = layers;
    session->instructions = instructions;
    memcpy(strings, plan->strings, plan->string_bytes);
    strings[plan->string_bytes] = '\0';
    for (i = 0; i < plan->constant_bytes / 4; ++i) constants[i] = dynrt_plan_constant(plan, i);
  }
  for (i = 0; i < plan->segment_count; ++i) {
    plan_segment record;
    dynrt_operand_info* input_info;
    dynrt_operand_info* output_info;
    void** input_buffers;
    void** output_buffers;
    runtime_tensor** inputs;
    runtime_tensor** outputs;
    uint64_t *input_versions, *output_versions;
    dynrt_plan_segment(plan, i, &record);
    input_info = TAKE_TABLE(arena, dynrt_operand_info, record.input_count);
    output_info = TAKE_TABLE(arena, dynrt_operand_info, record.output_count);
    input_buffers = TAKE_TABLE(arena, void*, record.input_count);
    output_buffers = TAKE_TABLE(arena, void*, record.output_count);
    inputs = TAKE_TABLE(arena, runtime_tensor*, record.input_count);
    outputs = TAKE_TABLE(arena, runtime_tensor*, record.output_count);
    input_versions = TAKE_TABLE(arena, uint64_t, record.input_count);
    output_versions = TAKE_TABLE(arena, uint64_t, record.output_count);
    if (placing) {
      segments[i].name = strings + record.name;
      segments[i].max_batch = record.max_batch;
      segments[i].input_count = record.input_count;
      segments[i].output_count = record.output_count;
      segments[i].input_info = input_info;
      segments[i].output_info = output_info;
      segments[i].input_buffers = input_buffers;
      segments[i].output_buffers = output_buffers;
      segments[i].inputs = inputs;
      segments[i].outputs = outputs;
      segments[i].input_versions = input_versions;
      segments[i].output_versions = output_versions;
    }
  }
  for (i = 0; i < plan->layer_count; ++i) {
    plan_layer record;
    block_grid grid;
    uint32_t* active_blocks;
    uint8_t *block_mask, *tie_reference, *channel_decisions;
    int32_t *channel_keep, *channel_take;
    uint64_t patch_row_values;
    double* policy_sums;
    float *policy_values, *energy_cache, *policy_row_sums;
    double* policy_row_regions;
    uint8_t* energy_valid;
    uint64_t cached_energies;
    uint32_t policy_hidden;
    dynrt_plan_layer(plan, i, &record);
    (void)dynrt_block_grid_from_layer(&record, &grid); /* validated */
    active_blocks = TAKE_TABLE(arena, uint32_t, grid.block_count);
    block_mask = (uint8_t*)arena_take(arena, grid.block_count, 1);
    tie_reference = (uint8_t*)arena_take(arena, grid.block_count, 1);
    channel_decisions = (uint8_t*)arena_take(arena, record.out_channels, 1);
    /* DSTEP_APPLY scratch, on the layers it may run on (validated: those with decisions) */
    patch_row_values = record.tensors[SLOT_DECISIONS] != NO_TENSOR
                           ? dynrt_saturating_multiply(grid.block, record.out_channels)
                           : 0;
    channel_keep = TAKE_TABLE(arena, int32_t, patch_row_values);
    channel_take = TAKE_TABLE(arena, int32_t, patch_row_values);
    /* DSTEP_POLICY scratch, on D-STEP layers whose weights fit a policy (validated where it runs) */
    policy_hidden = record.kind == LAYER_DSTEP ? dynrt_dstep_policy_hidden(&record) : UINT32_MAX;
    policy_sums = TAKE_TABLE(arena, double, policy_hidden == UINT32_MAX ? 0 : 2 * grid.block_count + record.in_channels);
    policy_values = TAKE_TABLE(arena, float, policy_hidden == UINT32_MAX ? 0 : policy_hidden);
    /* per input row (validated: the input is [1, input_size, in_channels]); the columns'
     * regions only with a spatial policy, one otherwise: the block grid's columns bound both */
    policy_row_regions = TAKE_TABLE(arena, double, policy_hidden == UINT32_MAX ? 0
                                    : dynrt_saturating_multiply(grid.input_size[0], 2 * (uint64_t)grid.blocks[1]));
    policy_row_sums = TAKE_TABLE(arena, float, policy_hidden == UINT32_MAX ? 0
                                 : dynrt_saturating_multiply(grid.input_size[0], record.in_channels));
    /* a norm gate's pixel energies, kept per block (gates.c: refresh_changed_energies) */
    cached_energies = record.kind == LAYER_SKIP_CONV && record.gate != GATE_GUMBEL &&
                              record.tensors[SLOT_REFERENCE] != NO_TENSOR
                          ? dynrt_saturating_multiply(grid.block_count, grid.tile_size[0] * grid.tile_size[1])
                          : 0;
    energy_cache = TAKE_TABLE(arena, float, cached_energies);
    energy_valid = (uint8_t*)arena_take(arena, cached_energies > 0 ? grid.block_count : 0, 1);
    if (record.tensors[SLOT_REFERENCE] != NO_TENSOR) { /* SKIP_GATE scores this layer's tiles */
      const uint64_t pixels = grid.tile_size[0] * grid.tile_size[1];  /* validated: < 2^31 */
      if (pixels > largest_tile_pixels) largest_tile_pixels = pixels;
      if (pixels * record.in_channels > largest_tile_values) largest_tile_values = pixels * record.in_channels;
      if (grid.tile_size[0] > largest_tile_rows) largest_tile_rows = grid.tile_size[0];
      if (grid.block_count > largest_block_count) largest_block_count = grid.block_count;
    }
    if (placing) {
      runtime_layer* layer = &layers[i];
      layer->name = strings + record.name;
      layer->kind = record.kind;
      layer->gate = record.gate;
      layer->grid = grid;
      layer->in_channels = record.in_channels;
      layer->out_channels = record.out_channels;
      layer->dense_cutoff = record.dense_cutoff;
      layer->threshold = record.threshold;
      layer->norm_scale = record.norm_scale;
      layer->gate_bias = record.gate_bias;
      layer->gate_weights = constants + record.gate_weight;
      layer->macs_per_position = record.macs_per_position;
      layer->gate_macs_per_position = record.gate_macs_per_position;
      layer->active_blocks = active_blocks;
      layer->block_mask = block_mask;
      layer->tie_reference = tie_reference;
      layer->channel_decisions = channel_decisions;
      layer->channel_keep = channel_keep;
      layer->channel_take = channel_take;
      layer->policy_sums = policy_sums;
      layer->policy_values = policy_values;
      layer->policy_row_regions = policy_row_regions;
      layer->policy_row_sums = policy_row_sums;
      layer->policy_hidden = policy_hidden == UINT32_MAX ? 0 : policy_hidden;
      layer->energy_cache = cached_energies > 0 ? energy_cache : NULL;
      layer->energy_valid = cached_energies > 0 ? energy_valid : NULL;
      memset(channel_decisions, CHANNEL_COMPUTE, record.out_channels);
    }
  }
  for (i = 0; i < arena->task_limit; ++i) {
    gate_scratch scratch;
    scratch.values = (float*)arena_take_array(arena, largest_tile_values, sizeof(float), BUFFER_ALIGNMENT);
    scratch.pixel_sums = (float*)arena_take_array(arena, largest_tile_pixels, sizeof(float), BUFFER_ALIGNMENT);
    scratch.row_sums = (float*)arena_take_array(arena, largest_tile_rows, sizeof(float), BUFFER_ALIGNMENT);
    scratch.value_rows = (uint8_t*)arena_take(arena, largest_tile_rows, BUFFER_ALIGNMENT); /* no shared line */
    if (placing) session->gate_scratch[i] = scratch;
  }
  gate_decisions = (uint8_t*)arena_take(arena, largest_block_count, 1);
  gate_blocks = TAKE_TABLE(arena, uint32_t, largest_block_count);
  if (placing) {
    session->task_limit = arena->task_limit;
    session->gate_decisions = gate_decisions;
    session->gate_blocks = gate_blocks;
  }
  for (i = 0; i < plan->tensor_count; ++i) {
    plan_tensor record;
    void* data;
    uint64_t *cells, *previous;
    cell_box *boxes, *frame_cells;
    uint32_t cell_rows, cell_cols;
    dynrt_plan_tensor(plan, i, &record);
    /* the tail bytes follow the buffer and stay zero: the runtime writes `bytes` only */
    data = arena_take(arena, dynrt_saturating_add(dynrt_tensor_bytes(&record), arena->buffer_tail_bytes),
                      arena->buffer_alignment);
    /* the change map of a float feature map [1, H, W, C] (session_internal.h) */
    cell_rows = cell_cols = 0;
    if (record.rank == 4 && record.layout == LAYOUT_NHWC && record.dtype == DTYPE_FLOAT32 && record.dims[0] == 1) {
      cell_rows = (record.dims[1] + CHANGE_CELL - 1) / CHANGE_CELL;
      cell_cols = (record.dims[2] + CHANGE_CELL - 1) / CHANGE_CELL;
    }
    cells = TAKE_TABLE(arena, uint64_t, (uint64_t)cell_rows * cell_cols);
    previous = TAKE_TABLE(arena, uint64_t, (uint64_t)cell_rows * cell_cols);
    boxes = TAKE_TABLE(arena, cell_box, (uint64_t)cell_rows * cell_cols);
    frame_cells = i == dynrt_plan_input(plan, 0) ? TAKE_TABLE(arena, cell_box, (uint64_t)cell_rows * cell_cols) : NULL;
    if (placing) {
      if (frame_cells != NULL && cell_rows * cell_cols > 0) session->frame_cells = frame_cells;
      runtime_tensor* tensor = &tensors[i];
      uint32_t d;
      tensor->name = strings + record.name;
      tensor->dtype = record.dtype;
      tensor->layout = record.layout;
      tensor->role = record.role;
      tensor->rank = record.rank;
      for (d = 0; d < 4; ++d) tensor->dims[d] = d < record.rank ? record.dims[d] : 0;
      tensor->bytes = (size_t)dynrt_tensor_bytes(&record);
      tensor->data = data;
      tensor->cell_versions = cell_rows * cell_cols > 0 ? cells : NULL;
      tensor->cell_previous = previous;
      tensor->cell_boxes = boxes;
      tensor->cell_rows = cell_rows;
      tensor->cell_cols = cell_cols;
      if (record.role == ROLE_STATE) session->state_bytes += tensor->bytes;
    }
  }
  return session;
}

/* Connects what refers to tensors (layers, segments, instructions, input/output) once every
 * tensor has its buffer. */
static void link_tables(dynrt_session_t session, const plan_view* plan) {
  uint32_t i, k, slot;
  session->tensor_count = plan->tensor_count;
  session->segment_count = plan->segment_count;
  session->layer_count = plan->layer_count;
  session->instruction_count = plan->instruction_count;
  session->input = &session->tensors[dynrt_plan_input(plan, 0)];
  session->output = &session->tensors[dynrt_plan_output(plan, 0)];
  for (i = 0; i < plan->instruction_count; ++i) dynrt_plan_instruction(plan, i, &session->instructions[i]);
  for (i = 0; i < plan->segment_count; ++i) {
    runtime_segment* segment = &session->segments[i];
    plan_segment record;
    dynrt_plan_segment(plan, i, &record);
    for (k = 0; k < segment->input_count + segment->output_count; ++k) {
      const int is_input = k < segment->input_count;
      const uint32_t operand = is_input ? record.input_begin + k : record.output_begin + (k - segment->input_count);
      runtime_tensor* tensor = &session->tensors[dynrt_plan_operand(plan, operand)];
      dynrt_operand_info* info = is_input ? &segment->input_info[k] : &segment->output_info[k - segment->input_count];
      info->rank = tensor->rank;
      memcpy(info->dims, tensor->dims, sizeof info->dims);
      info->dtype = tensor->dtype;
      info->layout = tensor->layout == LAYOUT_NHWC ? DYNRT_LAYOUT_NHWC : DYNRT_LAYOUT_ROW_MAJOR;
      if (is_input) {
        segment->input_buffers[k] = tensor->data;
        segment->inputs[k] = tensor;
      } else {
        segment->output_buffers[k - segment->input_count] = tensor->data;
        segment->outputs[k - segment->input_count] = tensor;
      }
      if (tensor == session->input) segment->touches_input = 1;
    }
  }
  session->frame_read_in_place = 1;
  for (i = 0; i < plan->layer_count; ++i) {
    runtime_layer* layer = &session->layers[i];
    plan_layer record;
    dynrt_plan_layer(plan, i, &record);
    for (slot = 0; slot < LAYER_TENSOR_SLOTS; ++slot) {
      layer->tensor[slot] = record.tensors[slot] == NO_TENSOR ? NULL : &session->tensors[record.tensors[slot]];
    }
    layer->input_pixels = (const float*)layer->tensor[SLOT_INPUT]->data;
    layer->session = session;
    for (slot = SLOT_INPUT + 1; slot < LAYER_TENSOR_SLOTS; ++slot) {
      if (layer->tensor[slot] == session->input) session->frame_read_in_place = 0;
    }
    /* the packed buffers' leading dims: how many active blocks a tile instruction can take */
    if (layer->tensor[SLOT_TILES] != NULL) layer->tile_capacity = layer->tensor[SLOT_TILES]->dims[0];
    if (layer->tensor[SLOT_TILE_OUTPUT] != NULL) layer->tile_output_capacity = layer->tensor[SLOT_TILE_OUTPUT]->dims[0];
  }
}

/* Whether the union of a layer's tiles covers its whole input (along both axes). */
static int tiles_cover_input(const block_grid* grid) {
  int axis;
  for (axis = 0; axis < 2; ++axis) {
    const uint64_t last_origin_plus_tile =
        dynrt_saturating_add(dynrt_saturating_multiply(grid->blocks[axis] - 1, grid->tile_step[axis]), grid->tile_size[axis]);
    if (grid->tile_step[axis] > grid->tile_size[axis]) return 0;
    if (last_origin_plus_tile < dynrt_saturating_add(grid->input_size[axis], grid->padding[axis])) return 0;
  }
  return 1;
}

/* session->frame_checking_layer (session_internal.h). */
static void find_frame_checking_layer(dynrt_session_t session) {
  const plan_instruction* first = session->instruction_count > 0 ? &session->instructions[0] : NULL;
  session->frame_checking_layer = NO_LAYER;
  /* a dense fallback's hold branch goes before the first gate (step.c defers no check on a
   * held frame, which skips the gate) */
  if (first != NULL && first->op == OP_BRANCH_IF_HOLDING && session->instruction_count > 1) ++first;
  if (first == NULL || first->op != OP_SKIP_GATE || !session->frame_read_in_place) return;
  if (session->layers[first->a].tensor[SLOT_INPUT] != session->input) return;
  if (!tiles_cover_input(&session->layers[first->a].grid)) return;
  session->frame_checking_layer = first->a;
}

static dynrt_status check_backend(dynrt_backend_t backend, error_sink* error) {
  if (backend == NULL) return dynrt_fail(error, DYNRT_INVALID_ARGUMENT, "backend is NULL");
  if (backend->api_version != DYNRT_BACKEND_API_VERSION) {
    return dynrt_fail(error, DYNRT_INVALID_ARGUMENT, "backend API version %lu, this runtime speaks %lu",
                      (unsigned long)backend->api_version, (unsigned long)DYNRT_BACKEND_API_VERSION);
  }
  if (backend->prepare_segment == NULL || backend->run_segment == NULL) {
    return dynrt_fail(error, DYNRT_INVALID_ARGUMENT, "backend %s lacks prepare_segment or run_segment",
                      backend->name != NULL ? backend->name : "(unnamed)");
  }
  if (backend->buffer_alignment > DYNRT_MAX_BUFFER_ALIGNMENT ||
      (backend->buffer_alignment & (backend->buffer_alignment - 1)) != 0) {
    return dynrt_fail(error, DYNRT_INVALID_ARGUMENT,
                      "backend %s asks for a buffer alignment of %lu bytes: expected a power of two up to %lu",
                      backend->name != NULL ? backend->name : "(unnamed)", (unsigned long)backend->buffer_alignment,
                      (unsigned long)DYNRT_MAX_BUFFER_ALIGNMENT);
  }
  if (backend->buffer_tail_bytes > DYNRT_MAX_BUFFER_TAIL_BYTES) {
    return dynrt_fail(error, DYNRT_INVALID_ARGUMENT, "backend %s asks for %lu tail bytes per buffer: at most %lu",
                      backend->name != NULL ? backend->name : "(unnamed)", (unsigned long)backend->buffer_tail_bytes,
                      (unsigned long)DYNRT_MAX_BUFFER_TAIL_BYTES);
  }
  if (backend->artifact != NULL && backend->name == NULL) {
    return dynrt_fail(error, DYNRT_INVALID_ARGUMENT, "backend has an artifact but no name to look it up by");
  }
  return DYNRT_OK;
}

/* The backend's artifact must be the very file the plan was built with (size and CRC32 of
 * the plan's artifact record of the same backend name). */
static dynrt_status check_artifact(const plan_view* plan, dynrt_backend_t backend, error_sink* error) {
  uint32_t i;
  if (backend->artifact == NULL) return DYNRT_OK;
  for (i = 0; i < plan->artifact_count; ++i) {
    plan_artifact record;
    const char* problem;
    const char* name;
    uint32_t crc;
    dynrt_plan_artifact(plan, i, &record);
    name = dynrt_plan_string(plan, record.name, &problem); /* validated */
    if (name == NULL || strcmp(name, backend->name) != 0) continue;
    if ((uint64_t)backend->artifact_bytes != record.size) {
      return dynrt_fail(error, DYNRT_ARTIFACT_MISMATCH,
                        "%s artifact is %llu bytes, the plan was built with one of %lu bytes (rebuild, or use the "
                        "artifact from the same build)",
                        backend->name, (unsigned long long)backend->artifact_bytes, (unsigned long)record.size);
    }
    crc = dynrt_crc32(backend->artifact, backend->artifact_bytes);
    if (crc != record.crc32) {
      return dynrt_fail(error, DYNRT_ARTIFACT_MISMATCH,
                        "%s artifact has CRC32 %08lx, the plan was built with %08lx (rebuild, or use the artifact "
                        "from the same build)",
                        backend->name, (unsigned long)crc, (unsigned long)record.crc32);
    }
    return DYNRT_OK;
  }
  return dynrt_fail(error, DYNRT_ARTIFACT_MISMATCH, "the plan has no artifact record for backend %s (%lu records)",
                    backend->name, (unsigned long)plan->artifact_count);
}

/* The arena's buffer alignment and tail: the backend's needs, with the defaults. */
static void apply_buffer_needs(dynrt_backend_t backend, arena_cursor* arena) {
  arena->buffer_alignment = backend->buffer_alignment > DYNRT_DEFAULT_BUFFER_ALIGNMENT ? backend->buffer_alignment
                                                                                      : DYNRT_DEFAULT_BUFFER_ALIGNMENT;
  arena->buffer_tail_bytes = backend->buffer_tail_bytes;
  arena->task_limit = 1;
  if (backend->parallel_for != NULL && backend->parallel_threads > 1) {
    arena->task_limit = backend->parallel_threads < DYNRT_MAX_TASKS ? backend->parallel_threads : DYNRT_MAX_TASKS;
  }
}

uint32_t dynrt_task_count(dynrt_const_session_t session, uint32_t count, uint64_t item_bytes) {
  const uint64_t bytes = (uint64_t)count * item_bytes;
  uint64_t tasks = bytes / DYNRT_TASK_MIN_BYTES;
  if (tasks > session->task_limit) tasks = session->task_limit;
  if (tasks > count) tasks = count;
  return tasks > 1 ? (uint32_t)tasks : 1u;
}

void dynrt_run_tasks(dynrt_session_t session, uint32_t tasks, runtime_task task, void* argument) {
  uint32_t t;
  if (tasks > 1) {
    session->backend->parallel_for(session->backend->context, task, argument, tasks);
    return;
  }
  for (t = 0; t < tasks; ++t) task(argument, t);
}

/* The backend's state for this session, then every segment prepared into it. */
static dynrt_status prepare_segments(dynrt_session_t session, error_sink* error) {
  dynrt_backend_t backend = session->backend;
  const char* backend_name = backend->name != NULL ? backend->name : "(unnamed)";
  uint32_t i;
  session->backend_state = NULL;
  if (backend->prepare_session != NULL) {
    dynrt_plan_info plan_info;
    char reason[200];
    dynrt_status status;
    plan_info.segment_count = session->segment_count;
    reason[0] = '\0';
    status = backend->prepare_session(backend->context, &plan_info, &session->backend_state, reason, sizeof reason);
    if (status != DYNRT_OK) {
      reason[sizeof reason - 1] = '\0';
      session->backend_state = NULL;
      return dynrt_fail(error, status, "backend %s could not prepare a session: %s", backend_name,
                        reason[0] != '\0' ? reason : dynrt_status_string(status));
    }
  }
  session->backend_state_made = 1; /* even a partial preparation is released at destroy */
  for (i = 0; i < session->segment_count; ++i) {
    const runtime_segment* segment = &session->segments[i];
    dynrt_segment_info info;
    char reason[200];
    dynrt_status status;
    info.name = segment->name;
    info.max_batch = segment->max_batch;
    info.input_count = segment->input_count;
    info.output_count = segment->output_count;
    info.inputs = segment->input_info;
    info.outputs = segment->output_info;
    info.input_buffers = segment->input_buffers;
    info.output_buffers = segment->output_buffers;
    reason[0] = '\0';
    status = backend->prepare_segment(backend->context, session->backend_state, i, &info, reason, sizeof reason);
    if (status != DYNRT_OK) {
      reason[sizeof reason - 1] = '\0';
      return dynrt_fail(error, status, "backend %s could not prepare segment %lu (%s): %s", backend_name,
                        (unsigned long)i, segment->name,
                        reason[0] != '\0' ? reason : dynrt_status_string(status));
    }
  }
  return DYNRT_OK;
}

dynrt_status dynrt_session_create(const void* plan, size_t plan_bytes, dynrt_backend_t backend, char* error_message,
                                  size_t error_capacity, dynrt_session_t* session_out) {
  error_sink error;
  plan_view view;
  arena_cursor arena;
  dynrt_session_t session;
  void* allocation;
  uint64_t arena_bytes;
  dynrt_status status;

  error.text = error_message;
  error.capacity = error_message != NULL ? error_capacity : 0;
  if (error.capacity > 0) error_message[0] = '\0';
  if (session_out == NULL) return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "session_out is NULL");
  *session_out = NULL;
  if (plan == NULL) return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "plan is NULL");
  if ((status = check_backend(backend, &error)) != DYNRT_OK) return status;
  if ((status = dynrt_plan_open(plan, plan_bytes, &view, &error)) != DYNRT_OK) return status;
  if ((status = dynrt_plan_validate(&view, &error)) != DYNRT_OK) return status;
  if ((status = check_artifact(&view, backend, &error)) != DYNRT_OK) return status;

  arena.base = NULL;
  arena.offset = 0;
  apply_buffer_needs(backend, &arena);
  (void)lay_out_arena(&view, &arena);
  arena_bytes = arena.offset;
  if (arena_bytes > (uint64_t)DYNRT_MAX_ARENA_BYTES) {
    return dynrt_fail(&error, DYNRT_OUT_OF_MEMORY,
                      "the plan needs %llu bytes of buffers, more than this build allows (%llu)",
                      (unsigned long long)arena_bytes, (unsigned long long)DYNRT_MAX_ARENA_BYTES);
  }
  /* calloc: tensors start at zero, as in the interpreter */
  allocation = calloc(1, (size_t)arena_bytes + (size_t)arena.buffer_alignment);
  if (allocation == NULL) {
    return dynrt_fail(&error, DYNRT_OUT_OF_MEMORY, "could not allocate the session's %llu bytes",
                      (unsigned long long)arena_bytes);
  }
  /* the arena starts at the first buffer-aligned boundary of the allocation */
  arena.base = (unsigned char*)allocation +
               (arena.buffer_alignment - (uintptr_t)allocation % arena.buffer_alignment) % arena.buffer_alignment;
  arena.offset = 0;
  session = lay_out_arena(&view, &arena);
  session->allocation = allocation;
  session->arena_bytes = (size_t)arena_bytes + (size_t)arena.buffer_alignment;
  session->backend = backend;
  link_tables(session, &view);
  find_frame_checking_layer(session);

  status = prepare_segments(session, &error);
  if (status != DYNRT_OK) {
    dynrt_session_destroy(session);
    return status;
  }
  *session_out = session;
  return DYNRT_OK;
}

void dynrt_session_destroy(dynrt_session_t session) {
  if (session == NULL) return;
  if (session->backend_state_made && session->backend->release_session != NULL) {
    session->backend->release_session(session->backend->context, session->backend_state);
  }
  free(session->allocation);
}

static void describe_tensor(const runtime_tensor* tensor, uint32_t* rank, uint32_t dims[4], size_t* bytes) {
  *rank = tensor->rank;
  memcpy(dims, tensor->dims, 4 * sizeof dims[0]);
  *bytes = tensor->bytes;
}

dynrt_status dynrt_session_describe(dynrt_const_session_t session, dynrt_session_info* info_out) {
  if (session == NULL || info_out == NULL) return DYNRT_INVALID_ARGUMENT;
  memset(info_out, 0, sizeof *info_out);
  describe_tensor(session->input, &info_out->input_rank, info_out->input_dims, &info_out->input_bytes);
  describe_tensor(session->output, &info_out->output_rank, info_out->output_dims, &info_out->output_bytes);
  info_out->layer_count = session->layer_count;
  info_out->segment_count = session->segment_count;
  info_out->state_bytes = session->state_bytes;
  info_out->arena_bytes = session->arena_bytes;
  return DYNRT_OK;
}

void dynrt_reset_primed(dynrt_session_t session) {
  uint32_t i;
  for (i = 0; i < session->layer_count; ++i) {
    runtime_tensor* primed = session->layers[i].tensor[SLOT_PRIMED];
    ((float*)primed->data)[0] = 0.0f;
    tensor_written(primed);
  }
  for (i = 0; i < session->segment_count; ++i) session->segments[i].results_valid = 0;
  session->fallback_hold = 0;
}

dynrt_status dynrt_session_reset(dynrt_session_t session) {
  if (session == NULL) return DYNRT_INVALID_ARGUMENT;
  dynrt_reset_primed(session);
  return DYNRT_OK;
}

const char* dynrt_session_last_error(dynrt_const_session_t session) {
  return session != NULL ? session->last_error : "session is NULL";
}

/* The error sink of a query on a const session: last_error is the one thing a failed query
 * writes (the session is never const itself, only the query's view of it). */
static error_sink query_errors(dynrt_const_session_t session) {
  error_sink sink;
  sink.text = ((struct dynrt_session*)session)->last_error;
  sink.capacity = sizeof session->last_error;
  return sink;
}

dynrt_status dynrt_session_layer_decisions(dynrt_const_session_t session, uint32_t layer_index, uint8_t* block_mask,
                                           size_t block_capacity, uint8_t* channel_decisions, size_t channel_capacity) {
  const runtime_layer* layer;
  error_sink error;
  if (session == NULL) return DYNRT_INVALID_ARGUMENT;
  error = query_errors(session);
  if (layer_index >= session->layer_count) {
    return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "layer_decisions: layer %lu of %lu", (unsigned long)layer_index,
                      (unsigned long)session->layer_count);
  }
  layer = &session->layers[layer_index];
  if ((block_mask != NULL && block_capacity < layer->grid.block_count) ||
      (channel_decisions != NULL && channel_capacity < layer->out_channels)) {
    return dynrt_fail(&error, DYNRT_WRONG_BUFFER_SIZE,
                      "layer_decisions: layer %s has %llu blocks and %lu channels, the arrays hold %lu and %lu",
                      layer->name, (unsigned long long)layer->grid.block_count, (unsigned long)layer->out_channels,
                      block_mask != NULL ? (unsigned long)block_capacity : 0ul,
                      channel_decisions != NULL ? (unsigned long)channel_capacity : 0ul);
  }
  if (block_mask != NULL) memcpy(block_mask, layer->block_mask, (size_t)layer->grid.block_count);
  if (channel_decisions != NULL) memcpy(channel_decisions, layer->channel_decisions, layer->out_channels);
  return DYNRT_OK;
}

dynrt_status dynrt_session_describe_layer(dynrt_const_session_t session, uint32_t layer_index,
                                         dynrt_layer_info* info_out) {
  const runtime_layer* layer;
  if (session == NULL || info_out == NULL || layer_index >= session->layer_count) return DYNRT_INVALID_ARGUMENT;
  layer = &session->layers[layer_index];
  /* validated: the block count fits the layer's int32 active tensor, so all of these fit */
  info_out->blocks = (uint32_t)layer->grid.block_count;
  info_out->block_rows = (uint32_t)layer->grid.blocks[0];
  info_out->block_cols = (uint32_t)layer->grid.blocks[1];
  info_out->out_channels = layer->out_channels;
  info_out->name = layer->name;
  return DYNRT_OK;
}

dynrt_status dynrt_session_set_tie_decisions(dynrt_session_t session, uint32_t layer_index,
                                             const uint8_t* reference_mask, size_t blocks) {
  error_sink error;
  runtime_layer* layer;
  size_t i;
  if (session == NULL) return DYNRT_INVALID_ARGUMENT;
  error.text = session->last_error;
  error.capacity = sizeof session->last_error;
  if (layer_index >= session->layer_count || reference_mask == NULL) {
    return dynrt_fail(&error, DYNRT_INVALID_ARGUMENT, "set_tie_decisions: layer %lu of %lu, mask %s",
                      (unsigned long)layer_index, (unsigned long)session->layer_count,
                      reference_mask == NULL ? "NULL" : "given");
  }
  layer = &session->layers[layer_index];
  if (blocks != layer->grid.block_count) {
    return dynrt_fail(&error, DYNRT_WRONG_BUFFER_SIZE, "set_tie_decisions: layer %s has %llu blocks, the mask %lu",
                      layer->name, (unsigned long long)layer->grid.block_count, (unsigned long)blocks);
  }
  for (i = 0; i < blocks; ++i) layer->tie_reference[i] = reference_mask[i] != 0;
  layer->tie_reference_pending = 1;
  return DYNRT_OK;
}
