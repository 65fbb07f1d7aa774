/*
 * dynrt Core ML backend (Apple platforms only; compiled by runtime_ios' Swift package, never
 * on the machine that writes it): runs a plan's segments as the functions of one
 * multifunction Core ML package, the model.mlpackage `dynexport build --target ios` writes
 * (one ML-program function per segment, named as the segment; operands input_<i> /
 * output_<i> in the plan's order, float32, NHWC for 4-D).
 *
 *     dynrt_backend_t backend;
 *     char why[256];
 *     if (dynrt_coreml_backend_create(package_path, DYNRT_COREML_ALL, NULL, why, sizeof why, &backend) != DYNRT_OK) {
 *       fprintf(stderr, "%s\n", why);
 *     }
 *     dynrt_session_create(plan, plan_bytes, backend, why, sizeof why, &session);
 *     ...
 *     dynrt_session_destroy(session);
 *     dynrt_backend_destroy(backend);
 *
 * Needs iOS 18 / macOS 15 (multifunction ML programs: MLModelConfiguration.functionName).
 */
#ifndef DYNRT_COREML_H
#define DYNRT_COREML_H

#include <stddef.h>
#include <stdint.h>

#include "dynrt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where Core ML may run the functions (MLComputeUnits). An fp32 package runs on the CPU and
 * the GPU: the Neural Engine computes in fp16 only (build with --precision fp16 for it). */
typedef enum dynrt_coreml_compute_units {
  DYNRT_COREML_ALL = 0,
  DYNRT_COREML_CPU_ONLY = 1,
  DYNRT_COREML_CPU_AND_GPU = 2,
  DYNRT_COREML_CPU_AND_NEURAL_ENGINE = 3,
} dynrt_coreml_compute_units;

/* Creates a Core ML backend over the package at `package_path` (a UTF-8 file system path to
 * the build's model.mlpackage, or to a model.mlmodelc compiled from it). A .mlpackage is
 * compiled once here (MLModel compileModelAtURL) into a temporary folder that
 * dynrt_backend_destroy removes. options->threads is ignored (Core ML schedules its own
 * work); options may be NULL. On failure the reason is in error_message (caller-owned, may
 * be NULL with capacity 0) and *backend_out is NULL.
 *
 * The backend sets no artifact bytes (dynrt_backend.artifact is NULL), so the session does
 * not CRC-check the package against the plan: a package is a folder, and its check is the
 * manifest's SHA-256 of every file, which the Swift API (DynexportSession) verifies before
 * it creates anything.
 *
 * Sessions: each loads one MLModel per segment (the function of the segment's name) in
 * dynrt_session_create, and checks it: every input_<i> / output_<i> present, a multi-array
 * of the plan's dtype and dims (a tile segment's input 0 taking batches 1..max_batch), else
 * DYNRT_SEGMENT_MISMATCH naming the segment and the operand.
 *
 * Data movement: inputs are MLMultiArray views on the runtime's buffers (no copy), outputs
 * are written by Core ML into MLMultiArray views on the runtime's buffers given as output
 * backings (MLPredictionOptions.outputBackings); the adapter copies an output only when Core
 * ML returned it elsewhere. The views are made on a segment's first call with a batch and
 * reused (the runtime keeps a session's buffers in place). The adapter allocates nothing
 * after that; Core ML's prediction itself may (its internals are not ours to see).
 *
 * Errors: DYNRT_INVALID_ARGUMENT (NULL pointers, a path that is not a folder or does not
 * compile), DYNRT_OUT_OF_MEMORY; a failed prediction is DYNRT_BACKEND_ERROR (its NSError is
 * logged with NSLog, the runtime's run_segment has no message channel).
 */
DYNRT_NODISCARD dynrt_status dynrt_coreml_backend_create(const char* package_path, uint32_t compute_units,
                                                         const dynrt_backend_options* options, char* error_message,
                                                         size_t error_capacity, dynrt_backend_t* backend_out);

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_COREML_H */
