/* Plan validation (see plan_validator.h). Checks run in the order frame_program.py runs
 * them (names, tensors, segments, layers, instructions, inputs/outputs) so that a plan the
 * Python reader rejects is rejected here for the same reason; the C-only checks follow the
 * Python ones of the same record. */
#include "plan_validator.h"

#include <stdio.h>

#include "block_grid.h"
#include "dynrt_backend_impl.h" /* dynrt_format_dims */

static const char* const OPCODE_NAMES[OP_COUNT] = {
    "RUN_SEGMENT",  "SKIP_GATE",       "BRANCH_IF_NONE", "BRANCH_IF_DENSE", "JUMP",       "GATHER_TILES",
    "SCATTER_TILES", "COPY_BLOCKS",    "STORE_REFERENCE", "DSTEP_DECIDE",   "DSTEP_APPLY", "COPY_TENSOR",
    "BRANCH_IF_GROUP_IDLE", "COPY_CHANNELS", "BRANCH_IF_BUSY", "FORGET_LAYERS", "BRANCH_IF_HOLDING", "DSTEP_POLICY"};

static const char* const SLOT_NAMES[LAYER_TENSOR_SLOTS] = {
    "input", "output", "reference", "tiles", "tile_output", "dense_output",
    "primed", "spatial_logits", "channel_logits", "decisions", "active"};

uint64_t dynrt_tensor_bytes(const plan_tensor* tensor) {
  uint64_t elements = 1;
  uint32_t i;
  for (i = 0; i < tensor->rank && i < 4; ++i) elements = dynrt_saturating_multiply(elements, tensor->dims[i]);
  return dynrt_saturating_multiply(elements, 4);
}

/* The record's name; validate_names has checked every name before anything else runs. */
static const char* name_at(const plan_view* plan, uint32_t offset) {
  const char* problem;
  const char* name = dynrt_plan_string(plan, offset, &problem);
  return name != NULL ? name : "?";
}

static const char* tensor_name(const plan_view* plan, uint32_t index) {
  plan_tensor tensor;
  if (index >= plan->tensor_count) return "?";
  dynrt_plan_tensor(plan, index, &tensor);
  return name_at(plan, tensor.name);
}

static dynrt_status validate_names(const plan_view* plan, error_sink* error) {
  static const char* const KINDS[4] = {"tensor", "segment", "layer", "artifact"};
  const uint32_t counts[4] = {plan->tensor_count, plan->segment_count, plan->layer_count, plan->artifact_count};
  uint32_t kind, i;
  for (kind = 0; kind < 4; ++kind) {
    for (i = 0; i < counts[kind]; ++i) {
      const char* problem = "";
      uint32_t offset;
      if (kind == 0) { plan_tensor r; dynrt_plan_tensor(plan, i, &r); offset = r.name; }
      else if (kind == 1) { plan_segment r; dynrt_plan_segment(plan, i, &r); offset = r.name; }
      else if (kind == 2) { plan_layer r; dynrt_plan_layer(plan, i, &r); offset = r.name; }
      else { plan_artifact r; dynrt_plan_artifact(plan, i, &r); offset = r.name; }
      if (dynrt_plan_string(plan, offset, &problem) == NULL) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: %s %lu name at string offset %lu: %s", KINDS[kind],
                          (unsigned long)i, (unsigned long)offset, problem);
      }
    }
  }
  return DYNRT_OK;
}

static dynrt_status validate_tensors(const plan_view* plan, error_sink* error) {
  uint32_t i, d;
  for (i = 0; i < plan->tensor_count; ++i) {
    plan_tensor t;
    dynrt_plan_tensor(plan, i, &t);
    if (t.dtype > DTYPE_INT32 || t.layout > LAYOUT_PLAIN || t.role > ROLE_SCRATCH) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: tensor %lu (%s) has an unknown dtype, layout or role",
                        (unsigned long)i, name_at(plan, t.name));
    }
    if (t.rank > 4 || (t.layout == LAYOUT_NHWC && t.rank != 4)) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: tensor %lu (%s) has rank %lu", (unsigned long)i,
                        name_at(plan, t.name), (unsigned long)t.rank);
    }
    for (d = 0; d < t.rank; ++d) {
      if (t.dims[d] == 0) break;
    }
    if (d < t.rank || dynrt_tensor_bytes(&t) > PLAN_MAX_TENSOR_BYTES) {
      uint64_t dims[4];
      char text[DYNRT_DIMS_TEXT_CAPACITY];
      for (d = 0; d < 4; ++d) dims[d] = t.dims[d];
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: tensor %lu (%s) has invalid dims %s", (unsigned long)i,
                        name_at(plan, t.name), dynrt_format_dims(text, sizeof text, t.rank, dims, 0));
    }
  }
  return DYNRT_OK;
}

