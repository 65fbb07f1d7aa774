/*
 * Gate decisions: SKIP_GATE (skip-conv block scores against the reference tiles) and
 * DSTEP_DECIDE (argmax of the policy logits). Both end by publishing the active block list
 * (publish_active_blocks). The executable specification is dynexport/plan/interpreter.py.
 *
 * SKIP_GATE is most of the runtime's own time per frame, so it is written for speed:
 *  - Scores accumulate in float, as the reference (torch, float32) does, in LANES
 *    independent partial sums that the compiler turns into SIMD vectors. The two differ
 *    only by float32 rounding (about 1e-6 relative for a few hundred terms); blocks within
 *    DYNRT_TIE_EPSILON of the threshold are counted as ties (and take the reference's
 *    decision when set_tie_decisions gave one), so that difference never decides a block.
 *  - A block's score is the largest over its positions, but only its decision and whether
 *    it is a tie matter. So scoring stops at the first position clearly above the threshold
 *    (beyond the tie band: active, not a tie), and output rows whose upper bound is clearly
 *    below it are not scored at all. The bounds come with the pass that takes the residual,
 *    so in a still region a block costs about one pass over its tile.
 *  - That pass reads the current input in place (no tile copy, zero padding read as zero).
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "nonfinite.h"
#include "session_internal.h"

/* Independent partial sums per accumulation: two SSE or NEON vectors of floats (one AVX).
 * The additions of one lane do not wait for another's, and (unlike -ffast-math) the result
 * is the same on every build. */
#define LANES 8

/* lanes += the products a[i] * b[i], i < count: lane i % LANES takes the ones of whole
 * groups of LANES, lane 0 the rest. */
static inline void accumulate_products(float lanes[LANES], const float* restrict a, const float* restrict b,
                                       size_t count) {
  size_t i = 0, lane;
  for (; i + LANES <= count; i += LANES) {
    for (lane = 0; lane < LANES; ++lane) lanes[lane] += a[i + lane] * b[i + lane];
  }
  for (; i < count; ++i) lanes[0] += a[i] * b[i]; /* a constant index keeps lanes in registers */
}

