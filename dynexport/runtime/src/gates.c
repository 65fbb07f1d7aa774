/*
 * Gate decisions: SKIP_GATE (skip-conv block scores against the reference tiles) and
 * DSTEP_DECIDE (argmax of the policy logits). Both end by publishing the active block list
 * (publish_active_blocks). The executable specification is dynexport/plan/interpreter.py.
 *
 * Scores accumulate in double: the reference (torch, float32) and the runtime may then
 * differ only by float32 rounding, and blocks within DYNRT_TIE_EPSILON of the threshold are
 * counted as ties (and take the reference's decision when set_tie_decisions gave one).
 */
#include <math.h>
#include <string.h>

#include "session_internal.h"

/* sum over c of a[c] * b[c] in double. Four independent partial sums: the additions of
 * one do not wait for another's, which makes this several times faster than a single
 * running sum (and, unlike -ffast-math, gives the same result on every build). */
static double dot_product(const float* a, const float* b, size_t count) {
  double sum0 = 0.0, sum1 = 0.0, sum2 = 0.0, sum3 = 0.0;
  size_t c = 0;
  for (; c + 4 <= count; c += 4) {
    sum0 += (double)a[c] * (double)b[c];
    sum1 += (double)a[c + 1] * (double)b[c + 1];
    sum2 += (double)a[c + 2] * (double)b[c + 2];
    sum3 += (double)a[c + 3] * (double)b[c + 3];
  }
  for (; c < count; ++c) sum0 += (double)a[c] * (double)b[c];
  return (sum0 + sum1) + (sum2 + sum3);
}

/* The tie band around a threshold (dynrt.h): |score - threshold| within
 * DYNRT_TIE_EPSILON * max(1, |threshold|). An infinite threshold has none. */
static int in_tie_band(double score, double threshold) {
  double scale = fabs(threshold) > 1.0 ? fabs(threshold) : 1.0;
  if (isinf(threshold) || isnan(threshold) || isnan(score)) return 0;
  return fabs(score - threshold) <= (double)DYNRT_TIE_EPSILON * scale;
}

/* A D-STEP patch is a tie when its two logits are that close: the compute logit is scored
 * against the skip logit as its threshold, with the band scaled by the larger magnitude of
 * the two (so that it does not matter which one is called the threshold). */
static int logits_tie(float skip, float compute) {
  const double larger = fabs(skip) > fabs(compute) ? fabs(skip) : fabs(compute);
  if (isnan(skip) || isnan(compute) || isinf(larger)) return 0;
  return fabs((double)compute - (double)skip) <= (double)DYNRT_TIE_EPSILON * (larger > 1.0 ? larger : 1.0);
}

/* block_mask -> the ascending active list, the count, and the plan's int32 `active` tensor
 * (count, then the indices, then zeros), as _set_active in the interpreter. */
static void publish_active_blocks(runtime_layer* layer) {
  int32_t* active = (int32_t*)layer->tensor[SLOT_ACTIVE]->data;
  const uint32_t blocks = (uint32_t)layer->grid.block_count;
  uint32_t block, count = 0;
  for (block = 0; block < blocks; ++block) {
    if (layer->block_mask[block]) layer->active_blocks[count++] = block;
  }
  layer->active_count = count;
  memset(active, 0, layer->tensor[SLOT_ACTIVE]->bytes);
  active[0] = (int32_t)count;
  for (block = 0; block < count; ++block) active[1 + block] = (int32_t)layer->active_blocks[block];
  /* the path the frame will take; branches and RUN_SEGMENT refine it (step.c) */
  layer->path = count == 0 ? DYNRT_PATH_REUSE : count > layer->dense_cutoff ? DYNRT_PATH_DENSE : DYNRT_PATH_TILES;
}

/* Residual of one block: its current input tile (zero padding outside the input) minus its
 * reference tile, rounded to float32 like the reference's subtraction. */
static void compute_residual(const runtime_layer* layer, uint32_t block, float* residual) {
  const size_t values = (size_t)(layer->grid.tile_size[0] * layer->grid.tile_size[1]) * layer->in_channels;
  const float* reference = (const float*)layer->tensor[SLOT_REFERENCE]->data + (size_t)block * values;
  size_t i;
  dynrt_copy_input_tile(layer, block, residual);
  for (i = 0; i < values; ++i) residual[i] = residual[i] - reference[i];
}