/* A tile segment's packed operand: its leading dim is the segment's maximum batch. */
static dynrt_status check_batch_operand(const plan_view* plan, const plan_segment* s, uint32_t tensor_index,
                                        const char* which, error_sink* error) {
  plan_tensor t;
  dynrt_plan_tensor(plan, tensor_index, &t);
  if (t.rank < 1 || t.dims[0] != s->max_batch) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: tile segment %s has max_batch %lu but its first %s %s has leading dim %lu",
                      name_at(plan, s->name), (unsigned long)s->max_batch, which, tensor_name(plan, tensor_index),
                      (unsigned long)(t.rank >= 1 ? t.dims[0] : 0));
  }
  return DYNRT_OK;
}

static dynrt_status validate_segments(const plan_view* plan, error_sink* error) {
  uint32_t i;
  for (i = 0; i < plan->segment_count; ++i) {
    plan_segment s;
    uint64_t k;
    dynrt_plan_segment(plan, i, &s);
    if ((uint64_t)s.input_begin + s.input_count > plan->operand_count ||
        (uint64_t)s.output_begin + s.output_count > plan->operand_count) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: segment %s operands out of range", name_at(plan, s.name));
    }
    for (k = 0; k < (uint64_t)s.input_count + s.output_count; ++k) {
      uint32_t operand = (uint32_t)(k < s.input_count ? s.input_begin + k : s.output_begin + (k - s.input_count));
      uint32_t tensor = dynrt_plan_operand(plan, operand);
      if (tensor >= plan->tensor_count) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: segment %s refers to tensor %lu, but there are %lu",
                          name_at(plan, s.name), (unsigned long)tensor, (unsigned long)plan->tensor_count);
      }
    }
    if (s.max_batch > 0) {
      dynrt_status status;
      if (s.input_count < 1 || s.output_count < 1) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: tile segment %s needs at least one input and one output",
                          name_at(plan, s.name));
      }
      status = check_batch_operand(plan, &s, dynrt_plan_operand(plan, s.input_begin), "input", error);
      if (status != DYNRT_OK) return status;
      status = check_batch_operand(plan, &s, dynrt_plan_operand(plan, s.output_begin), "output", error);
      if (status != DYNRT_OK) return status;
    }
  }
  return DYNRT_OK;
}

/* What one layer tensor must look like; dims[0] of a batch tensor is checked separately. */
typedef struct expected_tensor {
  uint32_t dtype, rank;
  uint64_t dims[4];
  int any_batch;
} expected_tensor;

static expected_tensor expect(uint32_t dtype, uint32_t rank, uint64_t d0, uint64_t d1, uint64_t d2, uint64_t d3) {
  expected_tensor e;
  e.dtype = dtype;
  e.rank = rank;
  e.dims[0] = d0;
  e.dims[1] = d1;
  e.dims[2] = d2;
  e.dims[3] = d3;
  e.any_batch = 0;
  return e;
}

static dynrt_status check_layer_tensor(const plan_view* plan, const plan_layer* layer, uint32_t slot,
                                       const expected_tensor* want, error_sink* error) {
  plan_tensor t;
  uint32_t d;
  int matches;
  dynrt_plan_tensor(plan, layer->tensors[slot], &t);
  matches = t.dtype == want->dtype && t.rank == want->rank;
  for (d = 0; matches && d < want->rank; ++d) {
    if (d == 0 && want->any_batch) continue;
    matches = t.dims[d] == want->dims[d];
  }
  if (!matches) {
    uint64_t got[4];
    char got_text[DYNRT_DIMS_TEXT_CAPACITY], want_text[DYNRT_DIMS_TEXT_CAPACITY];
    for (d = 0; d < 4; ++d) got[d] = t.dims[d];
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s.%s is tensor %s, %s %s; the layer needs %s %s",
                      name_at(plan, layer->name), SLOT_NAMES[slot], name_at(plan, t.name),
                      t.dtype == DTYPE_INT32 ? "int32" : "float32",
                      dynrt_format_dims(got_text, sizeof got_text, t.rank, got, 0),
                      want->dtype == DTYPE_INT32 ? "int32" : "float32",
                      dynrt_format_dims(want_text, sizeof want_text, want->rank, want->dims, want->any_batch));
  }
  return DYNRT_OK;
}

