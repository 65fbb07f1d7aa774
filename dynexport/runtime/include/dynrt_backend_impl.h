/*
 * The backend vtable: what a backend adapter (targets/<backend>/native/) implements.
 * Applications never include this; they get a dynrt_backend_t from an adapter's constructor
 * (e.g. dynrt_executorch_backend_create) and pass it to dynrt_session_create.
 *
 * A segment is one entry point of the backend artifact (an ExecuTorch method, ...), named
 * in the plan. Its operands are runtime-owned buffers, float32, with the plan's physical
 * dims (NHWC for 4-D): the backend reads inputs and writes outputs in place during
 * run_segment and keeps no pointer to them afterwards, except that the runtime guarantees
 * the *same* buffer addresses on every call of a segment (so an adapter may bind them once).
 */
#ifndef DYNRT_BACKEND_IMPL_H
#define DYNRT_BACKEND_IMPL_H

#include "dynrt.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DYNRT_BACKEND_API_VERSION 1u

typedef struct dynrt_operand_info {
  uint32_t rank;
  uint32_t dims[4];  /* physical; for a tile segment dims[0] is the maximum batch */
  uint32_t dtype;    /* 0 float32, 1 int32 */
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

struct dynrt_backend {
  uint32_t api_version;  /* DYNRT_BACKEND_API_VERSION */
  const char* name;      /* "executorch", "callback", ...: matched against the plan's artifact table */
  void* context;         /* the adapter's own state */

  /* (optional, NULL: no artifact check) The artifact's bytes, CRC32-checked by the session
   * against the plan's record for this backend name (DYNRT_ARTIFACT_MISMATCH). */
  const void* artifact;
  size_t artifact_bytes;

  /* Called once per segment, in plan order, from dynrt_session_create: look the segment up
   * and check its signature (DYNRT_SEGMENT_MISMATCH with a message otherwise). May allocate.
   * message: caller buffer for a reason on failure. */
  dynrt_status (*prepare_segment)(void* context, uint32_t segment, const dynrt_segment_info* info,
                                  char* message, size_t message_capacity);

  /* Run one segment. batch: the leading dim of input 0 and output 0 of a tile segment
   * (1..max_batch), 1 otherwise. Must not allocate (after a first call per segment). */
  dynrt_status (*run_segment)(void* context, uint32_t segment, uint32_t batch,
                              void* const* inputs, void* const* outputs);

  /* (optional) Called by dynrt_session_destroy: forget the segments prepared for it. */
  void (*release_segments)(void* context);

  /* Frees the adapter's context and the struct itself (dynrt_backend_destroy). */
  void (*destroy)(struct dynrt_backend* backend);
};

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_BACKEND_IMPL_H */