/* input_norm / output_norm: the L2 norm of the residual over each valid output position's
 * receptive field (dilated kernel window, all channels), times norm_scale; the block's score
 * is the largest. Channel sums are taken once per tile pixel, then summed per window. */
static double norm_score(const runtime_layer* layer, const float* residual, double* pixel_energy,
                         size_t valid_rows, size_t valid_cols) {
  const block_grid* grid = &layer->grid;
  const size_t tile_w = (size_t)grid->tile_size[1], pixels = (size_t)(grid->tile_size[0] * grid->tile_size[1]);
  const size_t channels = layer->in_channels;
  const size_t kernel_h = (size_t)grid->kernel[0], kernel_w = (size_t)grid->kernel[1];
  const size_t stride_h = (size_t)grid->stride[0], stride_w = (size_t)grid->stride[1];
  const size_t dilation_h = (size_t)grid->dilation[0], dilation_w = (size_t)grid->dilation[1];
  const double scale = layer->norm_scale;
  double best = -HUGE_VAL;
  size_t p, i, j, ky, kx;
  for (p = 0; p < pixels; ++p) {
    const float* values = residual + p * channels;
    pixel_energy[p] = dot_product(values, values, channels);
  }
  for (i = 0; i < valid_rows; ++i) {
    for (j = 0; j < valid_cols; ++j) {
      double window = 0.0, score;
      for (ky = 0; ky < kernel_h; ++ky) {
        const double* row = pixel_energy + (i * stride_h + ky * dilation_h) * tile_w + j * stride_w;
        for (kx = 0; kx < kernel_w; ++kx) window += row[kx * dilation_w];
      }
      score = sqrt(window) * scale;
      if (score > best) best = score;
    }
  }
  return best;
}

/* gumbel: a learned weighted L1 norm, sum over the window and channels of
 * |residual| * gate_weight[ky][kx][c], plus the (negative) gate bias; largest over the
 * block's valid positions. */
static double gumbel_score(const runtime_layer* layer, float* residual, size_t valid_rows, size_t valid_cols) {
  const block_grid* grid = &layer->grid;
  const size_t tile_w = (size_t)grid->tile_size[1], pixels = (size_t)(grid->tile_size[0] * grid->tile_size[1]);
  const size_t channels = layer->in_channels;
  const size_t kernel_h = (size_t)grid->kernel[0], kernel_w = (size_t)grid->kernel[1];
  const size_t stride_h = (size_t)grid->stride[0], stride_w = (size_t)grid->stride[1];
  const size_t dilation_h = (size_t)grid->dilation[0], dilation_w = (size_t)grid->dilation[1];
  double best = -HUGE_VAL;
  size_t v, i, j, ky, kx;
  for (v = 0; v < pixels * channels; ++v) residual[v] = fabsf(residual[v]);
  for (i = 0; i < valid_rows; ++i) {
    for (j = 0; j < valid_cols; ++j) {
      double sum = 0.0, score;
      for (ky = 0; ky < kernel_h; ++ky) {
        const size_t y = i * stride_h + ky * dilation_h;
        const float* weights = layer->gate_weights + ky * kernel_w * channels;
        if (dilation_w == 1) {
          /* the window's row and the kernel's row are both kernel_w * C contiguous floats */
          sum += dot_product(residual + (y * tile_w + j * stride_w) * channels, weights, kernel_w * channels);
          continue;
        }
        for (kx = 0; kx < kernel_w; ++kx) {
          const size_t x = j * stride_w + kx * dilation_w;
          sum += dot_product(residual + (y * tile_w + x) * channels, weights + kx * channels, channels);
        }
      }
      score = sum + (double)layer->gate_bias;
      if (score > best) best = score;
    }
  }
  return best;
}

/* The block's gate score: the largest over its valid output positions (border blocks have
 * fewer than b x b). */