/* The C-side checks of one layer: every present tensor has the dims its instructions use,
 * no two slots share a tensor (the copies between them assume distinct buffers), and the
 * gate kind fits the layer kind. */
static dynrt_status validate_layer_tensors(const plan_view* plan, const plan_layer* layer, const block_grid* grid,
                                           error_sink* error) {
  const uint64_t blocks = grid->block_count, ci = layer->in_channels, co = layer->out_channels;
  const uint64_t th = grid->tile_size[0], tw = grid->tile_size[1], b = grid->block;
  const uint64_t ho = grid->output_size[0], wo = grid->output_size[1];
  expected_tensor want[LAYER_TENSOR_SLOTS];
  uint32_t slot, other;
  dynrt_status status;

  want[SLOT_INPUT] = expect(DTYPE_FLOAT32, 4, 1, grid->input_size[0], grid->input_size[1], ci);
  want[SLOT_OUTPUT] = expect(DTYPE_FLOAT32, 4, 1, ho, wo, co);
  want[SLOT_REFERENCE] = expect(DTYPE_FLOAT32, 4, blocks, th, tw, ci);
  want[SLOT_TILES] = expect(DTYPE_FLOAT32, 4, 0, th, tw, ci);
  want[SLOT_TILES].any_batch = 1;
  want[SLOT_TILE_OUTPUT] = expect(DTYPE_FLOAT32, 4, 0, b, b, co);
  want[SLOT_TILE_OUTPUT].any_batch = 1;
  want[SLOT_DENSE_OUTPUT] = expect(DTYPE_FLOAT32, 4, 1, ho, wo, co);
  want[SLOT_PRIMED] = expect(DTYPE_FLOAT32, 1, 1, 0, 0, 0);
  want[SLOT_SPATIAL_LOGITS] = expect(DTYPE_FLOAT32, 4, 1, grid->blocks[0], grid->blocks[1], 2);
  want[SLOT_CHANNEL_LOGITS] = expect(DTYPE_FLOAT32, 3, 1, co, 3, 0);
  want[SLOT_DECISIONS] = expect(DTYPE_INT32, 1, co, 0, 0, 0);
  want[SLOT_ACTIVE] = expect(DTYPE_INT32, 1, dynrt_saturating_add(blocks, 1), 0, 0, 0);

  if ((layer->kind == LAYER_SKIP_CONV) != (layer->gate != GATE_DSTEP_POLICY)) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s: gate kind %lu does not fit layer kind %lu",
                      name_at(plan, layer->name), (unsigned long)layer->gate, (unsigned long)layer->kind);
  }
  for (slot = 0; slot < LAYER_TENSOR_SLOTS; ++slot) {
    if (layer->tensors[slot] == NO_TENSOR) continue;
    status = check_layer_tensor(plan, layer, slot, &want[slot], error);
    if (status != DYNRT_OK) return status;
    for (other = 0; other < slot; ++other) {
      if (layer->tensors[other] == layer->tensors[slot]) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s uses tensor %s as both %s and %s",
                          name_at(plan, layer->name), tensor_name(plan, layer->tensors[slot]), SLOT_NAMES[other],
                          SLOT_NAMES[slot]);
      }
    }
  }
  if (layer->tensors[SLOT_TILES] != NO_TENSOR && layer->tensors[SLOT_TILE_OUTPUT] != NO_TENSOR) {
    plan_tensor tiles, tile_output;
    dynrt_plan_tensor(plan, layer->tensors[SLOT_TILES], &tiles);
    dynrt_plan_tensor(plan, layer->tensors[SLOT_TILE_OUTPUT], &tile_output);
    if (tiles.dims[0] != tile_output.dims[0]) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s: tiles hold %lu blocks but tile_output %lu",
                        name_at(plan, layer->name), (unsigned long)tiles.dims[0], (unsigned long)tile_output.dims[0]);
    }
  }
  if (layer->gate == GATE_GUMBEL) {
    uint64_t expected = dynrt_saturating_multiply(grid->kernel[0] * grid->kernel[1], ci); /* kernels < 2^32 each */
    if (layer->gate_weight_count != expected) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID,
                        "plan: layer %s: gumbel gate has %lu weights, its %llux%llu kernel over %llu channels "
                        "needs %llu",
                        name_at(plan, layer->name), (unsigned long)layer->gate_weight_count,
                        (unsigned long long)grid->kernel[0], (unsigned long long)grid->kernel[1],
                        (unsigned long long)ci, (unsigned long long)expected);
    }
  }
  return DYNRT_OK;
}

