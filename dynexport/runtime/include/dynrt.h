/*
 * dynrt — the dynexport frame-program runtime.
 *
 * A session runs one compiled dynamic video model frame by frame. It owns the state that
 * lives between frames (each gated layer's output and reference tiles), evaluates the gates,
 * gathers the active blocks' input tiles into packed batches, calls a backend (ExecuTorch,
 * ...) for each segment of the plan and scatters the results back into state. All of it is
 * plain NHWC memory copies; the backend only ever sees dense tensors.
 *
 *     dynrt_backend_options options = DYNRT_BACKEND_OPTIONS_INIT;
 *     options.threads = 1;
 *     dynrt_backend_t backend;                 // e.g. from dynrt_executorch.h
 *     char why[256];
 *     if (dynrt_executorch_backend_create_v2(pte, pte_bytes, &options, why, sizeof why, &backend) != DYNRT_OK) {
 *       fprintf(stderr, "backend: %s\n", why);
 *     }
 *     dynrt_session_t session;
 *     if (dynrt_session_create(plan, plan_bytes, backend, why, sizeof why, &session) != DYNRT_OK) {
 *       fprintf(stderr, "plan rejected: %s\n", why);
 *     }
 *     dynrt_session_info info;
 *     dynrt_session_describe(session, &info);       // input/output dims and byte sizes
 *     for (each camera frame) {                      // float32 NHWC, info.input_bytes
 *       dynrt_status s = dynrt_session_step(session, frame, info.input_bytes,
 *                                           result, info.output_bytes, NULL);
 *       if (s != DYNRT_OK) fprintf(stderr, "%s\n", dynrt_session_last_error(session));
 *     }
 *     dynrt_session_reset(session);                  // scene cut: next frame computed densely
 *     dynrt_session_destroy(session);                // before the backend it uses
 *     dynrt_backend_destroy(backend);
 *
 * Ownership and lifetimes (the rules for every function below):
 *  - Every *_create allocates; the caller owns the result and frees it with the matching
 *    *_destroy. Destroying NULL is a no-op.
 *  - dynrt_session_create copies what it needs from the plan bytes: they may be freed as
 *    soon as it returns. It keeps the backend pointer: the backend must outlive the session.
 *  - All memory a session uses is allocated in dynrt_session_create. step, reset and the
 *    query functions never allocate and only read/write the caller's buffers during the call.
 *  - Strings returned by the runtime are owned by it (static, or by the session until the
 *    next call on it).
 *  - A session is not thread-safe: one thread at a time per session. Sessions are independent,
 *    also when they share one backend: any number of sessions may use one backend object,
 *    created and destroyed in any order (each keeps its own prepared segments in it).
 *
 * Layout: every 4-D tensor the runtime exchanges is float32 NHWC, batch 1 (the plan's
 * physical layout; the manifest says the same). Lower-rank outputs are row-major.
 */
#ifndef DYNRT_H
#define DYNRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DYNRT_NODISCARD __attribute__((warn_unused_result))
#else
#define DYNRT_NODISCARD
#endif

/* Status codes, in ranges: 0 ok; 1xx arguments; 2xx plan; 3xx input frames; 4xx backend;
 * 5xx resources. The table, with what each means, is dynrt_status.def (next to this header;
 * the bindings are tested against it): DYNRT_OK = 0, DYNRT_INVALID_ARGUMENT = 100,
 * DYNRT_WRONG_BUFFER_SIZE = 101, DYNRT_PLAN_TRUNCATED = 200, ... DYNRT_OUT_OF_MEMORY = 500. */
typedef enum dynrt_status {
#define DYNRT_STATUS(name, code, description) DYNRT_##name = code,
#include "dynrt_status.def"
#undef DYNRT_STATUS
} dynrt_status;

/* A static, one-line description of a status ("plan checksum mismatch"). Never NULL. */
const char* dynrt_status_string(dynrt_status status);

typedef struct dynrt_backend* dynrt_backend_t;          /* see dynrt_backend_impl.h */
typedef struct dynrt_session* dynrt_session_t;
typedef const struct dynrt_session* dynrt_const_session_t;

