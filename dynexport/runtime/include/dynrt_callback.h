/*
 * The callback backend: segments run by a function of the application (tests run them in
 * PyTorch through ctypes; a host tool may run them with anything). It checks no artifact.
 *
 *     int32_t run(void* user_data, uint32_t segment, uint32_t batch,
 *                 void* const* inputs, void* const* outputs);   // 0 = ok
 *     dynrt_backend_t backend;
 *     dynrt_callback_backend_create(run, my_state, &backend);
 *     ... dynrt_session_create(plan, bytes, backend, ...) ...
 *     dynrt_backend_destroy(backend);                            // after the sessions
 *
 * `run` gets the segment index (plan order), the batch (the leading dim of input 0 and
 * output 0 of a tile segment; 1 otherwise) and the runtime's operand buffers (float32 NHWC
 * with the plan's dims). It must write every output; a nonzero return fails the frame
 * (DYNRT_BACKEND_ERROR, the session is reset).
 */
#ifndef DYNRT_CALLBACK_H
#define DYNRT_CALLBACK_H

#include "dynrt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t (*dynrt_segment_callback)(void* user_data, uint32_t segment, uint32_t batch, void* const* inputs,
                                          void* const* outputs);

/* The backend is named "callback". DYNRT_INVALID_ARGUMENT when run or backend_out is NULL. */
DYNRT_NODISCARD dynrt_status dynrt_callback_backend_create(dynrt_segment_callback run, void* user_data,
                                                          dynrt_backend_t* backend_out);

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_CALLBACK_H */