uint32_t dynrt_dstep_policy_hidden(const plan_layer* layer) {
  const int spatial = layer->tensors[SLOT_SPATIAL_LOGITS] != NO_TENSOR;
  const int channel = layer->tensors[SLOT_CHANNEL_LOGITS] != NO_TENSOR;
  const uint64_t spatial_values = spatial ? 2 * 2 * 3 * 3 + 2 : 0;
  uint64_t rest, per_hidden, hidden;
  if ((!spatial && !channel) || layer->gate_weight_count < spatial_values) return UINT32_MAX;
  rest = layer->gate_weight_count - spatial_values;
  if (!channel) return rest == 0 ? 0 : UINT32_MAX;
  /* w1 [h, 2 Ci], b1 [h], w2 [3 Co, h], b2 [3 Co] */
  per_hidden = 2 * (uint64_t)layer->in_channels + 1 + 3 * (uint64_t)layer->out_channels;
  if (rest < 3 * (uint64_t)layer->out_channels) return UINT32_MAX;
  rest -= 3 * (uint64_t)layer->out_channels;
  hidden = rest / per_hidden;
  if (hidden < 1 || hidden * per_hidden != rest || hidden >= UINT32_MAX) return UINT32_MAX;
  return (uint32_t)hidden;
}

static dynrt_status validate_layers(const plan_view* plan, error_sink* error) {
  static const uint32_t REQUIRED[4] = {SLOT_INPUT, SLOT_OUTPUT, SLOT_PRIMED, SLOT_ACTIVE};
  uint32_t i, slot, r;
  for (i = 0; i < plan->layer_count; ++i) {
    plan_layer layer;
    block_grid grid;
    dynrt_status status;
    dynrt_plan_layer(plan, i, &layer);
    if (layer.kind > LAYER_DSTEP || layer.gate > GATE_DSTEP_POLICY) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s has an unknown kind or gate",
                        name_at(plan, layer.name));
    }
    if (!dynrt_block_grid_from_layer(&layer, &grid)) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s has an invalid block grid",
                        name_at(plan, layer.name));
    }
    if ((uint64_t)layer.gate_weight + layer.gate_weight_count > plan->constant_bytes / 4) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s gate weights out of range",
                        name_at(plan, layer.name));
    }
    for (r = 0; r < 4; ++r) {
      slot = REQUIRED[r];
      if (layer.tensors[slot] >= plan->tensor_count) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s.%s refers to tensor %lu, but there are %lu",
                          name_at(plan, layer.name), SLOT_NAMES[slot], (unsigned long)layer.tensors[slot],
                          (unsigned long)plan->tensor_count);
      }
    }
    for (slot = 0; slot < LAYER_TENSOR_SLOTS; ++slot) {
      if (layer.tensors[slot] != NO_TENSOR && layer.tensors[slot] >= plan->tensor_count) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: layer %s.%s refers to tensor %lu, but there are %lu",
                          name_at(plan, layer.name), SLOT_NAMES[slot], (unsigned long)layer.tensors[slot],
                          (unsigned long)plan->tensor_count);
      }
    }
    status = validate_layer_tensors(plan, &layer, &grid, error);
    if (status != DYNRT_OK) return status;
  }
  return DYNRT_OK;
}

/* The layer tensor an instruction cannot run without. */
static dynrt_status require_slot(const plan_view* plan, uint32_t pc, uint32_t op, const plan_layer* layer,
                                 uint32_t slot, error_sink* error) {
  if (layer->tensors[slot] == NO_TENSOR) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (%s) needs layer %s.%s, which is absent",
                      (unsigned long)pc, OPCODE_NAMES[op], name_at(plan, layer->name), SLOT_NAMES[slot]);
  }
  return DYNRT_OK;
}