typedef struct dynrt_session_info {
  uint32_t input_rank, input_dims[4];    /* physical dims: [1, H, W, C] for a 4-D input */
  size_t input_bytes;
  uint32_t output_rank, output_dims[4];
  size_t output_bytes;
  uint32_t layer_count;                  /* gated layers, in plan order */
  uint32_t segment_count;
  size_t state_bytes;                    /* bytes kept from frame to frame */
  size_t arena_bytes;                    /* everything the session allocated */
} dynrt_session_info;

/* Which path a gated layer took this frame. */
typedef enum dynrt_layer_path {
  DYNRT_PATH_REUSE = 0,  /* no active block: the previous output stands */
  DYNRT_PATH_TILES = 1,  /* active blocks gathered, computed as a packed batch, scattered */
  DYNRT_PATH_DENSE = 2,  /* more than the dense cut-off: the dense segment ran */
} dynrt_layer_path;

typedef struct dynrt_layer_stats {
  uint32_t active_blocks;  /* blocks (skip conv) or patches (D-STEP) computed */
  uint32_t total_blocks;
  uint32_t path;           /* dynrt_layer_path */
  uint32_t ties;           /* blocks whose gate score sat within the tie epsilon of the threshold */
  uint64_t executed_macs;  /* the layer's convolution as run (tiles count whole b x b blocks) + its gate */
  uint64_t dense_macs;     /* the layer's convolution over the whole map */
} dynrt_layer_stats;

/* Per-frame statistics. The caller owns the arrays and sets the capacities; the runtime
 * fills min(capacity, count) entries. Any array may be NULL (capacity 0). */
typedef struct dynrt_frame_stats {
  dynrt_layer_stats* layers;  uint32_t layer_capacity;
  uint64_t* segment_ns;       uint32_t segment_capacity;  /* wall time per segment; 0 if not run */
  uint64_t frame_ns;          /* the whole step */
  uint64_t segments_ns;       /* inside backend calls */
  uint32_t segments_reused;   /* fixed segments not run: no input changed since their last run */
} dynrt_frame_stats;

/* The gate tie band: a block whose score is within
 *   DYNRT_TIE_EPSILON * max(1, |threshold|)
 * of its threshold (or a D-STEP patch whose two logits are that close) is a tie: two correct
 * implementations may decide it differently. Ties are counted in the stats; in verification
 * runs the reference's decision can be imposed on them (dynrt_session_set_tie_decisions).
 * A norm gate (input_norm, output_norm) at threshold 0 has no band: a zero residual scores
 * exactly 0 and any other above 0, so it computes exactly the blocks whose input changed. */
#define DYNRT_TIE_EPSILON 1e-4f

/* Parses and validates the plan (version, checksum, every index and size), asks the backend
 * to prepare every segment (which checks the artifact matches), and allocates all buffers.
 * error_message (optional, caller-owned, may be NULL with capacity 0) receives a
 * NUL-terminated reason on failure. On failure *session_out is NULL. */
DYNRT_NODISCARD dynrt_status dynrt_session_create(const void* plan, size_t plan_bytes, dynrt_backend_t backend,
                                                 char* error_message, size_t error_capacity,
                                                 dynrt_session_t* session_out);

void dynrt_session_destroy(dynrt_session_t session);

DYNRT_NODISCARD dynrt_status dynrt_session_describe(dynrt_const_session_t session, dynrt_session_info* info_out);

/* Scene cut / keyframe: the next frame is computed densely, as after create. */
DYNRT_NODISCARD dynrt_status dynrt_session_reset(dynrt_session_t session);

/* One frame: input (float32 NHWC, exactly info.input_bytes) -> output (info.output_bytes).
 * stats may be NULL. A frame with NaN/Inf is rejected before any state changes
 * (DYNRT_NONFINITE_INPUT); a wrong size, likewise (DYNRT_WRONG_BUFFER_SIZE).
 * Work a frame does not need is not done: gates read the input in place (it is copied only
 * when a segment reads it whole), and a segment none of whose inputs changed since its last
 * run is not run again (its outputs still hold those results; stats->segments_reused), nor
 * is a gate scored whose input did not change since its last decision (no block computes). */
