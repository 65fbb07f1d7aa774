/*
 * The backend vtable: what a backend adapter (targets/<backend>/native/) implements.
 * Applications never include this; they get a dynrt_backend_t from an adapter's constructor
 * (e.g. dynrt_executorch_backend_create_v2) and pass it to dynrt_session_create.
 *
 * A segment is one entry point of the backend artifact (an ExecuTorch method, ...), named
 * in the plan. Its operands are runtime-owned buffers with the plan's physical dims, in the
 * layout each operand's info states: the backend reads inputs and writes outputs in place
 * during run_segment and keeps no pointer to them afterwards, except that the runtime
 * guarantees the *same* buffer addresses on every call of a segment of one session (so an
 * adapter may bind them once per session).
 *
 * Sessions (API version 2). One backend object serves any number of sessions, created and
 * destroyed in any order. Everything an adapter prepares for a plan lives in a per-session
 * state, the way ExecuTorch's backend init returns a DelegateHandle:
 *
 *   dynrt_session_create   prepare_session(context, plan, &state)     once, before any segment
 *                          prepare_segment(context, state, i, info)   once per segment, plan order
 *   dynrt_session_step     run_segment(context, state, i, batch, ...)
 *   dynrt_session_destroy  release_session(context, state)            also after a failed create
 *
 * The backend object itself (context) is not changed by sessions; it outlives all of them.
 * Calls with one state never overlap (a session is used by one thread at a time); calls
 * with different states may come from different threads at once (sessions are independent),
 * so whatever an adapter shares between sessions must be read-only or locked.
 */
#ifndef DYNRT_BACKEND_IMPL_H
#define DYNRT_BACKEND_IMPL_H

#include "dynrt.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DYNRT_BACKEND_API_VERSION 2u

/* How an operand's elements lie in its buffer (the plan's tensor layout, validated). */
typedef enum dynrt_operand_layout {
  DYNRT_LAYOUT_NHWC = 0,      /* rank 4, dims [N, H, W, C]: a model's NCHW tensor in channels_last order */
  DYNRT_LAYOUT_ROW_MAJOR = 1, /* any rank: dims in memory order, the last one contiguous */
} dynrt_operand_layout;

typedef struct dynrt_operand_info {
  uint32_t rank;
  uint32_t dims[4];  /* physical (memory order); for a tile segment dims[0] is the maximum batch */
  uint32_t dtype;    /* 0 float32, 1 int32 */
  uint32_t layout;   /* dynrt_operand_layout */
} dynrt_operand_info;

typedef struct dynrt_segment_info {
  const char* name;                /* valid during prepare_segment only */
  uint32_t max_batch;              /* > 0: tile segment, batch varies 1..max_batch per call */
  uint32_t input_count, output_count;
  const dynrt_operand_info* inputs;
  const dynrt_operand_info* outputs;
  void* const* input_buffers;      /* the buffers run_segment will get, for adapters that bind once */
  void* const* output_buffers;
} dynrt_segment_info;

/* What prepare_session learns of the plan before its segments. */
typedef struct dynrt_plan_info {
  uint32_t segment_count;  /* prepare_segment follows for 0 .. segment_count - 1 */
} dynrt_plan_info;

/* The defaults of the buffer needs below. */
#define DYNRT_DEFAULT_BUFFER_ALIGNMENT 64u
#define DYNRT_MAX_BUFFER_ALIGNMENT 4096u
#define DYNRT_MAX_BUFFER_TAIL_BYTES 4096u

/* One task of the runtime's own work, run by parallel_for (below): task index < tasks. */
typedef void (*dynrt_task_fn)(void* argument, uint32_t task);

struct dynrt_backend {
  uint32_t api_version;  /* DYNRT_BACKEND_API_VERSION */
  const char* name;      /* "executorch", "callback", ...: matched against the plan's artifact table */
  void* context;         /* the adapter's own state, shared by its sessions */

  /* (optional, NULL: no artifact check) The artifact's bytes, CRC32-checked by the session
   * against the plan's record for this backend name (DYNRT_ARTIFACT_MISMATCH). */
  const void* artifact;
  size_t artifact_bytes;