/* Only forward jumps: every frame then runs each instruction at most once (a tampered plan
 * cannot loop forever). The compiler only ever emits forward branches. */
static dynrt_status check_target(const plan_view* plan, uint32_t pc, uint32_t op, uint32_t target, error_sink* error) {
  if (target > plan->instruction_count) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (%s) jumps to %lu, past the end",
                      (unsigned long)pc, OPCODE_NAMES[op], (unsigned long)target);
  }
  if (target <= pc) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (%s) jumps back to %lu (only forward jumps)",
                      (unsigned long)pc, OPCODE_NAMES[op], (unsigned long)target);
  }
  return DYNRT_OK;
}

static dynrt_status validate_layer_instruction(const plan_view* plan, uint32_t pc, const plan_instruction* ins,
                                               error_sink* error) {
  plan_layer layer;
  dynrt_status status = DYNRT_OK;
  if (ins->a >= plan->layer_count) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (%s) refers to layer %lu", (unsigned long)pc,
                      OPCODE_NAMES[ins->op], (unsigned long)ins->a);
  }
  dynrt_plan_layer(plan, ins->a, &layer);
  switch (ins->op) {
    case OP_BRANCH_IF_NONE:
    case OP_BRANCH_IF_DENSE:
    case OP_BRANCH_IF_BUSY:
      return check_target(plan, pc, ins->op, ins->b, error);
    case OP_FORGET_LAYERS: {
      uint32_t i;
      int skip_convs = ins->b >= 1 && ins->b <= plan->layer_count - ins->a;
      for (i = 0; skip_convs && i < ins->b; ++i) {
        plan_layer forgotten;
        dynrt_plan_layer(plan, ins->a + i, &forgotten);
        skip_convs = forgotten.kind == LAYER_SKIP_CONV;
      }
      if (!skip_convs) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID,
                          "plan: instruction %lu (FORGET_LAYERS) covers layers [%lu, %llu), expected one or more "
                          "skip-conv layers of the %lu",
                          (unsigned long)pc, (unsigned long)ins->a, (unsigned long long)ins->a + ins->b,
                          (unsigned long)plan->layer_count);
      }
      return DYNRT_OK;
    }
    case OP_BRANCH_IF_GROUP_IDLE:
      status = check_target(plan, pc, ins->op, ins->b, error);
      if (status != DYNRT_OK) return status;
      if (layer.kind != LAYER_DSTEP || layer.tensors[SLOT_DECISIONS] == NO_TENSOR || ins->d < 1 ||
          ins->c > layer.out_channels || ins->d > layer.out_channels - ins->c) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID,
                          "plan: instruction %lu (BRANCH_IF_GROUP_IDLE) tests channels [%lu, %llu) of layer %s, which "
                          "is not a D-STEP layer with decisions and that many output channels (%lu)",
                          (unsigned long)pc, (unsigned long)ins->c, (unsigned long long)ins->c + ins->d,
                          name_at(plan, layer.name), (unsigned long)layer.out_channels);
      }
      return DYNRT_OK;
    case OP_BRANCH_IF_HOLDING: /* stands in for the layer's SKIP_GATE on a held frame */
    case OP_SKIP_GATE:
      if (ins->op == OP_BRANCH_IF_HOLDING) {
        status = check_target(plan, pc, ins->op, ins->b, error);
        if (status != DYNRT_OK) return status;
      }
      if (layer.kind != LAYER_SKIP_CONV) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (%s) on D-STEP layer %s",
                          (unsigned long)pc, OPCODE_NAMES[ins->op], name_at(plan, layer.name));
      }
      return require_slot(plan, pc, ins->op, &layer, SLOT_REFERENCE, error);
    case OP_GATHER_TILES:
      return require_slot(plan, pc, ins->op, &layer, SLOT_TILES, error);
    case OP_SCATTER_TILES:
      return require_slot(plan, pc, ins->op, &layer, SLOT_TILE_OUTPUT, error);
    case OP_COPY_BLOCKS:
      return require_slot(plan, pc, ins->op, &layer, SLOT_DENSE_OUTPUT, error);
    case OP_STORE_REFERENCE:
      return require_slot(plan, pc, ins->op, &layer, SLOT_REFERENCE, error);
    case OP_DSTEP_POLICY: {
      uint32_t k;
      if (layer.kind != LAYER_DSTEP || dynrt_dstep_policy_hidden(&layer) == UINT32_MAX) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID,
                          "plan: instruction %lu (DSTEP_POLICY): layer %s is not a D-STEP layer whose %lu policy "
                          "weights fit its logits",
                          (unsigned long)pc, name_at(plan, layer.name), (unsigned long)layer.gate_weight_count);
      }
      for (k = 0; k < 2; ++k) {
        const uint32_t index = k == 0 ? ins->b : ins->c;
        plan_tensor pooled;
        int fits = index < plan->tensor_count;
        if (fits) {
          dynrt_plan_tensor(plan, index, &pooled);
          fits = pooled.dtype == DTYPE_FLOAT32 && pooled.rank == 2 && pooled.dims[0] == 1 &&
                 pooled.dims[1] == layer.in_channels;
        }
        if (!fits) {
          return dynrt_fail(error, DYNRT_PLAN_INVALID,
                            "plan: instruction %lu (DSTEP_POLICY): pooled tensor %lu is not float32 [1, %lu]",
                            (unsigned long)pc, (unsigned long)index, (unsigned long)layer.in_channels);
        }
      }
      return DYNRT_OK;
    }
    case OP_DSTEP_DECIDE:
      if (layer.kind != LAYER_DSTEP) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (DSTEP_DECIDE) on skip-conv layer %s",
                          (unsigned long)pc, name_at(plan, layer.name));
      }
      return require_slot(plan, pc, ins->op, &layer, SLOT_DECISIONS, error);
    case OP_DSTEP_APPLY:
      if (ins->b > DSTEP_SOURCE_DENSE) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (DSTEP_APPLY) has unknown source %lu",
                          (unsigned long)pc, (unsigned long)ins->b);
      }
      status = require_slot(plan, pc, ins->op, &layer, SLOT_DECISIONS, error);
      if (status == DYNRT_OK && ins->b == DSTEP_SOURCE_TILES) {
        status = require_slot(plan, pc, ins->op, &layer, SLOT_TILE_OUTPUT, error);
      }
      if (status == DYNRT_OK && ins->b == DSTEP_SOURCE_DENSE) {
        status = require_slot(plan, pc, ins->op, &layer, SLOT_DENSE_OUTPUT, error);
      }
      return status;
    default:
      return DYNRT_OK;
  }
}

