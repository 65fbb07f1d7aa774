/*
 * dynrt ONNX Runtime backend: runs a plan's segments as the ONNX models of a model.onnxpack
 * (one per segment, NHWC I/O; targets/onnxruntime/README.md) through ONNX Runtime's C API.
 *
 *     dynrt_backend_options options = DYNRT_BACKEND_OPTIONS_INIT;   // threads 0: ORT's default
 *     dynrt_backend_t backend;
 *     char why[256];
 *     if (dynrt_onnxruntime_backend_create(pack, pack_bytes, &options, why, sizeof why, &backend) != DYNRT_OK)
 *       fprintf(stderr, "%s\n", why);
 *     dynrt_session_create(plan, plan_bytes, backend, why, sizeof why, &session);
 *     ...
 *     dynrt_session_destroy(session);
 *     dynrt_backend_destroy(backend);   // then the pack bytes may go
 *
 * The library is loaded at run time (dlopen), not linked: the first of
 *   1. $DYNRT_ONNXRUNTIME_LIBRARY (a path),
 *   2. the path compiled in (CMake DYNRT_ONNXRUNTIME_LIBRARY; tools/build_runtime.sh records
 *      the venv's onnxruntime wheel, capi/libonnxruntime.so.<version>),
 *   3. "libonnxruntime.so.1" through the dynamic loader's search (an app's own copy),
 * that exists. Its C API must serve ORT_API_VERSION of the header this adapter was compiled
 * with (OrtGetApiBase()->GetApi); otherwise the constructor fails naming both versions.
 */
#ifndef DYNRT_ONNXRUNTIME_H
#define DYNRT_ONNXRUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "dynrt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Creates an ONNX Runtime backend over the pack bytes (the model.onnxpack of a build), with
 * options (NULL: defaults) and, on failure, the reason in error_message. A
 * dynrt_backend_create_fn.
 *
 * Ownership: the backend KEEPS A POINTER to `pack` (each session parses its segments' models
 * from it when it is created): the bytes must stay valid until dynrt_backend_destroy. Any
 * number of sessions may share the backend; each owns one ORT session per segment.
 *
 * threads: ONNX Runtime's intra-op threads of every segment (inter-op 1, sequential):
 *   0  ORT's default (a pool sized to the physical cores, per segment session);
 *   1  the calling thread only (no pool);
 *   N  a pool of N per segment session, not spinning between runs (the segments run one
 *      after another, and a spinning idle pool would take the cores from the next).
 *
 * Errors: DYNRT_INVALID_ARGUMENT (NULL pointer, empty pack), DYNRT_BACKEND_ERROR (no
 * loadable ONNX Runtime, an API version it does not serve, a pack that is truncated or
 * tampered: the reason names which), DYNRT_OUT_OF_MEMORY. On failure *backend_out is NULL.
 *
 * Checks in dynrt_session_create: the plan's artifact record (size, CRC32) vs these bytes
 * (DYNRT_ARTIFACT_MISMATCH), then per segment: its model in the pack, loadable by ORT, same
 * input/output count, element types and dims as the plan's operands (physical NHWC dims; a
 * tile segment's input 0 and output 0 with a symbolic or max-batch leading dim), else
 * DYNRT_SEGMENT_MISMATCH naming the segment and operand.
 *
 * Data movement: none. Inputs and outputs are ORT tensors over the runtime's buffers
 * (CreateTensorWithDataAsOrtValue), made once per session, segment and batch and reused.
 */
DYNRT_NODISCARD dynrt_status dynrt_onnxruntime_backend_create(const void* pack, size_t pack_bytes,
                                                              const dynrt_backend_options* options,
                                                              char* error_message, size_t error_capacity,
                                                              dynrt_backend_t* backend_out);

/* Log level of the ONNX Runtime environment made by the next backend (ORT keeps one per
 * process): verbose != 0 its info lines too, else warnings and errors. */
void dynrt_onnxruntime_set_verbose(int verbose);

/* Diagnostics: the intra-op thread count asked for (0: ORT's default), or 0 if `backend`
 * is not an ONNX Runtime backend. */
uint32_t dynrt_onnxruntime_thread_count(dynrt_backend_t backend);

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_ONNXRUNTIME_H */
