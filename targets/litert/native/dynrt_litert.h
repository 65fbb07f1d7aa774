/*
 * dynrt LiteRT backend: runs a plan's segments as the signatures of one model.tflite (one
 * signature per segment, NHWC I/O; targets/litert/README.md) through LiteRT's C API
 * (CompiledModel, CPU accelerator: XNNPACK).
 *
 *     dynrt_backend_options options = DYNRT_BACKEND_OPTIONS_INIT;   // threads 0: LiteRT's default
 *     dynrt_backend_t backend;
 *     char why[256];
 *     if (dynrt_litert_backend_create(tflite, tflite_bytes, &options, why, sizeof why, &backend) != DYNRT_OK)
 *       fprintf(stderr, "%s\n", why);
 *     dynrt_session_create(plan, plan_bytes, backend, why, sizeof why, &session);
 *     ...
 *     dynrt_session_destroy(session);
 *     dynrt_backend_destroy(backend);   // then the model bytes may go
 *
 * The library is loaded at run time (dlopen), not linked: the first of
 *   1. $DYNRT_LITERT_LIBRARY (a path),
 *   2. the path compiled in (CMake DYNRT_LITERT_LIBRARY; tools/build_runtime.sh records the
 *      ai-edge-litert wheel's ai_edge_litert/libLiteRt.so),
 *   3. "libLiteRt.so" through the dynamic loader's search (an Android app's own copy),
 * that loads. Every LiteRt* function the adapter uses must be exported, else the constructor
 * fails naming the first missing one.
 */
#ifndef DYNRT_LITERT_H
#define DYNRT_LITERT_H

#include <stddef.h>
#include <stdint.h>

#include "dynrt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Creates a LiteRT backend over the .tflite bytes of a build (model.tflite), with options
 * (NULL: defaults) and, on failure, the reason in error_message. A dynrt_backend_create_fn.
 *
 * Ownership: the backend KEEPS A POINTER to `model` (each session loads its LiteRT model
 * from it): the bytes must stay valid until dynrt_backend_destroy. Any number of sessions
 * may share the backend; each owns its LiteRT environment, model and CompiledModel (one
 * XNNPACK thread pool each), so sessions on different threads share nothing mutable.
 *
 * threads: XNNPACK's threads ("xnnpack" options, num_threads): 0 LiteRT's default, N that many.
 *
 * Errors: DYNRT_INVALID_ARGUMENT (NULL pointer, empty model), DYNRT_BACKEND_ERROR (no
 * loadable LiteRT, a library lacking a needed function, bytes that are not a TFLite
 * flatbuffer: the reason names which), DYNRT_OUT_OF_MEMORY. On failure *backend_out is NULL.
 *
 * Checks in dynrt_session_create: the plan's artifact record (size, CRC32) vs these bytes
 * (DYNRT_ARTIFACT_MISMATCH: a truncated or tampered file stops here, before LiteRT parses
 * it), then LiteRT loads and compiles the model, then per segment: a signature of that name,
 * the same input/output count, element types and dims as the plan's operands (physical NHWC
 * dims; a tile segment's input 0 and output 0 with a dynamic or max-batch leading dim), else
 * DYNRT_SEGMENT_MISMATCH naming the segment and operand.
 *
 * Data movement: none. Inputs and outputs are LiteRT tensor buffers over the runtime's own
 * buffers (64-byte aligned, LiteRtCreateTensorBufferFromHostMemory), made once per session,
 * segment and batch and reused. A tile segment's batch K is checked against the plan's
 * bound before every run (the model stores a dynamic batch as -1: it keeps no bound), and
 * its input is resized only when K differs from the segment's previous call.
 */
DYNRT_NODISCARD dynrt_status dynrt_litert_backend_create(const void* model, size_t model_bytes,
                                                         const dynrt_backend_options* options, char* error_message,
                                                         size_t error_capacity, dynrt_backend_t* backend_out);

/* verbose != 0: the adapter reports LiteRT's failing statuses on stderr as they happen. */
void dynrt_litert_set_verbose(int verbose);

/* Diagnostics: the XNNPACK thread count asked for (0: LiteRT's default), or 0 if `backend`
 * is not a LiteRT backend. */
uint32_t dynrt_litert_thread_count(dynrt_backend_t backend);

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_LITERT_H */