/* RUN_POINTWISE / RUN_NEAREST_UPSAMPLE: a fixed segment whose operands are float32 NHWC maps
 * [1, H, W, C], the inputs of one height and width, the outputs of one height and width that
 * are the inputs' (pointwise) or whole multiples of them (upsampling). */
static dynrt_status validate_spatial_run(const plan_view* plan, uint32_t pc, const plan_instruction* ins,
                                         error_sink* error) {
  const int upsample = (ins->c & RUN_NEAREST_UPSAMPLE) != 0;
  const char* kind = upsample ? "a nearest upsampling" : "pointwise";
  plan_segment segment;
  uint32_t k, height = 0, width = 0;
  dynrt_plan_segment(plan, ins->a, &segment);
  if ((ins->c & RUN_POINTWISE) && upsample) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: instruction %lu runs segment %s both as pointwise and as a nearest upsampling "
                      "(expected one of the two flags)",
                      (unsigned long)pc, name_at(plan, segment.name));
  }
  if (ins->b != NO_LAYER || segment.max_batch != 0 || segment.input_count == 0) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: instruction %lu runs segment %s as %s, but it is a tile segment or has no input "
                      "(such runs are fixed segments over maps)",
                      (unsigned long)pc, name_at(plan, segment.name), kind);
  }
  for (k = 0; k < segment.input_count + segment.output_count; ++k) {
    const int first_output = k == segment.input_count;
    const uint32_t operand = k < segment.input_count ? segment.input_begin + k
                                                     : segment.output_begin + (k - segment.input_count);
    plan_tensor tensor;
    int fits;
    dynrt_plan_tensor(plan, dynrt_plan_operand(plan, operand), &tensor); /* operands validated before */
    fits = tensor.rank == 4 && tensor.layout == LAYOUT_NHWC && tensor.dtype == DTYPE_FLOAT32 && tensor.dims[0] == 1 &&
           tensor.dims[1] > 0 && tensor.dims[2] > 0;
    if (fits && first_output) {
      fits = upsample ? tensor.dims[1] % height == 0 && tensor.dims[2] % width == 0
                      : tensor.dims[1] == height && tensor.dims[2] == width;
    } else if (fits && k > 0) {
      fits = tensor.dims[1] == height && tensor.dims[2] == width;
    }
    if (!fits) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID,
                        "plan: instruction %lu runs segment %s as %s, but its operand %s is not a float32 NHWC map "
                        "[1, H, W, C] of the others' height and width (outputs: %s)",
                        (unsigned long)pc, name_at(plan, segment.name), kind, name_at(plan, tensor.name),
                        upsample ? "whole multiples of the inputs'" : "the inputs'");
    }
    height = tensor.dims[1];
    width = tensor.dims[2];
  }
  return DYNRT_OK;
}