DYNRT_NODISCARD dynrt_status dynrt_session_step(dynrt_session_t session, const float* input, size_t input_bytes,
                                               float* output, size_t output_bytes, dynrt_frame_stats* stats);

/* What went wrong in the last failed call on this session, or "" (owned by the session). */
const char* dynrt_session_last_error(dynrt_const_session_t session);

/* Decisions of the last frame for one gated layer, into caller arrays:
 * block_mask[blocks] = 1 where the block (patch) was computed this frame;
 * channel_decisions[out_channels] (D-STEP with a channel policy; else all 2) = 0 skip,
 * 1 reuse, 2 compute. Either array may be NULL. Capacities must be at least the layer's
 * block / channel count (DYNRT_WRONG_BUFFER_SIZE otherwise). */
DYNRT_NODISCARD dynrt_status dynrt_session_layer_decisions(dynrt_const_session_t session, uint32_t layer,
                                                          uint8_t* block_mask, size_t block_capacity,
                                                          uint8_t* channel_decisions, size_t channel_capacity);

/* One gated layer's shape, to size the arrays of dynrt_session_layer_decisions and
 * dynrt_session_set_tie_decisions. */
typedef struct dynrt_layer_info {
  uint32_t blocks;                   /* block_rows * block_cols: skip-conv blocks or D-STEP patches */
  uint32_t block_rows, block_cols;   /* the block grid over the layer's output, row-major */
  uint32_t out_channels;             /* entries of channel_decisions */
  const char* name;                  /* the layer's name in the plan (owned by the session) */
} dynrt_layer_info;

/* Describes gated layer `layer` (0 .. info.layer_count - 1, plan order). */
DYNRT_NODISCARD dynrt_status dynrt_session_describe_layer(dynrt_const_session_t session, uint32_t layer,
                                                         dynrt_layer_info* info_out);

/* Verification runs only: for the next step, blocks of this layer that fall in the tie band
 * take the decision in reference_mask[blocks] (1 = compute) instead of the runtime's own.
 * The mask is copied; it applies to one step and is then forgotten. */
DYNRT_NODISCARD dynrt_status dynrt_session_set_tie_decisions(dynrt_session_t session, uint32_t layer,
                                                            const uint8_t* reference_mask, size_t blocks);

/* Tuning runs only (dynexport tune, through the native driver): runs segment `segment`
 * (0 .. info.segment_count - 1, plan order) once on the session's buffers as they are, at
 * `batch` (1 .. the segment's max batch for a tile segment, 1 otherwise), and gives the wall
 * time of the backend call in *elapsed_ns. Then the session is reset (the next step is
 * computed densely): the segment overwrote its outputs. Never allocates.
 * DYNRT_INVALID_ARGUMENT for a segment or batch out of range (the message says which);
 * DYNRT_BACKEND_ERROR when the backend fails. */
DYNRT_NODISCARD dynrt_status dynrt_session_time_segment(dynrt_session_t session, uint32_t segment, uint32_t batch,
                                                       uint64_t* elapsed_ns);

/* Options of every backend constructor (dynrt_<backend>_backend_create_v2). The first field
 * is the struct's size, so that fields can be added: a constructor reads the fields that
 * struct_size covers and takes the defaults for the rest. Start from
 * DYNRT_BACKEND_OPTIONS_INIT (every field its default); NULL options mean all defaults. */
typedef struct dynrt_backend_options {
  size_t struct_size; /* sizeof(dynrt_backend_options) as the caller was compiled */
  uint32_t threads;   /* 0: the backend's default; 1: run on the calling thread; N: N threads */
} dynrt_backend_options;

#define DYNRT_BACKEND_OPTIONS_INIT {sizeof(dynrt_backend_options), 0u}

/* The shape of every backend constructor: the artifact's bytes (the backend may keep a
 * pointer to them: see its header), options (may be NULL), a caller buffer for the reason
 * of a failure (may be NULL with capacity 0). On failure *backend_out is NULL. */
typedef dynrt_status (*dynrt_backend_create_fn)(const void* artifact, size_t artifact_bytes,
                                                const dynrt_backend_options* options, char* error_message,
                                                size_t error_capacity, dynrt_backend_t* backend_out);

void dynrt_backend_destroy(dynrt_backend_t backend);

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_H */