static inline float sum_lanes(const float lanes[LANES]) {
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

/* values[i] = |current[i] - reference[i]| (current NULL: zero padding, where the residual
 * is -reference), rounded to float32 like the reference's subtraction; returns their sum. */
static float abs_residual_run(const float* restrict current, const float* restrict reference, float* restrict values,
                              size_t count) {
  float lanes[LANES] = {0}, tail = 0.0f;
  size_t i = 0, lane;
  if (current == NULL) {
    for (; i + LANES <= count; i += LANES) {
      for (lane = 0; lane < LANES; ++lane) {
        values[i + lane] = fabsf(reference[i + lane]);
        lanes[lane] += values[i + lane];
      }
    }
    for (; i < count; ++i) {
      values[i] = fabsf(reference[i]);
      tail += values[i];
    }
  } else {
    for (; i + LANES <= count; i += LANES) {
      for (lane = 0; lane < LANES; ++lane) {
        values[i + lane] = fabsf(current[i + lane] - reference[i + lane]);
        lanes[lane] += values[i + lane];
      }
    }
    for (; i < count; ++i) {
      values[i] = fabsf(current[i] - reference[i]);
      tail += values[i];
    }
  }
  return sum_lanes(lanes) + tail;
}

/* The sum of |current[i] - reference[i]| (current NULL: of |reference[i]|), as
 * abs_residual_run returns it, without writing the values. */
static float abs_residual_sum(const float* restrict current, const float* restrict reference, size_t count) {
  float lanes[LANES] = {0}, tail = 0.0f;
  size_t i = 0, lane;
  if (current == NULL) {
    for (; i + LANES <= count; i += LANES) {
      for (lane = 0; lane < LANES; ++lane) lanes[lane] += fabsf(reference[i + lane]);
    }
    for (; i < count; ++i) tail += fabsf(reference[i]);
  } else {
    for (; i + LANES <= count; i += LANES) {
      for (lane = 0; lane < LANES; ++lane) lanes[lane] += fabsf(current[i + lane] - reference[i + lane]);
    }
    for (; i < count; ++i) tail += fabsf(current[i] - reference[i]);
  }
  return sum_lanes(lanes) + tail;
}

/* A run of pixel energies summed in 4 interleaved partial sums (pixel i to sum i % 4, the
 * tail to sum 0), the same grouping wherever a row sum is taken (pixel_energy_run, the
 * incremental refresh): one running sum waited an add's latency per pixel, most of a
 * 3-channel frame layer's scoring time. Row sums only bound scores (with a rounding
 * allowance), so their grouping decides nothing. */
static float energy_total(const float* energy, size_t count) {
  float lanes[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  size_t i = 0;
  for (; i + 4 <= count; i += 4) {
    lanes[0] += energy[i];
    lanes[1] += energy[i + 1];
    lanes[2] += energy[i + 2];
    lanes[3] += energy[i + 3];
  }
  for (; i < count; ++i) lanes[0] += energy[i];
  return (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
}

/* Per pixel, the sum over its channels of (current - reference)^2 in channel order (current
 * NULL: zero padding); returns energy_total of the run. A pixel's channels are summed in
 * LANES partial sums when there are more than LANES of them; with fewer, the lane reduction
 * would cost more than a plain sum. Three channels (an RGB frame) get their own loop: the
 * same sums ((0 + a) + b equals a + b for a >= 0), without a loop per pixel. */
static float pixel_energy_run(const float* restrict current, const float* restrict reference,
                              float* restrict energy, size_t pixels, size_t channels) {
  size_t p, c, lane;
  if (channels == 3 && current != NULL) {
    for (p = 0; p < pixels; ++p) {
      const float d0 = current[3 * p] - reference[3 * p], d1 = current[3 * p + 1] - reference[3 * p + 1];
      const float d2 = current[3 * p + 2] - reference[3 * p + 2];
      energy[p] = (d0 * d0 + d1 * d1) + d2 * d2;
    }
    return energy_total(energy, pixels);
  }
  for (p = 0; p < pixels; ++p) {
    const float* ref = reference + p * channels;
    float sum = 0.0f;
    if (current == NULL) {
      for (c = 0; c < channels; ++c) sum += ref[c] * ref[c];
    } else if (channels <= LANES) {
      const float* cur = current + p * channels;
      for (c = 0; c < channels; ++c) sum += (cur[c] - ref[c]) * (cur[c] - ref[c]);
    } else {
      const float* cur = current + p * channels;
      float lanes[LANES] = {0};
      for (c = 0; c + LANES <= channels; c += LANES) {
        for (lane = 0; lane < LANES; ++lane) {
          const float difference = cur[c + lane] - ref[c + lane];
          lanes[lane] += difference * difference;
        }
      }
      for (; c < channels; ++c) lanes[0] += (cur[c] - ref[c]) * (cur[c] - ref[c]);
      sum = sum_lanes(lanes);
    }
    energy[p] = sum;
  }
  return energy_total(energy, pixels);
}

/* The half-width of the tie band around a threshold (dynrt.h):
 * DYNRT_TIE_EPSILON * max(1, |threshold|). */
static double tie_margin(double threshold) {
  return (double)DYNRT_TIE_EPSILON * (fabs(threshold) > 1.0 ? fabs(threshold) : 1.0);
}

/* A norm gate at threshold 0 decides exactly, without a tie band: a zero residual scores 0
 * in any summation order (a sum of zeros) and any other scores above 0 (a sum of squares;
 * float32 underflow of squares below ~1e-45 happens alike in the reference), so no rounding
 * difference can move a block across. Such a gate recomputes exactly the blocks whose input
 * changed: what `dynexport.gating.convert` makes at threshold 0, the dense convolution's
 * output computed block-sparsely. */
static int decides_exactly(const runtime_layer* layer) {
  return layer->gate != GATE_GUMBEL && layer->threshold == 0.0f;
}

/* |score - threshold| within the tie margin. An infinite threshold has no band. */
static int in_tie_band(const runtime_layer* layer, double score) {
  const double threshold = layer->threshold;
  if (decides_exactly(layer) || isinf(threshold) || isnan(threshold) || isnan(score)) return 0;
  return fabs(score - threshold) <= tie_margin(threshold);
}

/* Whether a block with a zero residual is inactive, and no tie, in every implementation. */
static int zero_residual_clearly_inactive(const runtime_layer* layer) {
  const double threshold = layer->threshold;
  const double zero_residual_score = layer->gate == GATE_GUMBEL ? (double)layer->gate_bias : 0.0;
  if (decides_exactly(layer)) return 1;
  return threshold - zero_residual_score > tie_margin(threshold);
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
  runtime_tensor* tensor = layer->tensor[SLOT_ACTIVE];
  int32_t* active = (int32_t*)tensor->data;
  const uint32_t blocks = (uint32_t)layer->grid.block_count;
  uint32_t block, count = 0, unchanged;
  for (block = 0; block < blocks; ++block) {
    if (layer->block_mask[block]) layer->active_blocks[count++] = block;
  }
  layer->active_count = count;
  layer->gathered_tiles_version = 0; /* packed tiles, if any, hold an older list */
  /* the tensor changes (and its version with it) only when the list does: segments reading
   * it stay current through a still stretch */
  unchanged = active[0] == (int32_t)count;
  for (block = 0; unchanged && block < count; ++block) unchanged = active[1 + block] == (int32_t)layer->active_blocks[block];
  if (!unchanged) {
    memset(active, 0, tensor->bytes);
    active[0] = (int32_t)count;
    for (block = 0; block < count; ++block) active[1 + block] = (int32_t)layer->active_blocks[block];
    tensor_written(tensor);
  }
  /* the path the frame will take; branches and RUN_SEGMENT refine it (step.c) */
  layer->path = count == 0 ? DYNRT_PATH_REUSE : count > layer->dense_cutoff ? DYNRT_PATH_DENSE : DYNRT_PATH_TILES;
}

/* primed = 1 (a layer's first decision since create or reset was made). */
static void mark_primed(runtime_layer* layer) {
  float* primed = (float*)layer->tensor[SLOT_PRIMED]->data;
  if (primed[0] == 1.0f) return;
  primed[0] = 1.0f;
  tensor_written(layer->tensor[SLOT_PRIMED]);
}

/* ---- SKIP_GATE scoring -------------------------------------------------------------------
 *
 * A block is scored in two steps.
 *  1. One pass over its tile takes the residual against the reference tile and, per tile
 *     row y, row_sums[y]: an upper bound of what that row adds to any window's sum.
 *       gumbel  row_sums[y] = the row's sum of |residual|, which times the largest gate
 *               weight (never below 0) bounds its share of any window (read-only pass)
 *       norm    pixel_sums = per pixel, the sum over channels of residual^2 (its energy);
 *               row_sums[y] = the row's energy
 *     A window covers kernel_h tile rows, so their row sums bound every score of an output
 *     row (output_row_bound): output rows clearly below the threshold are done.
 *  2. The other rows are scored position by position, stopping at the first position
 *     clearly above: gumbel as the weighted sum of |residual| over the window (the values
 *     of the tile rows it reads are written first, once per block), norm from the sum of
 *     the pixel energies under the window.
 */

/* What scoring one layer's blocks this frame needs, set up once per SKIP_GATE. */
typedef struct gate_pass {
  const runtime_layer* layer;
  int gumbel;
  size_t tile_h, tile_w, channels;
  size_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
  double threshold, tie_margin;
  int exact;  /* decides_exactly: no tie band, "below" includes the threshold itself */
  /* upper bounds are sound: finite gate weights (gumbel), norm_scale finite and >= 0 */
  int bounds_usable;
  /* relative allowance for float rounding in bounds and scores (see prepare_gate_pass) */
  double rounding_allowance;
  /* gumbel: the largest gate weight, at least 0 */
  double largest_weight;
  /* the session's scratch (session_internal.h) */
  float *values, *pixel_sums, *row_sums;
  uint8_t* value_rows;  /* gumbel: which tile rows `values` holds for the block being scored */
  /* the reference's padding is zero (session_internal.h), so is the residual there */
  int padding_zero;
  /* checking the frame for step.c: set when a row sum is not finite (NULL: not checking).
   * Every tile row is then summed in full, so every frame value is read. */
  int* row_sum_not_finite;
  /* norm gates: pixel_sums is the block's slot of layer->energy_cache (NULL: the scratch);
   * incremental: a valid slot is summed again only where the input changed since `since` */
  float* energy_cache;
  uint8_t* energy_valid;
  int incremental;
  uint64_t since;
} gate_pass;

/* Clearly above: active, and not a tie, whatever the other positions score. */
static int clearly_above(const gate_pass* pass, double score) {
  if (pass->exact) return score > pass->threshold;
  return score - pass->threshold > pass->tie_margin;
}

/* Clearly below: inactive and not a tie, unless another position scores higher. An upper
 * bound that is clearly below settles every position it bounds. */
static int clearly_below(const gate_pass* pass, double score) {
  if (pass->exact) return score <= pass->threshold;
  return pass->threshold - score > pass->tie_margin;
}

/* Output row i's windows read tile rows i * stride_h + ky * dilation_h, ky < kernel_h. */
static size_t window_tile_row(const gate_pass* pass, size_t output_row, size_t ky) {
  return output_row * pass->stride_h + ky * pass->dilation_h;
}

/* An upper bound of the score of a window whose row sums add up to (at most) `sum`, with
 * room for the rounding of the float sums on either side. */
static double window_score_bound(const gate_pass* pass, double sum) {
  const double allowance = pass->rounding_allowance;
  if (pass->gumbel) {
    const double bias = pass->layer->gate_bias, weighted = sum * pass->largest_weight;
    return bias + weighted + allowance * (weighted + fabs(bias));
  }
  return sqrt(sum * (1.0 + allowance)) * pass->layer->norm_scale;
}

/* Output row i: an upper bound of its positions' scores, from the row sums. */
static double output_row_bound(const gate_pass* pass, size_t output_row) {
  double sum = 0.0;
  size_t ky;
  for (ky = 0; ky < pass->kernel_h; ++ky) sum += pass->row_sums[window_tile_row(pass, output_row, ky)];
  return window_score_bound(pass, sum);
}

/* Frame check (gate_pass.row_sum_not_finite): a NaN or Inf input value makes its row sum
 * NaN or Inf (the reference is finite). The converse may fail (finite values can overflow a
 * sum): step.c scans the frame before it rejects it. */
static void note_row_sums(const gate_pass* pass) {
  size_t y;
  if (pass->row_sum_not_finite == NULL) return;
  for (y = 0; y < pass->tile_h; ++y) {
    if (!isfinite(pass->row_sums[y])) *pass->row_sum_not_finite = 1;
  }
}

/* gumbel: |residual| of padding values (input 0), summed, and written to row_values unless NULL */
static float padding_abs_residual(const gate_pass* pass, const float* reference, float* row_values, size_t count) {
  if (pass->padding_zero) {
    if (row_values != NULL) memset(row_values, 0, count * sizeof *row_values);
    return 0.0f;
  }
  return row_values != NULL ? abs_residual_run(NULL, reference, row_values, count)
                            : abs_residual_sum(NULL, reference, count);
}

/* gumbel: a tile row's residual, either summed (row_values NULL) or written to row_values
 * (|residual|) with its sum returned. The current input is read where it is (no tile copy);
 * padding columns and rows read zero. */
static float gumbel_tile_row(const gate_pass* pass, const tile_placement* placement, const float* reference_tile,
                             size_t y, float* row_values) {
  const size_t values = pass->tile_w * pass->channels;
  const size_t left = placement->first_col * pass->channels;
  const size_t inside = (placement->last_col - placement->first_col) * pass->channels;
  const size_t right = values - left - inside;
  const float* input = tile_input_row(placement, y);
  const float* ref = reference_tile + y * values;
  float sum;
  if (row_values == NULL) {
    if (input == NULL) return padding_abs_residual(pass, ref, NULL, values);
    sum = abs_residual_sum(input, ref + left, inside);
    if (left > 0) sum += padding_abs_residual(pass, ref, NULL, left);
    if (right > 0) sum += padding_abs_residual(pass, ref + left + inside, NULL, right);
    return sum;
  }
  if (input == NULL) return padding_abs_residual(pass, ref, row_values, values);
  sum = abs_residual_run(input, ref + left, row_values + left, inside);
  if (left > 0) sum += padding_abs_residual(pass, ref, row_values, left);
  if (right > 0) sum += padding_abs_residual(pass, ref + left + inside, row_values + left + inside, right);
  return sum;
}

/* The block's tile in the reference (either gate kind). */
static const float* reference_tile(const gate_pass* pass, uint32_t block) {
  return (const float*)pass->layer->tensor[SLOT_REFERENCE]->data +
         (size_t)block * pass->tile_h * pass->tile_w * pass->channels;
}

/* gumbel, step 1: the row sums only. The |residual| values are written later, for the rows
 * a scored position reads (gumbel_values_for_output_row): a block the bounds settle, as
 * in a still region, is then one read-only pass over its tile. */
static void gumbel_residual(const gate_pass* pass, const tile_placement* placement, uint32_t block) {
  const float* reference = reference_tile(pass, block);
  size_t y;
  for (y = 0; y < pass->tile_h; ++y) pass->row_sums[y] = gumbel_tile_row(pass, placement, reference, y, NULL);
  note_row_sums(pass);
}

/* gumbel, step 2 set-up: values of the tile rows output row i's windows read. */
static void gumbel_values_for_output_row(const gate_pass* pass, const tile_placement* placement, uint32_t block,
                                         size_t output_row) {
  const float* reference = reference_tile(pass, block);
  size_t ky;
  for (ky = 0; ky < pass->kernel_h; ++ky) {
    const size_t y = window_tile_row(pass, output_row, ky);
    if (pass->value_rows[y]) continue;
    (void)gumbel_tile_row(pass, placement, reference, y, pass->values + y * pass->tile_w * pass->channels);
    pass->value_rows[y] = 1;
  }
}

/* norm gates: the energies of padding pixels, whose input is 0 */
static float padding_energy_run(const gate_pass* pass, const float* reference, float* energy, size_t pixels) {
  if (pass->padding_zero) {
    memset(energy, 0, pixels * sizeof *energy);
    return 0.0f;
  }
  return pixel_energy_run(NULL, reference, energy, pixels, pass->channels);
}

/* norm gates, step 1: the pixel sums (energies) and the row sums of tile rows
 * [first_row, end_row). */
static void norm_residual_rows(const gate_pass* pass, const tile_placement* placement, uint32_t block,
                               size_t first_row, size_t end_row) {
  const size_t channels = pass->channels, tile_w = pass->tile_w;
  const float* reference = reference_tile(pass, block);
  const size_t left = placement->first_col, inside = placement->last_col - placement->first_col;
  const size_t right = tile_w - left - inside;
  size_t y;
  for (y = first_row; y < end_row; ++y) {
    const float* input = tile_input_row(placement, y);
    const float* ref = reference + y * tile_w * channels;
    float* row = pass->pixel_sums + y * tile_w;
    if (input == NULL) {
      pass->row_sums[y] = padding_energy_run(pass, ref, row, tile_w);
      continue;
    }
    pass->row_sums[y] = padding_energy_run(pass, ref, row, left) +
                        pixel_energy_run(input, ref + left * channels, row + left, inside, channels) +
                        padding_energy_run(pass, ref + (left + inside) * channels, row + left + inside, right);
  }
}

/* norm gates, step 2: the energy under position (i, j)'s window. */
static float window_energy(const gate_pass* pass, size_t output_row, size_t output_col) {
  float sum = 0.0f;
  size_t ky, kx;
  for (ky = 0; ky < pass->kernel_h; ++ky) {
    const float* row = pass->pixel_sums + window_tile_row(pass, output_row, ky) * pass->tile_w +
                       output_col * pass->stride_w;
    for (kx = 0; kx < pass->kernel_w; ++kx) sum += row[kx * pass->dilation_w];
  }
  return sum;
}

/* gumbel, step 2: the score of one position, the sum over the window and channels of
 * |residual| * gate_weight[ky][kx][c], plus the gate bias. */
static float gumbel_position_score(const gate_pass* pass, size_t output_row, size_t output_col) {
  const size_t channels = pass->channels, row_values = pass->tile_w * channels;
  const float* kernel = pass->layer->gate_weights;
  float lanes[LANES] = {0};
  size_t ky, kx;
  for (ky = 0; ky < pass->kernel_h; ++ky) {
    const float* window_row =
        pass->values + window_tile_row(pass, output_row, ky) * row_values + output_col * pass->stride_w * channels;
    const float* weights = kernel + ky * pass->kernel_w * channels;
    if (pass->dilation_w == 1) {
      /* the window's row and the kernel's row are both kernel_w * C contiguous floats */
      accumulate_products(lanes, window_row, weights, pass->kernel_w * channels);
      continue;
    }
    for (kx = 0; kx < pass->kernel_w; ++kx) {
      accumulate_products(lanes, window_row + kx * pass->dilation_w * channels, weights + kx * channels, channels);
    }
  }
  return sum_lanes(lanes) + pass->layer->gate_bias;
}

/* A block's gate score: the largest over its valid output positions (border blocks have
 * fewer than b x b), or another value with the same decision and tie status: a position
 * clearly above, or a bound clearly below. */

/* A block whose energy slot held the energies of the input at pass->since (and of its
 * reference, unchanged since: STORE_REFERENCE zeroes the slots it stores): only the pixels
 * of its tile in boxes changed since then are summed again, then every row sum in the
 * grouping of norm_residual_rows, so the scores equal a full pass bit for bit. Padding
 * pixels never change: the input there is zero, and the reference did not change. */
static void refresh_changed_energies(const gate_pass* pass, const tile_placement* placement, uint32_t block) {
  const runtime_layer* layer = pass->layer;
  const runtime_tensor* input = layer->tensor[SLOT_INPUT];
  const block_grid* grid = &layer->grid;
  const size_t channels = pass->channels, tile_w = pass->tile_w;
  const float* reference = reference_tile(pass, block);
  const size_t left = placement->first_col, inside = placement->last_col - placement->first_col;
  const size_t right = tile_w - left - inside;
  size_t y;
  if (placement->first_input != NULL) {
    const size_t block_row = block / (size_t)grid->blocks[1], block_col = block % (size_t)grid->blocks[1];
    /* the map pixel under tile (first_row, first_col): tile origin + the padding rows skipped */
    const size_t row0 = block_row * (size_t)grid->tile_step[0] + placement->first_row - (size_t)grid->padding[0];
    const size_t col0 = block_col * (size_t)grid->tile_step[1] + placement->first_col - (size_t)grid->padding[1];
    const size_t row1 = row0 + (placement->last_row - placement->first_row), col1 = col0 + inside;
    size_t r, c;
    for (r = row0 / CHANGE_CELL; r <= (row1 - 1) / CHANGE_CELL && r < input->cell_rows; ++r) {
      for (c = col0 / CHANGE_CELL; c <= (col1 - 1) / CHANGE_CELL && c < input->cell_cols; ++c) {
        cell_box box;
        size_t row_begin, row_end, col_begin, col_end, row;
        if (!cell_changed_since(input, r * input->cell_cols + c, pass->since, &box)) continue;
        row_begin = r * CHANGE_CELL + box.row_begin > row0 ? r * CHANGE_CELL + box.row_begin : row0;
        row_end = r * CHANGE_CELL + box.row_end < row1 ? r * CHANGE_CELL + box.row_end : row1;
        col_begin = c * CHANGE_CELL + box.col_begin > col0 ? c * CHANGE_CELL + box.col_begin : col0;
        col_end = c * CHANGE_CELL + box.col_end < col1 ? c * CHANGE_CELL + box.col_end : col1;
        for (row = row_begin; row < row_end && col_begin < col_end; ++row) {
          const size_t tile_y = placement->first_row + (row - row0), tile_x = left + (col_begin - col0);
          (void)pixel_energy_run(tile_input_row(placement, tile_y) + (col_begin - col0) * channels,
                                 reference + (tile_y * tile_w + tile_x) * channels,
                                 pass->pixel_sums + tile_y * tile_w + tile_x, col_end - col_begin, channels);
        }
      }
    }
  }
  for (y = 0; y < pass->tile_h; ++y) {
    const float* row = pass->pixel_sums + y * tile_w;
    pass->row_sums[y] = tile_input_row(placement, y) == NULL
                            ? energy_total(row, tile_w)
                            : energy_total(row, left) + energy_total(row + left, inside) +
                                  energy_total(row + left + inside, right);
  }
}

static double score_block(const gate_pass* pass, uint32_t block) {
  const block_grid* grid = &pass->layer->grid;
  const uint64_t block_row = block / grid->blocks[1], block_col = block % grid->blocks[1];
  const uint64_t rows_left = grid->output_size[0] - block_row * grid->block;
  const uint64_t cols_left = grid->output_size[1] - block_col * grid->block;
  const size_t valid_rows = (size_t)(rows_left < grid->block ? rows_left : grid->block);
  const size_t valid_cols = (size_t)(cols_left < grid->block ? cols_left : grid->block);
  const tile_placement placement = dynrt_tile_placement(pass->layer, block);
  double best = -HUGE_VAL;
  size_t i = 0, j;

  if (pass->gumbel) {
    memset(pass->value_rows, 0, pass->tile_h);
    /* A block computed last frame (the mask still holds that decision) most likely changes
     * again, where the first row usually has a position clearly above: scoring it first
     * skips the bounding pass over the whole tile. */
    if (pass->layer->block_mask[block] && pass->row_sum_not_finite == NULL) {
      gumbel_values_for_output_row(pass, &placement, block, 0);
      for (j = 0; j < valid_cols; ++j) {
        const float score = gumbel_position_score(pass, 0, j);
        if (clearly_above(pass, score)) return score;
        if (score > best) best = score;
      }
      i = 1; /* row 0 is scored exactly */
    }
    gumbel_residual(pass, &placement, block);
  } else if (pass->incremental && pass->energy_valid[block] && !pass->layer->block_mask[block]) {
    /* A block computed last frame takes the full pass below instead: it most likely changed
     * again, and its first output row usually settles it from kernel_h tile rows, where a
     * refresh sums every changed pixel (the whole tile when the camera moves) */
    refresh_changed_energies(pass, &placement, block);
  } else {
    size_t rows_done = 0;
    /* valid again once every row is summed: the first-row exit below leaves the rest stale */
    if (pass->energy_cache != NULL) pass->energy_valid[block] = 0;
    /* As for gumbel: a block computed last frame is scored on its first output row from the
     * tile rows that row's windows read (kernel_h of tile_h); when the camera moves, most
     * blocks end there. The frame check needs every row sum: not then. */
    if (pass->layer->block_mask[block] && pass->row_sum_not_finite == NULL) {
      rows_done = window_tile_row(pass, 0, pass->kernel_h - 1) + 1;
      norm_residual_rows(pass, &placement, block, 0, rows_done);
      for (j = 0; j < valid_cols; ++j) {
        const float score = sqrtf(window_energy(pass, 0, j)) * pass->layer->norm_scale;
        if (clearly_above(pass, score)) return score;
        if (score > best) best = score;
      }
      i = 1; /* row 0 is scored exactly */
    }
    norm_residual_rows(pass, &placement, block, rows_done, pass->tile_h);
    if (pass->energy_cache != NULL) pass->energy_valid[block] = 1;
    note_row_sums(pass);
  }
  for (; i < valid_rows; ++i) {
    if (pass->bounds_usable) {
      /* in a still region, every row of most blocks ends here */
      const double bound = output_row_bound(pass, i);
      if (clearly_below(pass, bound)) {
        if (bound > best) best = bound;
        continue;
      }
    }
    if (pass->gumbel) gumbel_values_for_output_row(pass, &placement, block, i);
    for (j = 0; j < valid_cols; ++j) {
      const float score = pass->gumbel ? gumbel_position_score(pass, i, j)
                                       : sqrtf(window_energy(pass, i, j)) * pass->layer->norm_scale;
      if (clearly_above(pass, score)) return score;
      if (score > best) best = score;
    }
  }
  return best;
}

/* The per-frame set-up of a layer's gate. */
static gate_pass prepare_gate_pass(dynrt_session_t session, const runtime_layer* layer) {
  const block_grid* grid = &layer->grid;
  gate_pass pass;
  pass.layer = layer;
  pass.gumbel = layer->gate == GATE_GUMBEL;
  pass.tile_h = (size_t)grid->tile_size[0];
  pass.tile_w = (size_t)grid->tile_size[1];
  pass.channels = layer->in_channels;
  pass.kernel_h = (size_t)grid->kernel[0];
  pass.kernel_w = (size_t)grid->kernel[1];
  pass.stride_h = (size_t)grid->stride[0];
  pass.stride_w = (size_t)grid->stride[1];
  pass.dilation_h = (size_t)grid->dilation[0];
  pass.dilation_w = (size_t)grid->dilation[1];
  pass.threshold = layer->threshold;
  pass.tie_margin = tie_margin(pass.threshold);
  pass.exact = decides_exactly(layer);
  /* A float sum of n terms is within about n * FLT_EPSILON / 2 of exact, relative to the
   * sum of their magnitudes, whatever the order. Bounds sum at most kernel_h * tile_w * C
   * non-negative terms and scores fewer; twice that covers both with room to spare. */
  pass.rounding_allowance = 2.0 * (double)(pass.kernel_h * pass.tile_w * pass.channels + 4) * FLT_EPSILON;
  pass.values = session->gate_scratch[0].values;
  pass.pixel_sums = session->gate_scratch[0].pixel_sums;
  pass.row_sums = session->gate_scratch[0].row_sums;
  pass.value_rows = session->gate_scratch[0].value_rows;
  pass.row_sum_not_finite = NULL;
  pass.energy_cache = NULL;
  pass.energy_valid = NULL;
  pass.incremental = 0;
  pass.since = 0;
  pass.padding_zero = reference_padding_is_zero(layer);
  pass.largest_weight = 0.0;
  if (pass.gumbel) {
    const size_t weights = pass.kernel_h * pass.kernel_w * pass.channels;
    size_t w;
    pass.bounds_usable = 1;
    for (w = 0; w < weights; ++w) {
      const float weight = layer->gate_weights[w];
      if (!isfinite(weight)) pass.bounds_usable = 0;
      if (weight > pass.largest_weight) pass.largest_weight = weight;
    }
  } else {
    pass.bounds_usable = isfinite(layer->norm_scale) && layer->norm_scale >= 0.0f;
  }
  return pass;
}

/* Whether every block is inactive, and no block a tie, without scoring any. That holds when
 * the layer's input is unchanged since the last decision and the reference took the tiles
 * of every block that decision computed: those blocks' residual is now zero, and the others
 * score what they scored then, clearly below (no ties then). So the zero-residual score
 * (the gate bias, or 0 for the norm gates) must be clearly below the threshold as well.
 * Layers reading the frame never qualify: frames carry no version. */
static int settled_without_scoring(dynrt_const_session_t session, const runtime_layer* layer) {
  const runtime_tensor* input = layer->tensor[SLOT_INPUT];
  if (input == session->input || layer->gate_input_version == 0 || input->version != layer->gate_input_version) {
    return 0;
  }
  if (layer->reference_store_due || layer->tensor[SLOT_REFERENCE]->version != layer->settled_reference_version) {
    return 0;
  }
  return layer->gate_ties == 0 && zero_residual_clearly_inactive(layer);
}

/* Whether the input's change map tells which blocks can have changed their decision since
 * the last one, under the conditions of settled_without_scoring but for a part of the input:
 * a block whose input tile did not change since then has the residual it had (inactive
 * then: the same score, clearly below) or a zero one (computed then: its reference took
 * that very tile), so it is inactive and no tie without being scored. */
static int changes_tracked(const runtime_layer* layer) {
  const runtime_tensor* input = layer->tensor[SLOT_INPUT];
  if (input->cell_versions == NULL || layer->gate_input_version == 0 ||
      input->whole_version > layer->gate_input_version) {
    return 0;
  }
  if (layer->reference_store_due || layer->tensor[SLOT_REFERENCE]->version != layer->settled_reference_version) {
    return 0;
  }
  return layer->gate_ties == 0 && zero_residual_clearly_inactive(layer);
}

/* Whether any input pixel of a block's tile (padding aside) changed since version `since`. */
static int block_input_changed(const runtime_layer* layer, uint32_t block, uint64_t since) {
  const block_grid* grid = &layer->grid;
  const size_t block_row = block / (size_t)grid->blocks[1], block_col = block % (size_t)grid->blocks[1];
  const ptrdiff_t origin_y = (ptrdiff_t)(block_row * (size_t)grid->tile_step[0]) - (ptrdiff_t)grid->padding[0];
  const ptrdiff_t origin_x = (ptrdiff_t)(block_col * (size_t)grid->tile_step[1]) - (ptrdiff_t)grid->padding[1];
  const ptrdiff_t end_y = origin_y + (ptrdiff_t)grid->tile_size[0], end_x = origin_x + (ptrdiff_t)grid->tile_size[1];
  const ptrdiff_t height = (ptrdiff_t)grid->input_size[0], width = (ptrdiff_t)grid->input_size[1];
  const size_t row_begin = origin_y < 0 ? 0 : (size_t)origin_y, col_begin = origin_x < 0 ? 0 : (size_t)origin_x;
  const size_t row_end = end_y > height ? (size_t)height : end_y < 0 ? 0 : (size_t)end_y;
  const size_t col_end = end_x > width ? (size_t)width : end_x < 0 ? 0 : (size_t)end_x;
  return region_changed_since(layer->tensor[SLOT_INPUT], since, row_begin, row_end, col_begin, col_end);
}

/* SKIP_GATE's scoring, cut into tasks (session_internal.h): task t scores its share of
 * `blocks` with scratch and counts of its own; nothing it writes is another task's. */
typedef struct gate_job {
  const gate_pass* pass;  /* task 0's; the others differ in scratch and the finite flag */
  dynrt_session_t session;
  const uint32_t* blocks;
  uint32_t count, tasks;
  uint8_t* decisions;
  uint32_t ties[DYNRT_MAX_TASKS];
  int row_sum_not_finite[DYNRT_MAX_TASKS];
} gate_job;

static void score_blocks_task(void* argument, uint32_t task) {
  gate_job* job = (gate_job*)argument;
  const runtime_layer* layer = job->pass->layer;
  const double threshold = layer->threshold;
  const uint32_t end = task_share_begin(job->count, task + 1, job->tasks);
  const gate_scratch* scratch = &job->session->gate_scratch[task];
  gate_pass pass = *job->pass;
  uint32_t i, ties = 0;
  pass.values = scratch->values;
  pass.pixel_sums = scratch->pixel_sums;
  pass.row_sums = scratch->row_sums;
  pass.value_rows = scratch->value_rows;
  if (pass.row_sum_not_finite != NULL) pass.row_sum_not_finite = &job->row_sum_not_finite[task];
  for (i = task_share_begin(job->count, task, job->tasks); i < end; ++i) {
    const uint32_t block = job->blocks[i];
    double score;
    if (pass.energy_cache != NULL) pass.pixel_sums = pass.energy_cache + (size_t)block * pass.tile_h * pass.tile_w;
    score = score_block(&pass, block);
    int active = score > threshold;
    if (in_tie_band(layer, score)) {
      ties += 1;
      if (layer->tie_reference_pending) active = layer->tie_reference[block];
    }
    job->decisions[block] = (uint8_t)active;
  }
  job->ties[task] = ties;
}

/* The layer's decisions for this frame are in block_mask: publish them, and note what the
 * next frame's scoring and reference store compare against. */
static void finish_gate(runtime_layer* layer) {
  mark_primed(layer);
  publish_active_blocks(layer);
  layer->gate_input_version = layer->tensor[SLOT_INPUT]->version;
  layer->gate_ties = layer->ties;
  layer->reference_store_due = layer->active_count > 0;
  layer->settled_reference_version = layer->tensor[SLOT_REFERENCE]->version;
}

dynrt_status dynrt_skip_gate(dynrt_session_t session, runtime_layer* layer) {
  float* primed = (float*)layer->tensor[SLOT_PRIMED]->data;
  const uint32_t blocks = (uint32_t)layer->grid.block_count;
  uint32_t block;
  if (primed[0] == 0.0f) {
    /* first frame after create or reset: every block is computed */
    memset(layer->block_mask, 1, blocks);
    layer->energy_input_version = 0;
  } else if (settled_without_scoring(session, layer)) {
    memset(layer->block_mask, 0, blocks);
  } else {
    gate_pass pass = prepare_gate_pass(session, layer);
    const int checks_frame = session->frame_check_deferred && layer == &session->layers[session->frame_checking_layer];
    /* while the frame is unchecked, decisions wait in scratch: a rejected frame changes nothing */
    uint8_t* decisions = checks_frame ? session->gate_decisions : layer->block_mask;
    int row_sum_not_finite = 0;
    if (checks_frame) pass.row_sum_not_finite = &row_sum_not_finite;
    const int tracked = changes_tracked(layer);
    const runtime_tensor* reference = layer->tensor[SLOT_REFERENCE];
    gate_job job;
    uint32_t t, to_score = 0;
    layer->gate_scored = 1;
    /* not while checking the frame: a rejected frame must leave no energies behind */
    if (layer->energy_cache != NULL && !checks_frame) {
      pass.energy_cache = layer->energy_cache;
      pass.energy_valid = layer->energy_valid;
      pass.since = layer->gate_input_version;
      pass.incremental = tracked && layer->energy_input_version == layer->gate_input_version &&
                         layer->energy_reference_version == reference->version;
      if (!pass.incremental) memset(layer->energy_valid, 0, blocks);
      layer->energy_input_version = layer->tensor[SLOT_INPUT]->version;
      layer->energy_reference_version = reference->version;
    } else {
      layer->energy_input_version = 0;
    }
    for (block = 0; block < blocks; ++block) {
      if (tracked && !block_input_changed(layer, block, layer->gate_input_version)) {
        decisions[block] = 0;
      } else {
        session->gate_blocks[to_score++] = block;
      }
    }
    job.pass = &pass;
    job.session = session;
    job.blocks = session->gate_blocks;
    job.count = to_score;
    job.decisions = decisions;
    /* a block's scoring reads its input tile and reference tile once, at most */
    job.tasks = dynrt_task_count(session, to_score,
                                 2 * (uint64_t)pass.tile_h * pass.tile_w * pass.channels * sizeof(float));
    memset(job.row_sum_not_finite, 0, sizeof job.row_sum_not_finite);
    dynrt_run_tasks(session, job.tasks, score_blocks_task, &job);
    for (t = 0; t < job.tasks; ++t) {
      layer->ties += job.ties[t];
      row_sum_not_finite |= job.row_sum_not_finite[t];
    }
    if (checks_frame) {
      uint32_t bits;
      const size_t count = session->input->bytes / sizeof(float);
      session->frame_check_deferred = 0;
      if (row_sum_not_finite && dynrt_first_nonfinite(session->pending_frame, count, &bits) < count) {
        return DYNRT_NONFINITE_INPUT;
      }
      memcpy(layer->block_mask, decisions, blocks);
    }
  }
  finish_gate(layer);
  return DYNRT_OK;
}

void dynrt_gate_every_block(runtime_layer* layer) {
  memset(layer->block_mask, 1, (size_t)layer->grid.block_count);
  layer->energy_input_version = 0;
  finish_gate(layer);
}

void dynrt_forget_layer(runtime_layer* layer) {
  runtime_tensor* primed = layer->tensor[SLOT_PRIMED];
  memset(layer->block_mask, 1, (size_t)layer->grid.block_count);
  publish_active_blocks(layer);
  layer->path = DYNRT_PATH_DENSE;
  ((float*)primed->data)[0] = 0.0f;
  tensor_written(primed);
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
  int any_compute = 0, decisions_changed = 0;

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
    decisions_changed |= decisions[channel] != (int32_t)choice;
    decisions[channel] = (int32_t)choice;
    any_compute |= choice == CHANNEL_COMPUTE;
  }
  mark_primed(layer);
  if (decisions_changed) tensor_written(layer->tensor[SLOT_DECISIONS]);
  /* no channel computes: no patch needs the convolution */
  if (!any_compute) memset(layer->block_mask, 0, patches);
  publish_active_blocks(layer);
}

/* ---- DSTEP_POLICY ------------------------------------------------------------------------
 *
 * The reference (dynexport/nn/dstep.py) in one pass over the input:
 *   spatial  features = adaptive average pools, over the patch grid, of the per-pixel channel
 *            mean and channel mean of squares; logits = 3x3 convolution (padding 1) of them
 *   channel  pooled = the input's mean per channel; logits = w2 relu(w1 [pooled, previous] +
 *            b1) + b2 (previous = pooled on the first frame after a reset)
 * Sums of pixels run in float per pixel (as torch's channel mean does), in double beyond.
 * Weights: layer->gate_weights, laid out as dynexport/plan/dstep_policy.py says. */

/* Adaptive average pooling of `size` positions into `regions`: region i spans
 * [floor(i * size / regions), ceil((i + 1) * size / regions)) (torch's). The regions that
 * contain position p are first..last. */
static void regions_containing(uint64_t p, uint64_t size, uint64_t regions, uint64_t* first, uint64_t* last) {
  const uint64_t upper = ((p + 1) * regions + size - 1) / size;
  *first = p * regions / size;
  *last = upper > regions ? regions - 1 : upper - 1;
}

static uint64_t region_extent(uint64_t i, uint64_t size, uint64_t regions) {
  return ((i + 1) * size + regions - 1) / regions - i * size / regions;
}

#define POLICY_CHANNEL_BLOCK 16u

/* Sums over pixels [begin, end) of a pixel row, channels [first, first + count) (count <=
 * POLICY_CHANNEL_BLOCK): of x into sum, of x * x into energy. The block's sums stay in
 * registers (count is a constant in the common case): no store per pixel. */
static void add_channel_block(const float* row, size_t channels, size_t first, size_t count, size_t begin, size_t end,
                              float* sum, float* energy) {
  size_t x, k;
  if (count == POLICY_CHANNEL_BLOCK) {
    /* local copies: sum and energy may alias the row as far as the compiler knows, which
     * would keep every partial sum in memory */
    float s[POLICY_CHANNEL_BLOCK], e[POLICY_CHANNEL_BLOCK];
    memcpy(s, sum, sizeof s);
    memcpy(e, energy, sizeof e);
    for (x = begin; x < end; ++x) {
      const float* p = row + x * channels + first;
      for (k = 0; k < POLICY_CHANNEL_BLOCK; ++k) {
        s[k] += p[k];
        e[k] += p[k] * p[k];
      }
    }
    memcpy(sum, s, sizeof s);
    memcpy(energy, e, sizeof e);
    return;
  }
  for (x = begin; x < end; ++x) {
    const float* p = row + x * channels + first;
    for (k = 0; k < count; ++k) {
      sum[k] += p[k];
      energy[k] += p[k] * p[k];
    }
  }
}

/* The policy pass over input rows cut into tasks: each row's sums go to its own slots
 * (policy_row_regions, policy_row_sums), which policy_sums then adds up row by row in the
 * order one thread would: the same sums, bit for bit, at any thread count. */
typedef struct policy_job {
  runtime_layer* layer;
  uint32_t tasks;
} policy_job;

static void policy_rows_task(void* argument, uint32_t task) {
  const policy_job* job = (const policy_job*)argument;
  runtime_layer* layer = job->layer;
  const runtime_tensor* input = layer->tensor[SLOT_INPUT];
  const size_t height = input->dims[1], width = input->dims[2], channels = input->dims[3];
  const uint64_t cols = layer->grid.blocks[1];
  const int spatial = layer->tensor[SLOT_SPATIAL_LOGITS] != NULL;
  const uint64_t column_regions = spatial ? cols : 1; /* without a spatial policy: the row, one region */
  const size_t end = task_share_begin((uint32_t)height, task + 1, job->tasks);
  size_t y, c;
  for (y = task_share_begin((uint32_t)height, task, job->tasks); y < end; ++y) {
    const float* pixels = layer->input_pixels + y * width * channels;
    double* row_regions = layer->policy_row_regions + y * 2 * column_regions; /* (mean, energy) per region */
    float* row_sum = layer->policy_row_sums + y * channels;
    uint64_t q;
    memset(row_sum, 0, channels * sizeof(float));
    /* per column region, channel block by channel block: the channel mean's and energy's
     * sums over the region (one pass, sums in registers), and each pixel's values once into
     * row_sum (the pooled input) up to the next region's first column, where the overlap
     * of adaptive regions begins */
    for (q = 0; q < column_regions; ++q) {
      const size_t begin = spatial ? q * width / cols : 0;
      const size_t region_end = spatial ? ((q + 1) * width + cols - 1) / cols : width;
      const size_t own = spatial && q + 1 < cols ? (q + 1) * width / cols : region_end;
      double mean = 0.0, energy = 0.0;
      for (c = 0; c < channels; c += POLICY_CHANNEL_BLOCK) {
        const size_t count = channels - c < POLICY_CHANNEL_BLOCK ? channels - c : POLICY_CHANNEL_BLOCK;
        float sum[POLICY_CHANNEL_BLOCK] = {0}, squares[POLICY_CHANNEL_BLOCK] = {0};
        size_t k;
        add_channel_block(pixels, channels, c, count, begin, own, sum, squares);
        for (k = 0; k < count; ++k) row_sum[c + k] += sum[k];
        add_channel_block(pixels, channels, c, count, own, region_end, sum, squares);
        for (k = 0; k < count; ++k) {
          mean += sum[k];
          energy += squares[k];
        }
      }
      row_regions[2 * q] = mean;
      row_regions[2 * q + 1] = energy;
    }
  }
}

static void policy_sums(runtime_layer* layer) {
  const runtime_tensor* input = layer->tensor[SLOT_INPUT];
  const size_t height = input->dims[1], width = input->dims[2], channels = input->dims[3];
  const uint64_t rows = layer->grid.blocks[0], cols = layer->grid.blocks[1];
  const int spatial = layer->tensor[SLOT_SPATIAL_LOGITS] != NULL;
  const uint64_t column_regions = spatial ? cols : 1;
  double* region = layer->policy_sums;              /* [rows * cols * 2]: (mean, energy) */
  double* channel_sum = region + 2 * rows * cols;   /* [channels] */
  policy_job job;
  size_t y, c;
  job.layer = layer;
  job.tasks = dynrt_task_count(layer->session, (uint32_t)height, (uint64_t)width * channels * sizeof(float));
  dynrt_run_tasks(layer->session, job.tasks, policy_rows_task, &job);
  memset(region, 0, 2 * rows * cols * sizeof(double));
  memset(channel_sum, 0, channels * sizeof(double));
  for (y = 0; y < height; ++y) {
    const double* row_regions = layer->policy_row_regions + y * 2 * column_regions;
    const float* row_sum = layer->policy_row_sums + y * channels;
    uint64_t r_first, r_last, r, q;
    regions_containing(y, height, rows, &r_first, &r_last);
    for (q = 0; spatial && q < column_regions; ++q) {
      for (r = r_first; r <= r_last; ++r) {
        region[2 * (r * cols + q)] += row_regions[2 * q] / (double)channels;
        region[2 * (r * cols + q) + 1] += row_regions[2 * q + 1] / (double)channels;
      }
    }
    for (c = 0; c < channels; ++c) channel_sum[c] += row_sum[c];
  }
}

static void spatial_policy(runtime_layer* layer) {
  const runtime_tensor* input = layer->tensor[SLOT_INPUT];
  const uint64_t rows = layer->grid.blocks[0], cols = layer->grid.blocks[1];
  const float* weight = layer->gate_weights; /* [2 out, 2 in, 3, 3], then bias [2] */
  double* region = layer->policy_sums;
  float* logits = (float*)layer->tensor[SLOT_SPATIAL_LOGITS]->data; /* [rows, cols, 2] */
  uint64_t r, q;
  int o, k, dy, dx;
  for (r = 0; r < rows; ++r) { /* the sums -> the pooled features, in place */
    for (q = 0; q < cols; ++q) {
      const double pixels = (double)(region_extent(r, input->dims[1], rows) * region_extent(q, input->dims[2], cols));
      region[2 * (r * cols + q)] /= pixels;
      region[2 * (r * cols + q) + 1] /= pixels;
    }
  }
  for (r = 0; r < rows; ++r) {
    for (q = 0; q < cols; ++q) {
      for (o = 0; o < 2; ++o) {
        double sum = weight[36 + o];
        for (k = 0; k < 2; ++k) {
          for (dy = 0; dy < 3; ++dy) {
            const int64_t rr = (int64_t)r + dy - 1;
            if (rr < 0 || rr >= (int64_t)rows) continue;
            for (dx = 0; dx < 3; ++dx) {
              const int64_t qq = (int64_t)q + dx - 1;
              if (qq < 0 || qq >= (int64_t)cols) continue;
              sum += (double)weight[((o * 2 + k) * 3 + dy) * 3 + dx] * region[2 * (rr * (int64_t)cols + qq) + k];
            }
          }
        }
        logits[2 * (r * cols + q) + o] = (float)sum;
      }
    }
  }
  tensor_written(layer->tensor[SLOT_SPATIAL_LOGITS]);
}

static void channel_policy(runtime_layer* layer, const float* pooled, const float* previous) {
  const uint32_t in = layer->in_channels, out = 3 * layer->out_channels, hidden = layer->policy_hidden;
  const float* w1 = layer->gate_weights + (layer->tensor[SLOT_SPATIAL_LOGITS] != NULL ? 38 : 0);
  const float* b1 = w1 + (size_t)hidden * 2 * in;
  const float* w2 = b1 + hidden;
  const float* b2 = w2 + (size_t)out * hidden;
  float* activation = layer->policy_values; /* [hidden] */
  float* logits = (float*)layer->tensor[SLOT_CHANNEL_LOGITS]->data; /* [Co, 3] = [3 Co] */
  uint32_t j, i;
  for (j = 0; j < hidden; ++j) {
    const float* row = w1 + (size_t)j * 2 * in;
    float sum = b1[j];
    for (i = 0; i < in; ++i) sum += row[i] * pooled[i] + row[in + i] * previous[i];
    activation[j] = sum > 0.0f ? sum : 0.0f;
  }
  for (j = 0; j < out; ++j) {
    const float* row = w2 + (size_t)j * hidden;
    float sum = b2[j];
    for (i = 0; i < hidden; ++i) sum += row[i] * activation[i];
    logits[j] = sum;
  }
  tensor_written(layer->tensor[SLOT_CHANNEL_LOGITS]);
}

void dynrt_dstep_policy(runtime_layer* layer, runtime_tensor* pooled_tensor, const runtime_tensor* previous_pooled) {
  runtime_tensor* const outputs[3] = {pooled_tensor, layer->tensor[SLOT_SPATIAL_LOGITS],
                                      layer->tensor[SLOT_CHANNEL_LOGITS]};
  const runtime_tensor* input = layer->tensor[SLOT_INPUT];
  const uint64_t read[3] = {input->version, previous_pooled->version, layer->tensor[SLOT_PRIMED]->version};
  const float primed = ((const float*)layer->tensor[SLOT_PRIMED]->data)[0];
  float* pooled = (float*)pooled_tensor->data;
  const double pixels = (double)input->dims[1] * input->dims[2];
  const double* channel_sum = layer->policy_sums + 2 * layer->grid.blocks[0] * layer->grid.blocks[1];
  /* the caller's frame, not copied in yet, has no version of its own */
  int k, current = layer->policy_valid && layer->input_pixels == (const float*)input->data;
  uint32_t c;
  /* a still input (same versions in, outputs untouched since): the same logits again */
  for (k = 0; k < 3 && current; ++k) current = layer->policy_versions[k] == read[k];
  for (k = 0; k < 3 && current; ++k) current = outputs[k] == NULL || layer->policy_versions[3 + k] == outputs[k]->version;
  if (current) return;
  policy_sums(layer);
  for (c = 0; c < layer->in_channels; ++c) pooled[c] = (float)(channel_sum[c] / pixels);
  tensor_written(pooled_tensor);
  if (outputs[1] != NULL) spatial_policy(layer);
  if (outputs[2] != NULL) {
    channel_policy(layer, pooled, primed != 0.0f ? (const float*)previous_pooled->data : pooled);
  }
  for (k = 0; k < 3; ++k) layer->policy_versions[k] = read[k];
  for (k = 0; k < 3; ++k) layer->policy_versions[3 + k] = outputs[k] != NULL ? outputs[k]->version : 0;
  layer->policy_valid = 1;
}
