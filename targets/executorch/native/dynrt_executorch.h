/*
 * dynrt ExecuTorch backend: runs a plan's segments as the methods of one ExecuTorch program
 * (the model.pte `dynexport build` writes: one method per segment, XNNPACK-delegated,
 * channels_last I/O).
 *
 *     dynrt_backend_options options = DYNRT_BACKEND_OPTIONS_INIT;   // threads 0: ExecuTorch's default
 *     dynrt_backend_t backend;
 *     char why[256];
 *     if (dynrt_executorch_backend_create_v2(pte, pte_bytes, &options, why, sizeof why, &backend) != DYNRT_OK) {
 *       fprintf(stderr, "%s\n", why);
 *     }
 *     dynrt_session_create(plan, plan_bytes, backend, why, sizeof why, &session);
 *     ...
 *     dynrt_session_destroy(session);
 *     dynrt_backend_destroy(backend);   // then the pte bytes may go
 *
 * Link: the static library `dynrt_executorch` (targets/executorch/native/CMakeLists.txt),
 * which brings ExecuTorch's runtime, the XNNPACK delegate and the optimized CPU kernels.
 */
#ifndef DYNRT_EXECUTORCH_H
#define DYNRT_EXECUTORCH_H

#include <stddef.h>
#include <stdint.h>

#include "dynrt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Creates an ExecuTorch backend over the program bytes `pte` (the model.pte of a build),
 * with options (NULL: defaults; options->threads as below) and, on failure, the reason in
 * error_message (caller-owned, may be NULL with capacity 0). A dynrt_backend_create_fn.
 *
 * Ownership: the backend KEEPS A POINTER to `pte` and does not copy it (ExecuTorch reads
 * weights and delegate blobs from it lazily, so it can be an mmap of the file): the bytes
 * must stay valid and unchanged until dynrt_backend_destroy returns. They must be aligned
 * to 16 bytes (malloc, operator new and mmap are); otherwise DYNRT_INVALID_ARGUMENT.
 * The caller owns *backend_out and frees it with dynrt_backend_destroy, after every
 * session using it. Any number of sessions may share the backend, created and destroyed in
 * any order: each session loads its own methods (with their planned memory and scratch)
 * when it is created and releases them when it is destroyed; the backend keeps only the
 * program. Sessions on one backend may run on different threads.
 *
 * threads: how many threads XNNPACK (and the optimized kernels) use per segment.
 *   0  leave ExecuTorch's default: its process-wide pool, sized to the performance cores
 *      (cpuinfo). Nothing global changes.
 *   1  run this backend's segments on the calling thread (ExecuTorch's NoThreadPoolGuard
 *      while methods load and run). Nothing global changes.
 *   N  resize the process-wide ExecuTorch pool to N threads before any method loads. The
 *      pool is global and an XNNPACK method keeps the pool it was loaded with, so this is
 *      refused (DYNRT_INVALID_ARGUMENT) while another backend of this process that uses
 *      the pool (threads != 1) exists with a different size. The wheel ships no public
 *      header for this (threadpool.h is missing, threadpool_guard.h is there): the adapter
 *      declares the two ThreadPool calls it makes, which libexecutorch_threadpool exports.
 * dynrt_executorch_thread_count tells what a backend ended up with.
 *
 * Errors: DYNRT_INVALID_ARGUMENT (NULL pointer, empty or misaligned pte, a thread count
 * that cannot be applied), DYNRT_BACKEND_ERROR (the bytes are not an ExecuTorch program
 * this runtime loads; ExecuTorch also logs the reason), DYNRT_OUT_OF_MEMORY; each with its
 * reason in error_message.
 * On failure *backend_out is NULL.
 *
 * Checks done later, in dynrt_session_create: the plan's artifact record (size, CRC32) vs
 * these bytes (DYNRT_ARTIFACT_MISMATCH, by the session), and each segment's method: present,
 * same input/output count, dtype and sizes (a 4-D plan operand NHWC [N, H, W, C] is a method
 * tensor [N, C, H, W]; a tile segment's method at its maximum batch), else
 * DYNRT_SEGMENT_MISMATCH with a message naming the method, the operand and both shapes.
 *
 * Data movement per segment call: inputs are bound as tensors over the runtime's buffers
 * in the layout the operand info states: NHWC dim order, or row-major (no layout conversion
 * when the method is channels_last, as the emitter exports it). When the method's memory plan owns an input or output (ExecuTorch's
 * default export), ExecuTorch copies the input into its planned buffer and the adapter copies
 * the output (batch rows) back: one memcpy each way. An input/output the plan leaves unplanned
 * is used in place (zero-copy). A method tensor in another dim order (e.g. a contiguous NCHW
 * output) still works: that operand is permuted by a copy on every call.
 * No allocation happens in a segment call, except that a kernel asking for temporary memory
 * beyond what earlier calls needed grows the session's scratch once.
 */
DYNRT_NODISCARD dynrt_status dynrt_executorch_backend_create_v2(const void* pte, size_t pte_bytes,
                                                                const dynrt_backend_options* options,
                                                                char* error_message, size_t error_capacity,
                                                                dynrt_backend_t* backend_out);

/* The first constructor, kept: dynrt_executorch_backend_create_v2 with options.threads =
 * threads and no message. */
DYNRT_NODISCARD dynrt_status dynrt_executorch_backend_create(const void* pte, size_t pte_bytes, uint32_t threads,
                                                             dynrt_backend_t* backend_out);

/* Diagnostics: how many threads this backend's segments run with (1 for threads = 1,
 * else the size of ExecuTorch's pool as of now), or 0 if `backend` is not an ExecuTorch
 * backend. */
uint32_t dynrt_executorch_thread_count(dynrt_backend_t backend);

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_EXECUTORCH_H */