static double score_block(dynrt_session_t session, const runtime_layer* layer, uint32_t block) {
  const block_grid* grid = &layer->grid;
  const uint64_t block_row = block / grid->blocks[1], block_col = block % grid->blocks[1];
  const uint64_t rows_left = grid->output_size[0] - block_row * grid->block;
  const uint64_t cols_left = grid->output_size[1] - block_col * grid->block;
  const size_t valid_rows = (size_t)(rows_left < grid->block ? rows_left : grid->block);
  const size_t valid_cols = (size_t)(cols_left < grid->block ? cols_left : grid->block);
  compute_residual(layer, block, session->gate_residual);
  if (layer->gate == GATE_GUMBEL) return gumbel_score(layer, session->gate_residual, valid_rows, valid_cols);
  return norm_score(layer, session->gate_residual, session->gate_pixel_energy, valid_rows, valid_cols);
}

void dynrt_skip_gate(dynrt_session_t session, runtime_layer* layer) {
  float* primed = (float*)layer->tensor[SLOT_PRIMED]->data;
  const uint32_t blocks = (uint32_t)layer->grid.block_count;
  const double threshold = layer->threshold;
  uint32_t block;
  if (primed[0] == 0.0f) {
    /* first frame after create or reset: every block is computed */
    memset(layer->block_mask, 1, blocks);
  } else {
    layer->gate_scored = 1;
    for (block = 0; block < blocks; ++block) {
      const double score = score_block(session, layer, block);
      int active = score > threshold;
      if (in_tie_band(score, threshold)) {
        layer->ties += 1;
        if (layer->tie_reference_pending) active = layer->tie_reference[block];
      }
      layer->block_mask[block] = (uint8_t)active;
    }
  }
  primed[0] = 1.0f;
  publish_active_blocks(layer);
}

/* torch.argmax: the first NaN if there is one, else the first maximum. */
static uint32_t argmax_like_torch(const float* values, uint32_t count) {
  uint32_t i, best = 0;
  for (i = 0; i < count; ++i) {
    if (isnan(values[i])) return i;
  }
  for (i = 1; i < count; ++i) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

void dynrt_dstep_decide(runtime_layer* layer) {
  float* primed = (float*)layer->tensor[SLOT_PRIMED]->data;
  int32_t* decisions = (int32_t*)layer->tensor[SLOT_DECISIONS]->data;
  const uint32_t patches = (uint32_t)layer->grid.block_count;
  uint32_t patch, channel;
  int any_compute = 0;

  if (layer->tensor[SLOT_SPATIAL_LOGITS] != NULL) {
    /* [1, rows, cols, 2] = per patch (skip, compute): computed when argmax is 1 */
    const float* logits = (const float*)layer->tensor[SLOT_SPATIAL_LOGITS]->data;
    for (patch = 0; patch < patches; ++patch) {
      int active = argmax_like_torch(logits + 2 * patch, 2) == 1;
      if (logits_tie(logits[2 * patch], logits[2 * patch + 1])) {
        layer->ties += 1;
        if (layer->tie_reference_pending) active = layer->tie_reference[patch];
      }
      layer->block_mask[patch] = (uint8_t)active;
    }
  } else {
    memset(layer->block_mask, 1, patches);
  }

  for (channel = 0; channel < layer->out_channels; ++channel) {
    uint32_t choice = CHANNEL_COMPUTE;
    if (layer->tensor[SLOT_CHANNEL_LOGITS] != NULL) {
      const float* logits = (const float*)layer->tensor[SLOT_CHANNEL_LOGITS]->data + 3 * (size_t)channel;
      choice = argmax_like_torch(logits, 3);
      /* first frame after a reset: nothing to reuse, so reuse means compute */
      if (primed[0] == 0.0f && choice == CHANNEL_REUSE) choice = CHANNEL_COMPUTE;
    }
    layer->channel_decisions[channel] = (uint8_t)choice;
    decisions[channel] = (int32_t)choice;
    any_compute |= choice == CHANNEL_COMPUTE;
  }
  primed[0] = 1.0f;
  /* no channel computes: no patch needs the convolution */
  if (!any_compute) memset(layer->block_mask, 0, patches);
  publish_active_blocks(layer);
}