static dynrt_status validate_run_segment(const plan_view* plan, uint32_t pc, const plan_instruction* ins,
                                         error_sink* error) {
  plan_segment segment;
  plan_layer layer;
  if (ins->a >= plan->segment_count || (ins->b != NO_LAYER && ins->b >= plan->layer_count)) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (RUN_SEGMENT) operands out of range",
                      (unsigned long)pc);
  }
  if ((ins->c & ~RUN_KNOWN_FLAGS) != 0) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (RUN_SEGMENT) has unknown flags 0x%lx",
                      (unsigned long)pc, (unsigned long)(ins->c & ~RUN_KNOWN_FLAGS));
  }
  if (ins->c & RUN_KNOWN_FLAGS) return validate_spatial_run(plan, pc, ins, error);
  if (ins->b == NO_LAYER) return DYNRT_OK;
  /* a batch run: the segment packs layer b's active tiles */
  dynrt_plan_segment(plan, ins->a, &segment);
  dynrt_plan_layer(plan, ins->b, &layer);
  if (segment.max_batch == 0 || layer.tensors[SLOT_TILES] == NO_TENSOR ||
      dynrt_plan_operand(plan, segment.input_begin) != layer.tensors[SLOT_TILES]) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: instruction %lu runs segment %s batched by layer %s, but it is not that layer's "
                      "tile segment (max_batch > 0, first input = the layer's tiles)",
                      (unsigned long)pc, name_at(plan, segment.name), name_at(plan, layer.name));
  }
  return DYNRT_OK;
}

/* COPY_CHANNELS: two different float32 NHWC tensors of the same N, H, W, the source's
 * channels inside the destination's from c on; d a layer or NO_LAYER. */
static dynrt_status validate_copy_channels(const plan_view* plan, uint32_t pc, const plan_instruction* ins,
                                           error_sink* error) {
  plan_tensor source, destination;
  const plan_tensor* both[2];
  uint32_t k;
  if (ins->a >= plan->tensor_count || ins->b >= plan->tensor_count || ins->a == ins->b) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: instruction %lu (COPY_CHANNELS) refers to tensors %lu and %lu, expected two different "
                      "ones of %lu",
                      (unsigned long)pc, (unsigned long)ins->a, (unsigned long)ins->b, (unsigned long)plan->tensor_count);
  }
  dynrt_plan_tensor(plan, ins->a, &source);
  dynrt_plan_tensor(plan, ins->b, &destination);
  both[0] = &source;
  both[1] = &destination;
  for (k = 0; k < 2; ++k) {
    if (both[k]->rank != 4 || both[k]->layout != LAYOUT_NHWC || both[k]->dtype != DTYPE_FLOAT32) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu (COPY_CHANNELS): %s is not a float32 NHWC tensor",
                        (unsigned long)pc, name_at(plan, both[k]->name));
    }
  }
  if (source.dims[0] != destination.dims[0] || source.dims[1] != destination.dims[1] ||
      source.dims[2] != destination.dims[2] || ins->c > destination.dims[3] ||
      source.dims[3] > destination.dims[3] - ins->c) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: instruction %lu (COPY_CHANNELS) copies %s into channels %lu.. of %s: expected the same "
                      "N, H, W and the channels inside",
                      (unsigned long)pc, name_at(plan, source.name), (unsigned long)ins->c,
                      name_at(plan, destination.name));
  }
  if (ins->d != NO_LAYER && ins->d >= plan->layer_count) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: instruction %lu (COPY_CHANNELS) is batched by layer %lu, but there are %lu",
                      (unsigned long)pc, (unsigned long)ins->d, (unsigned long)plan->layer_count);
  }
  return DYNRT_OK;
}

