/*
 * The part of LiteRT's C API (libLiteRt.so, ai-edge-litert 2.3.0 / the Android LiteRT AAR) this
 * adapter calls, declared here from LiteRT's documented ABI: LiteRT ships no headers with its
 * wheel, and this project does not copy theirs. Only what dynrt_litert.c uses: handles are
 * opaque pointers, functions are looked up with dlsym into dynrt_litert_api.
 *
 * The two structs passed by value through the API (a tensor's layout and ranked type) are
 * checked at compile time against the sizes and offsets LiteRT itself asserts for 64-bit
 * targets (LiteRtLayout 68 bytes, dims at 4, strides at 36; LiteRtRankedTensorType 72, layout
 * at 4), so an ABI change in a later LiteRT fails the build instead of corrupting memory.
 */
#ifndef DYNRT_LITERT_API_H
#define DYNRT_LITERT_API_H

#include <stddef.h>
#include <stdint.h>

typedef int dx_lrt_status;  /* LiteRtStatus: 0 ok, 1 invalid argument, 3 runtime failure, ... */
#define DX_LRT_OK 0

typedef struct dx_lrt_environment* dx_lrt_environment;
typedef struct dx_lrt_model* dx_lrt_model;
typedef struct dx_lrt_signature* dx_lrt_signature;
typedef struct dx_lrt_tensor* dx_lrt_tensor;
typedef struct dx_lrt_options* dx_lrt_options;
typedef struct dx_lrt_opaque_options* dx_lrt_opaque_options;
typedef struct dx_lrt_compiled_model* dx_lrt_compiled_model;
typedef struct dx_lrt_tensor_buffer* dx_lrt_tensor_buffer;
typedef size_t dx_lrt_index;  /* LiteRtParamIndex */

#define DX_LRT_HW_CPU 1           /* kLiteRtHwAcceleratorCpu */
#define DX_LRT_ELEMENT_FLOAT32 1  /* kLiteRtElementTypeFloat32 (TfLite's numbering) */
#define DX_LRT_ELEMENT_INT32 2    /* kLiteRtElementTypeInt32 */
#define DX_LRT_MAX_RANK 8         /* LITERT_TENSOR_MAX_RANK */

typedef struct dx_lrt_layout {
  unsigned int rank : 7;
  unsigned int has_strides : 1;
  int32_t dimensions[DX_LRT_MAX_RANK];  /* < 0: dynamic */
  uint32_t strides[DX_LRT_MAX_RANK];
} dx_lrt_layout;

typedef struct dx_lrt_ranked_tensor_type {
  int element_type;  /* LiteRtElementType (an enum) */
  dx_lrt_layout layout;
} dx_lrt_ranked_tensor_type;

/* C99 compile-time checks (no _Static_assert): a negative array size fails the build. */
#define DX_LRT_CHECK(name, condition) typedef char dx_lrt_check_##name[(condition) ? 1 : -1]
DX_LRT_CHECK(layout_size, sizeof(dx_lrt_layout) == 68);
DX_LRT_CHECK(layout_dims, offsetof(dx_lrt_layout, dimensions) == 4);
DX_LRT_CHECK(layout_strides, offsetof(dx_lrt_layout, strides) == 36);
DX_LRT_CHECK(ranked_size, sizeof(dx_lrt_ranked_tensor_type) == 72);
DX_LRT_CHECK(ranked_layout, offsetof(dx_lrt_ranked_tensor_type, layout) == 4);
DX_LRT_CHECK(index_size, sizeof(dx_lrt_index) == sizeof(size_t));

/* The functions, resolved by name (the X-macro keeps names, types and the lookup in one list). */
#define DX_LRT_FUNCTIONS(X)                                                                                      \
  X(LiteRtCreateEnvironment, dx_lrt_status, (int, const void*, dx_lrt_environment*))                           \
  X(LiteRtDestroyEnvironment, void, (dx_lrt_environment))                                                      \
  X(LiteRtCreateModelFromBuffer, dx_lrt_status, (dx_lrt_environment, const void*, size_t, dx_lrt_model*))      \
  X(LiteRtDestroyModel, void, (dx_lrt_model))                                                                  \
  X(LiteRtGetNumModelSignatures, dx_lrt_status, (dx_lrt_model, dx_lrt_index*))                                 \
  X(LiteRtGetModelSignature, dx_lrt_status, (dx_lrt_model, dx_lrt_index, dx_lrt_signature*))                   \
  X(LiteRtGetSignatureKey, dx_lrt_status, (dx_lrt_signature, const char**))                                    \
  X(LiteRtGetNumSignatureInputs, dx_lrt_status, (dx_lrt_signature, dx_lrt_index*))                             \
  X(LiteRtGetNumSignatureOutputs, dx_lrt_status, (dx_lrt_signature, dx_lrt_index*))                            \
  X(LiteRtGetSignatureInputName, dx_lrt_status, (dx_lrt_signature, dx_lrt_index, const char**))                \
  X(LiteRtGetSignatureOutputName, dx_lrt_status, (dx_lrt_signature, dx_lrt_index, const char**))               \
  X(LiteRtGetSignatureInputTensorByIndex, dx_lrt_status, (dx_lrt_signature, dx_lrt_index, dx_lrt_tensor*))     \
  X(LiteRtGetSignatureOutputTensorByIndex, dx_lrt_status, (dx_lrt_signature, dx_lrt_index, dx_lrt_tensor*))    \
  X(LiteRtGetRankedTensorType, dx_lrt_status, (dx_lrt_tensor, dx_lrt_ranked_tensor_type*))                     \
  X(LiteRtCreateOptions, dx_lrt_status, (dx_lrt_options*))                                                     \
  X(LiteRtDestroyOptions, void, (dx_lrt_options))                                                              \
  X(LiteRtSetOptionsHardwareAccelerators, dx_lrt_status, (dx_lrt_options, int))                               \
  X(LiteRtCreateOpaqueOptions, dx_lrt_status, (const char*, void*, void (*)(void*), dx_lrt_opaque_options*))   \
  X(LiteRtDestroyOpaqueOptions, void, (dx_lrt_opaque_options))                                                 \
  X(LiteRtAddOpaqueOptions, dx_lrt_status, (dx_lrt_options, dx_lrt_opaque_options))                            \
  X(LiteRtCreateCompiledModel, dx_lrt_status, (dx_lrt_environment, dx_lrt_model, dx_lrt_options,              \
                                               dx_lrt_compiled_model*))                                        \
  X(LiteRtDestroyCompiledModel, void, (dx_lrt_compiled_model))                                                 \
  X(LiteRtCompiledModelResizeInputTensor, dx_lrt_status, (dx_lrt_compiled_model, dx_lrt_index, dx_lrt_index,  \
                                                          const int*, size_t))                                 \
  X(LiteRtRunCompiledModel, dx_lrt_status, (dx_lrt_compiled_model, dx_lrt_index, size_t, dx_lrt_tensor_buffer*, \
                                            size_t, dx_lrt_tensor_buffer*))                                    \
  X(LiteRtCreateTensorBufferFromHostMemory, dx_lrt_status, (const dx_lrt_ranked_tensor_type*, void*, size_t,   \
                                                            void (*)(void*), dx_lrt_tensor_buffer*))           \
  X(LiteRtDestroyTensorBuffer, void, (dx_lrt_tensor_buffer))

#define DX_LRT_FIELD(name, result, params) result(*name) params;
typedef struct dynrt_litert_api {
  DX_LRT_FUNCTIONS(DX_LRT_FIELD)
} dynrt_litert_api;
#undef DX_LRT_FIELD

#endif /* DYNRT_LITERT_API_H */