  /* (optional, 0: the default) What the backend needs of every operand buffer:
   *   buffer_alignment   a power of two, at most DYNRT_MAX_BUFFER_ALIGNMENT; 0 or less than
   *                      DYNRT_DEFAULT_BUFFER_ALIGNMENT (64) means 64;
   *   buffer_tail_bytes  bytes after each buffer's end that the backend may read (kernels
   *                      that load whole vectors past the last element), at most
   *                      DYNRT_MAX_BUFFER_TAIL_BYTES; 0 means none. They belong to no other
   *                      buffer and hold zeros; the backend must not write them.
   * Anything else is refused by dynrt_session_create (DYNRT_INVALID_ARGUMENT). */
  size_t buffer_alignment;
  size_t buffer_tail_bytes;

  /* (optional, NULL: the session state is NULL) Called once per session before its
   * segments: make the state prepare_segment, run_segment and release_session get. May
   * allocate. message: caller buffer for a reason on failure. */
  dynrt_status (*prepare_session)(void* context, const dynrt_plan_info* plan, void** session_state_out,
                                  char* message, size_t message_capacity);

  /* Called once per segment, in plan order, from dynrt_session_create: look the segment up
   * and check its signature (DYNRT_SEGMENT_MISMATCH with a message otherwise), keeping what
   * it prepares in session_state. May allocate. */
  dynrt_status (*prepare_segment)(void* context, void* session_state, uint32_t segment,
                                  const dynrt_segment_info* info, char* message, size_t message_capacity);

  /* Run one segment of the session. batch: the leading dim of input 0 and output 0 of a
   * tile segment (1..max_batch), 1 otherwise. Must not allocate (after a first call per
   * segment and batch). */
  dynrt_status (*run_segment)(void* context, void* session_state, uint32_t segment, uint32_t batch,
                              void* const* inputs, void* const* outputs);

  /* (optional) Called by dynrt_session_destroy, and by a failed dynrt_session_create once
   * prepare_session succeeded (after any number of prepared segments): free the state. */
  void (*release_session)(void* context, void* session_state);

  /* Frees the adapter's context and the struct itself (dynrt_backend_destroy). */
  void (*destroy)(struct dynrt_backend* backend);

  /* (optional, NULL or parallel_threads < 2: the runtime's own work stays on the calling
   * thread) The threads the backend's segments run on, lent to the runtime for its own work
   * between segments (gate scoring, tile copies): run task(argument, t) once for every
   * t < tasks, on those threads and the calling one, and return when all have returned.
   * Tasks never call the backend and may run in any order or at once; tasks <=
   * parallel_threads. Called from dynrt_session_step only, on the session's thread, like
   * run_segment; sessions of one backend may call it at the same time. Must not fail (run
   * the tasks on the calling thread if the threads are gone). */
  void (*parallel_for)(void* context, dynrt_task_fn task, void* argument, uint32_t tasks);
  uint32_t parallel_threads;
};

/* For adapters' messages: dims as "[1, 16, 16, 8]" (the leading one as "N" with any_batch),
 * written into text (truncated to capacity); returns text. The runtime's own messages use
 * the same. DYNRT_DIMS_TEXT_CAPACITY holds any rank-4 result. */
#define DYNRT_DIMS_TEXT_CAPACITY 96
const char* dynrt_format_dims(char* text, size_t capacity, uint32_t rank, const uint64_t* dims, int any_batch);

/* --- for adapters (src/backend_support.c) ---------------------------------------------------- */

/* printf into an adapter's message buffer; nothing when message is NULL or capacity 0. */
void dynrt_backend_message(char* message, size_t capacity, const char* format, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* A plan operand's dims as dynrt_format_dims writes them (rank <= 4). */
const char* dynrt_format_operand_dims(char* text, size_t capacity, const dynrt_operand_info* operand, int any_batch);

/* "float32", "int32" or "?" for a plan operand's dtype. */
const char* dynrt_dtype_name(uint32_t dtype);

/* dlopen (RTLD_NOW | RTLD_LOCAL) the first of `count` candidate paths that loads; NULL or empty
 * candidates are skipped (an unset environment variable). On success the path chosen is
 * copied into chosen (truncated to chosen_capacity) and the handle returned; otherwise NULL,
 * with "cannot load <runtime> (<each dlerror>): <hint>" in message. For adapters of runtimes
 * loaded at run time (ONNX Runtime, LiteRT): the app ships the library, dynrt links none. */
void* dynrt_open_runtime_library(const char* runtime, const char* const* candidates, size_t count, const char* hint,
                                 char* chosen, size_t chosen_capacity, char* message, size_t capacity);

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_BACKEND_IMPL_H */