static dynrt_status validate_instructions(const plan_view* plan, error_sink* error) {
  uint32_t pc;
  for (pc = 0; pc < plan->instruction_count; ++pc) {
    plan_instruction ins;
    dynrt_status status = DYNRT_OK;
    dynrt_plan_instruction(plan, pc, &ins);
    if (ins.op >= OP_COUNT) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu has unknown opcode %lu", (unsigned long)pc,
                        (unsigned long)ins.op);
    }
    if (ins.op == OP_RUN_SEGMENT) {
      status = validate_run_segment(plan, pc, &ins, error);
    } else if (ins.op == OP_JUMP) {
      status = check_target(plan, pc, ins.op, ins.a, error);
    } else if (ins.op == OP_COPY_CHANNELS) {
      status = validate_copy_channels(plan, pc, &ins, error);
    } else if (ins.op == OP_COPY_TENSOR) {
      plan_tensor source, destination;
      if (ins.a >= plan->tensor_count || ins.b >= plan->tensor_count) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu refers to tensor %lu, but there are %lu",
                          (unsigned long)pc, (unsigned long)(ins.a >= plan->tensor_count ? ins.a : ins.b),
                          (unsigned long)plan->tensor_count);
      }
      dynrt_plan_tensor(plan, ins.a, &source);
      dynrt_plan_tensor(plan, ins.b, &destination);
      if (dynrt_tensor_bytes(&source) != dynrt_tensor_bytes(&destination)) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu copies between tensors of different size",
                          (unsigned long)pc);
      }
      /* the interpreter's copy_ converts values between dtypes; a byte copy would not */
      if (source.dtype != destination.dtype) {
        return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: instruction %lu copies %s into %s of another dtype",
                          (unsigned long)pc, name_at(plan, source.name), name_at(plan, destination.name));
      }
    } else {
      status = validate_layer_instruction(plan, pc, &ins, error);
    }
    if (status != DYNRT_OK) return status;
  }
  return DYNRT_OK;
}

static dynrt_status validate_inputs_outputs(const plan_view* plan, error_sink* error) {
  plan_tensor input, output;
  uint64_t i;
  for (i = 0; i < (uint64_t)plan->input_count + plan->output_count; ++i) {
    uint32_t t = i < plan->input_count ? dynrt_plan_input(plan, (uint32_t)i)
                                       : dynrt_plan_output(plan, (uint32_t)(i - plan->input_count));
    if (t >= plan->tensor_count) {
      return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: plan inputs/outputs refers to tensor %lu, but there are %lu",
                        (unsigned long)t, (unsigned long)plan->tensor_count);
    }
  }
  /* a session exchanges exactly one frame and one result with its caller */
  if (plan->input_count != 1 || plan->output_count != 1) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: %lu inputs and %lu outputs; this runtime runs plans of one each",
                      (unsigned long)plan->input_count, (unsigned long)plan->output_count);
  }
  dynrt_plan_tensor(plan, dynrt_plan_input(plan, 0), &input);
  dynrt_plan_tensor(plan, dynrt_plan_output(plan, 0), &output);
  if (input.role != ROLE_INPUT || input.dtype != DTYPE_FLOAT32) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: input tensor %s must be a float32 tensor of role input",
                      name_at(plan, input.name));
  }
  if (output.dtype != DTYPE_FLOAT32) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: output tensor %s must be float32", name_at(plan, output.name));
  }
  return DYNRT_OK;
}

dynrt_status dynrt_plan_validate(const plan_view* plan, error_sink* error) {
  dynrt_status status;
  if ((status = validate_names(plan, error)) != DYNRT_OK) return status;
  if ((status = validate_tensors(plan, error)) != DYNRT_OK) return status;
  if ((status = validate_segments(plan, error)) != DYNRT_OK) return status;
  if ((status = validate_layers(plan, error)) != DYNRT_OK) return status;
  if ((status = validate_instructions(plan, error)) != DYNRT_OK) return status;
  return validate_inputs_outputs(plan, error);
}
