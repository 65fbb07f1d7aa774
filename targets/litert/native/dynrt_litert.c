/* The LiteRT backend adapter (dynrt_litert.h), backend API v2.
 *
 * create:          dlopen libLiteRt.so, resolve the functions of dynrt_litert_api.h, check the
 *                  bytes look like a TFLite flatbuffer (identifier "TFL3").
 * prepare_session: the session's own LiteRT environment, model (from the bytes: the session
 *                  checked their CRC32 first), options (CPU; "xnnpack" num_threads) and
 *                  CompiledModel; the model's signature keys.
 * prepare_segment: find the segment's signature by key, check its operands against the plan,
 *                  remember the runtime's buffers.
 * run_segment:     check K, resize input 0 when K changed, run with tensor buffers over the
 *                  runtime's buffers (made on a segment's first call with that K, then reused).
 *
 * Invariant: the backend context is read-only after create (sessions on other threads share
 * it); everything LiteRT makes for a session lives in its state and is freed by release_session.
 */
#include "dynrt_litert.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynrt_backend_impl.h"
#include "dynrt_litert_api.h"

#ifndef DYNRT_LITERT_DEFAULT_LIBRARY
#define DYNRT_LITERT_DEFAULT_LIBRARY ""
#endif

static const char kBackendName[] = "litert";
static int g_verbose = 0;

typedef struct adapter {
  void* library;
  dynrt_litert_api api;
  const void* model;
  size_t model_bytes;
  uint32_t threads;
  char library_path[512];
} adapter;

/* One segment of one session. Operands are in the signature's order (inputs then outputs);
 * plan_index maps each to the plan's operand (signature inputs are sorted by name, so
 * args_10 comes before args_2). tensors: per batch b (slot b-1; one slot for a non-tile
 * segment) one tensor buffer per operand, NULL until first needed. */
typedef struct segment_state {
  dx_lrt_index signature;
  uint32_t max_batch;
  uint32_t input_count, output_count;
  uint32_t* plan_index;          /* signature operand -> plan operand (inputs, then outputs) */
  dynrt_operand_info* operands;  /* signature order */
  void** buffers;                /* the bound runtime buffers, signature order */
  dx_lrt_tensor_buffer* tensors; /* batches * (input_count + output_count) */
  uint32_t batches;
  uint32_t batch_input;          /* signature index of the plan's input 0 */
  uint32_t current_batch;        /* the batch the compiled model's input is sized for; 0 unknown */
} segment_state;

typedef struct session_state {
  dx_lrt_environment environment;
  dx_lrt_model model;
  dx_lrt_options options;
  dx_lrt_compiled_model compiled;
  dx_lrt_index signature_count;
  uint32_t segment_count;
  segment_state* segments;
} session_state;

static const char* status_name(dx_lrt_status status) {
  switch (status) {
    case 0: return "ok";
    case 1: return "invalid argument";
    case 2: return "memory allocation failure";
    case 3: return "runtime failure";
    case 4: return "missing input tensor";
    case 5: return "unsupported";
    case 6: return "not found";
    case 500: return "file I/O";
    case 501: return "invalid flatbuffer";
    case 504: return "compilation";
    case 1000: return "index out of bounds";
    case 5001: return "shape inference failed";
    default: return "error";
  }
}

/* Nonzero (and the reason in message) when a LiteRT call did not return OK. */
static int lrt_failed(dx_lrt_status status, char* message, size_t capacity, const char* what) {
  if (status == DX_LRT_OK) return 0;
  dynrt_backend_message(message, capacity, "LiteRT %s failed: status %d (%s)", what, status, status_name(status));
  return 1;
}

/* --- loading the library --------------------------------------------------------------------- */

static void* open_library(char* message, size_t capacity, char* chosen, size_t chosen_capacity) {
  const char* candidates[3];
  candidates[0] = getenv("DYNRT_LITERT_LIBRARY");
  candidates[1] = DYNRT_LITERT_DEFAULT_LIBRARY;
  candidates[2] = "libLiteRt.so";
  return dynrt_open_runtime_library("LiteRT", candidates, 3,
                                    "set DYNRT_LITERT_LIBRARY to the path of libLiteRt.so "
                                    "(the ai-edge-litert wheel's ai_edge_litert/libLiteRt.so)",
                                    chosen, chosen_capacity, message, capacity);
}

/* Every function of DX_LRT_FUNCTIONS by name; 0 when all are there. */
static int resolve_api(adapter* a, char* message, size_t capacity) {
  void* symbol;
#define DX_LRT_RESOLVE(name, result, params)                                                                   \
  symbol = dlsym(a->library, #name);                                                                           \
  if (symbol == NULL) {                                                                                        \
    dynrt_backend_message(message, capacity, "%s has no %s: not a LiteRT library, or a LiteRT older than 2.x", \
                          a->library_path, #name);                                                             \
    return 1;                                                                                                  \
  }                                                                                                            \
  memcpy(&a->api.name, &symbol, sizeof symbol);
  DX_LRT_FUNCTIONS(DX_LRT_RESOLVE)
#undef DX_LRT_RESOLVE
  return 0;
}

/* --- sessions -------------------------------------------------------------------------------- */

static void release_segment(const dynrt_litert_api* api, segment_state* s) {
  uint32_t i, count = s->batches * (s->input_count + s->output_count);
  if (s->tensors != NULL)
    for (i = 0; i < count; ++i)
      if (s->tensors[i] != NULL) api->LiteRtDestroyTensorBuffer(s->tensors[i]);
  free(s->tensors);
  free(s->plan_index);
  free(s->operands);
  free(s->buffers);
  memset(s, 0, sizeof *s);
}

static void vt_release_session(void* context, void* state_pointer) {
  const adapter* a = (const adapter*)context;
  const dynrt_litert_api* api = &a->api;
  session_state* state = (session_state*)state_pointer;
  uint32_t i;
  if (state == NULL) return;
  for (i = 0; i < state->segment_count; ++i) release_segment(api, &state->segments[i]);
  free(state->segments);
  if (state->compiled != NULL) api->LiteRtDestroyCompiledModel(state->compiled);
  if (state->options != NULL) api->LiteRtDestroyOptions(state->options);
  if (state->model != NULL) api->LiteRtDestroyModel(state->model);
  if (state->environment != NULL) api->LiteRtDestroyEnvironment(state->environment);
  free(state);
}

/* The "xnnpack" opaque options: a TOML text LiteRT frees with the destructor given. */
static dx_lrt_status add_thread_options(const dynrt_litert_api* api, dx_lrt_options options, uint32_t threads) {
  dx_lrt_opaque_options opaque = NULL;
  dx_lrt_status status;
  char* payload = (char*)malloc(48);
  if (payload == NULL) return 2;
  snprintf(payload, 48, "num_threads = %u\n", threads);
  status = api->LiteRtCreateOpaqueOptions("xnnpack", payload, free, &opaque);
  if (status != DX_LRT_OK) {
    free(payload);
    return status;
  }
  status = api->LiteRtAddOpaqueOptions(options, opaque);  /* the options own it from here */
  if (status != DX_LRT_OK) api->LiteRtDestroyOpaqueOptions(opaque);
  return status;
}

static dynrt_status vt_prepare_session(void* context, const dynrt_plan_info* plan, void** state_out, char* message,
                                       size_t capacity) {
  const adapter* a = (const adapter*)context;
  const dynrt_litert_api* api = &a->api;
  session_state* state;
  *state_out = NULL;
  state = (session_state*)calloc(1, sizeof *state);
  if (state == NULL || (plan->segment_count > 0 &&
                        (state->segments = (segment_state*)calloc(plan->segment_count, sizeof *state->segments)) == NULL)) {
    free(state);
    dynrt_backend_message(message, capacity, "out of memory for %u segment states", plan->segment_count);
    return DYNRT_OUT_OF_MEMORY;
  }
  state->segment_count = plan->segment_count;
  *state_out = state;  /* released by release_session from here on, whatever fails below */
  if (lrt_failed(api->LiteRtCreateEnvironment(0, NULL, &state->environment), message, capacity, "environment"))
    return DYNRT_BACKEND_ERROR;
  if (lrt_failed(api->LiteRtCreateModelFromBuffer(state->environment, a->model, a->model_bytes, &state->model),
                 message, capacity, "loading model.tflite"))
    return DYNRT_BACKEND_ERROR;
  if (lrt_failed(api->LiteRtGetNumModelSignatures(state->model, &state->signature_count), message, capacity,
                 "reading the signature count"))
    return DYNRT_BACKEND_ERROR;
  /* NULL options fail (status 1): the CPU accelerator must be asked for */
  if (lrt_failed(api->LiteRtCreateOptions(&state->options), message, capacity, "options") ||
      lrt_failed(api->LiteRtSetOptionsHardwareAccelerators(state->options, DX_LRT_HW_CPU), message, capacity,
                 "CPU accelerator") ||
      (a->threads > 0 &&
       lrt_failed(add_thread_options(api, state->options, a->threads), message, capacity, "xnnpack thread options")))
    return DYNRT_BACKEND_ERROR;
  if (lrt_failed(api->LiteRtCreateCompiledModel(state->environment, state->model, state->options, &state->compiled),
                 message, capacity, "compiling model.tflite for the CPU"))
    return DYNRT_BACKEND_ERROR;
  return DYNRT_OK;
}

static int element_type(uint32_t dtype) {
  return dtype == 0 ? DX_LRT_ELEMENT_FLOAT32 : dtype == 1 ? DX_LRT_ELEMENT_INT32 : -1;
}

/* The number N of a name "<anything>_N" (args_0, output_3), or -1. */
static long trailing_number(const char* name) {
  const char* end = name + strlen(name);
  const char* digits = end;
  long value = 0;
  while (digits > name && digits[-1] >= '0' && digits[-1] <= '9') --digits;
  if (digits == end || digits == name || digits[-1] != '_' || end - digits > 6) return -1;
  for (; digits < end; ++digits) value = value * 10 + (*digits - '0');
  return value;
}

/* signature order -> plan order for `count` operands named args_N / output_N: the numbers
 * when they are a permutation of 0..count-1, else the signature's own order. */
static dynrt_status operand_order(const dynrt_litert_api* api, dx_lrt_signature signature, int inputs, uint32_t count,
                                  uint32_t* order, char* message, size_t capacity) {
  uint32_t j, seen_count = 0;
  unsigned char seen[256];
  if (count > sizeof seen) {
    dynrt_backend_message(message, capacity, "a signature with %u operands is more than this adapter binds", count);
    return DYNRT_SEGMENT_MISMATCH;
  }
  memset(seen, 0, sizeof seen);
  for (j = 0; j < count; ++j) {
    const char* name = NULL;
    long number;
    dx_lrt_status status = inputs ? api->LiteRtGetSignatureInputName(signature, j, &name)
                                  : api->LiteRtGetSignatureOutputName(signature, j, &name);
    if (lrt_failed(status, message, capacity, "reading an operand name")) return DYNRT_BACKEND_ERROR;
    number = name != NULL ? trailing_number(name) : -1;
    if (number < 0 || (uint32_t)number >= count || seen[number]) break;
    seen[number] = 1;
    order[j] = (uint32_t)number;
    ++seen_count;
  }
  if (seen_count != count)
    for (j = 0; j < count; ++j) order[j] = j;
  return DYNRT_OK;
}

/* The model's operand against the plan's; 0 when they agree. */
static int check_operand(const dynrt_litert_api* api, dx_lrt_signature signature, int is_input, uint32_t index,
                         const dynrt_operand_info* info, int batched, const char* segment, uint32_t plan_index,
                         char* message, size_t capacity) {
  dx_lrt_tensor tensor = NULL;
  dx_lrt_ranked_tensor_type type;
  char plan_text[DYNRT_DIMS_TEXT_CAPACITY], model_text[160];
  const char* role = is_input ? "input" : "output";
  uint32_t d, rank;
  int mismatch, used = 0;
  dx_lrt_status status = is_input ? api->LiteRtGetSignatureInputTensorByIndex(signature, index, &tensor)
                                  : api->LiteRtGetSignatureOutputTensorByIndex(signature, index, &tensor);
  if (lrt_failed(status, message, capacity, "reading a signature's tensor")) return 1;
  memset(&type, 0, sizeof type);
  if (lrt_failed(api->LiteRtGetRankedTensorType(tensor, &type), message, capacity, "reading a tensor type")) {
    size_t length = strlen(message);
    if (length + 1 < capacity)
      snprintf(message + length, capacity - length, " (segment %s, %s %u: not a ranked tensor?)", segment, role,
               plan_index);
    return 1;
  }
  rank = type.layout.rank;
  mismatch = type.element_type != element_type(info->dtype) || rank != info->rank;
  for (d = 0; !mismatch && d < rank; ++d) {
    int32_t dim = type.layout.dimensions[d];
    if (d == 0 && batched) mismatch = !(dim == -1 || dim == (int32_t)info->dims[0]);
    else mismatch = dim != (int32_t)info->dims[d];
  }
  if (!mismatch) return 0;
  model_text[0] = '\0';
  for (d = 0; d < rank && d < DX_LRT_MAX_RANK && used >= 0 && (size_t)used < sizeof model_text; ++d)
    used += snprintf(model_text + used, sizeof model_text - (size_t)used, "%s%d", d ? ", " : "[",
                     (int)type.layout.dimensions[d]);
  if (used >= 0 && (size_t)used < sizeof model_text) snprintf(model_text + used, sizeof model_text - (size_t)used, "]");
  dynrt_backend_message(message, capacity,
                        "segment %s: %s %u is %s %s in the plan but the .tflite signature's is element type %d dims %s "
                        "(-1: dynamic); rebuild so the plan and model.tflite come from one build", segment, role,
                        plan_index, dynrt_dtype_name(info->dtype),
                        dynrt_format_operand_dims(plan_text, sizeof plan_text, info, batched), type.element_type,
                        rank ? model_text : "[]");
  return 1;
}

/* The signature whose key is `name`: LiteRT has no lookup by key, so loop over them. */
static int find_signature(const dynrt_litert_api* api, const session_state* state, const char* name,
                          dx_lrt_index* index_out, dx_lrt_signature* signature_out) {
  dx_lrt_index i;
  for (i = 0; i < state->signature_count; ++i) {
    dx_lrt_signature signature = NULL;
    const char* key = NULL;
    if (api->LiteRtGetModelSignature(state->model, i, &signature) != DX_LRT_OK) continue;
    if (api->LiteRtGetSignatureKey(signature, &key) != DX_LRT_OK || key == NULL) continue;
    if (strcmp(key, name) == 0) {
      *index_out = i;
      *signature_out = signature;
      return 1;
    }
  }
  return 0;
}

static dynrt_status vt_prepare_segment(void* context, void* state_pointer, uint32_t index,
                                       const dynrt_segment_info* info, char* message, size_t capacity) {
  const adapter* a = (const adapter*)context;
  const dynrt_litert_api* api = &a->api;
  session_state* state = (session_state*)state_pointer;
  segment_state* s;
  dx_lrt_signature signature = NULL;
  dx_lrt_index model_inputs = 0, model_outputs = 0;
  uint32_t j, operands;
  dynrt_status status;
  if (state == NULL || index >= state->segment_count) return DYNRT_INVALID_ARGUMENT;
  s = &state->segments[index];
  if (!find_signature(api, state, info->name, &s->signature, &signature)) {
    dynrt_backend_message(message, capacity, "model.tflite has no signature '%s' (it has %zu signatures)", info->name,
                          (size_t)state->signature_count);
    return DYNRT_SEGMENT_MISMATCH;
  }
  if (lrt_failed(api->LiteRtGetNumSignatureInputs(signature, &model_inputs), message, capacity, "input count") ||
      lrt_failed(api->LiteRtGetNumSignatureOutputs(signature, &model_outputs), message, capacity, "output count"))
    return DYNRT_BACKEND_ERROR;
  if (model_inputs != info->input_count || model_outputs != info->output_count) {
    dynrt_backend_message(message, capacity,
                          "segment %s: the plan has %u inputs and %u outputs, its .tflite signature %zu and %zu",
                          info->name, info->input_count, info->output_count, (size_t)model_inputs,
                          (size_t)model_outputs);
    return DYNRT_SEGMENT_MISMATCH;
  }
  s->max_batch = info->max_batch;
  s->input_count = info->input_count;
  s->output_count = info->output_count;
  operands = s->input_count + s->output_count;
  s->batches = info->max_batch > 0 ? info->max_batch : 1;
  s->plan_index = (uint32_t*)calloc(operands ? operands : 1, sizeof(uint32_t));
  s->operands = (dynrt_operand_info*)calloc(operands ? operands : 1, sizeof(dynrt_operand_info));
  s->buffers = (void**)calloc(operands ? operands : 1, sizeof(void*));
  s->tensors = (dx_lrt_tensor_buffer*)calloc((size_t)s->batches * (operands ? operands : 1), sizeof(dx_lrt_tensor_buffer));
  if (!s->plan_index || !s->operands || !s->buffers || !s->tensors) {
    dynrt_backend_message(message, capacity, "out of memory preparing segment %s", info->name);
    return DYNRT_OUT_OF_MEMORY;
  }
  if ((status = operand_order(api, signature, 1, s->input_count, s->plan_index, message, capacity)) != DYNRT_OK ||
      (status = operand_order(api, signature, 0, s->output_count, s->plan_index + s->input_count, message,
                              capacity)) != DYNRT_OK)
    return status;
  for (j = 0; j < operands; ++j) {
    int is_input = j < s->input_count;
    uint32_t signature_index = is_input ? j : j - s->input_count;
    uint32_t k = s->plan_index[j];
    const dynrt_operand_info* operand = is_input ? &info->inputs[k] : &info->outputs[k];
    int batched = info->max_batch > 0 && k == 0;
    if (operand->rank < 1 || operand->rank > 4 || element_type(operand->dtype) < 0) {
      dynrt_backend_message(message, capacity,
                            "segment %s: operand %u has rank %u dtype %u, which this adapter does not bind", info->name,
                            k, operand->rank, operand->dtype);
      return DYNRT_SEGMENT_MISMATCH;
    }
    if (check_operand(api, signature, is_input, signature_index, operand, batched, info->name, k, message, capacity))
      return DYNRT_SEGMENT_MISMATCH;
    if (batched && is_input) s->batch_input = j;
    s->operands[j] = *operand;
    s->buffers[j] = is_input ? info->input_buffers[k] : info->output_buffers[k];
  }
  /* the compiled model sized a dynamic batch as the model's default shape (1): unknown here */
  s->current_batch = 0;
  return DYNRT_OK;
}

/* A tensor buffer over `buffer` with the operand's dims (the leading one `batch` when batched). */
static dx_lrt_status make_tensor(const dynrt_litert_api* api, const dynrt_operand_info* operand, void* buffer,
                                 int batched, uint32_t batch, dx_lrt_tensor_buffer* out) {
  dx_lrt_ranked_tensor_type type;
  size_t elements = 1;
  uint32_t d;
  memset(&type, 0, sizeof type);
  type.element_type = element_type(operand->dtype);
  type.layout.rank = operand->rank;
  for (d = 0; d < operand->rank; ++d) {
    type.layout.dimensions[d] = (int32_t)(d == 0 && batched ? batch : operand->dims[d]);
    elements *= (size_t)type.layout.dimensions[d];
  }
  return api->LiteRtCreateTensorBufferFromHostMemory(&type, buffer, elements * 4u, NULL, out);
}

static dynrt_status vt_run_segment(void* context, void* state_pointer, uint32_t index, uint32_t batch,
                                   void* const* inputs, void* const* outputs) {
  const adapter* a = (const adapter*)context;
  const dynrt_litert_api* api = &a->api;
  session_state* state = (session_state*)state_pointer;
  segment_state* s;
  dx_lrt_tensor_buffer* tensors;
  dx_lrt_tensor_buffer scratch[64];
  uint32_t j, operands;
  int temporary = 0;
  dx_lrt_status status;
  if (state == NULL || index >= state->segment_count || state->segments[index].buffers == NULL)
    return DYNRT_INVALID_ARGUMENT;
  s = &state->segments[index];
  /* the .tflite keeps a dynamic batch as -1, not its bound: K is checked against the plan's */
  if (s->max_batch > 0 ? (batch < 1 || batch > s->max_batch) : batch != 1) return DYNRT_INVALID_ARGUMENT;
  operands = s->input_count + s->output_count;
  tensors = s->tensors + (size_t)(batch - 1) * operands;
  for (j = 0; j < operands; ++j) {
    uint32_t k = s->plan_index[j];
    void* buffer = j < s->input_count ? inputs[k] : outputs[k];
    if (buffer != s->buffers[j]) temporary = 1;  /* not the bound buffers: tensor buffers for this call only */
  }
  if (temporary) {
    if (operands > sizeof scratch / sizeof scratch[0]) return DYNRT_INVALID_ARGUMENT;
    memset(scratch, 0, sizeof scratch);
    tensors = scratch;
  }
  if (s->max_batch > 0 && batch != s->current_batch) {
    const dynrt_operand_info* operand = &s->operands[s->batch_input];
    int dims[4];
    uint32_t d;
    for (d = 0; d < operand->rank; ++d) dims[d] = (int)(d == 0 ? batch : operand->dims[d]);
    status = api->LiteRtCompiledModelResizeInputTensor(state->compiled, s->signature, s->batch_input, dims,
                                                       operand->rank);
    if (status != DX_LRT_OK) {
      if (g_verbose) fprintf(stderr, "litert: segment %u: resizing to batch %u: status %d\n", index, batch, status);
      s->current_batch = 0;
      goto fail;
    }
    s->current_batch = batch;
  }
  for (j = 0; j < operands; ++j) {
    if (tensors[j] == NULL) {
      uint32_t k = s->plan_index[j];
      void* buffer = j < s->input_count ? inputs[k] : outputs[k];
      status = make_tensor(api, &s->operands[j], buffer, s->max_batch > 0 && k == 0, batch, &tensors[j]);
      if (status != DX_LRT_OK) {
        if (g_verbose) fprintf(stderr, "litert: segment %u: tensor buffer %u: status %d\n", index, j, status);
        goto fail;
      }
    }
  }
  status = api->LiteRtRunCompiledModel(state->compiled, s->signature, s->input_count, tensors, s->output_count,
                                       tensors + s->input_count);
  if (status != DX_LRT_OK) {
    if (g_verbose) fprintf(stderr, "litert: segment %u: run: status %d (%s)\n", index, status, status_name(status));
    goto fail;
  }
  if (temporary)
    for (j = 0; j < operands; ++j) api->LiteRtDestroyTensorBuffer(scratch[j]);
  return DYNRT_OK;
fail:
  if (temporary)
    for (j = 0; j < operands; ++j)
      if (scratch[j] != NULL) api->LiteRtDestroyTensorBuffer(scratch[j]);
  return DYNRT_BACKEND_ERROR;
}

/* --- the backend ----------------------------------------------------------------------------- */

static void vt_destroy(struct dynrt_backend* backend) {
  if (backend == NULL) return;
  /* the library stays loaded: XNNPACK's process-wide state must not be unmapped under a later
   * backend; dlopen counts references anyway */
  free(backend->context);
  free(backend);
}

void dynrt_litert_set_verbose(int verbose) { g_verbose = verbose != 0; }

/* A TFLite flatbuffer: a root offset inside the file, then the file identifier "TFL3". */
static int looks_like_tflite(const void* model, size_t bytes, char* message, size_t capacity) {
  const unsigned char* data = (const unsigned char*)model;
  uint32_t root;
  if (bytes < 16) {
    dynrt_backend_message(message, capacity, "model.tflite: %zu bytes is too short for a TFLite model", bytes);
    return 0;
  }
  if (memcmp(data + 4, "TFL3", 4) != 0) {
    dynrt_backend_message(message, capacity, "model.tflite: no TFLite file identifier (bytes 4..7 are not \"TFL3\"): "
                          "not a .tflite model");
    return 0;
  }
  root = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24;
  if (root < 8 || root >= bytes) {
    dynrt_backend_message(message, capacity,
                          "model.tflite: root table offset %u is outside the file's %zu bytes (truncated?)", root,
                          bytes);
    return 0;
  }
  return 1;
}

dynrt_status dynrt_litert_backend_create(const void* model, size_t model_bytes, const dynrt_backend_options* options,
                                         char* error_message, size_t error_capacity, dynrt_backend_t* backend_out) {
  adapter* a;
  struct dynrt_backend* backend;
  uint32_t threads = 0;
  if (backend_out != NULL) *backend_out = NULL;
  if (model == NULL || model_bytes == 0 || backend_out == NULL) {
    dynrt_backend_message(error_message, error_capacity, "litert backend: no model bytes or no output pointer");
    return DYNRT_INVALID_ARGUMENT;
  }
  if (options != NULL) {
    if (options->struct_size < sizeof(size_t) + sizeof(uint32_t)) {
      dynrt_backend_message(error_message, error_capacity, "litert backend: options.struct_size %zu is too small",
                            options->struct_size);
      return DYNRT_INVALID_ARGUMENT;
    }
    threads = options->threads;
  }
  if (!looks_like_tflite(model, model_bytes, error_message, error_capacity)) return DYNRT_BACKEND_ERROR;
  a = (adapter*)calloc(1, sizeof *a);
  backend = (struct dynrt_backend*)calloc(1, sizeof *backend);
  if (a == NULL || backend == NULL) {
    free(a);
    free(backend);
    dynrt_backend_message(error_message, error_capacity, "litert backend: out of memory");
    return DYNRT_OUT_OF_MEMORY;
  }
  a->threads = threads;
  a->model = model;
  a->model_bytes = model_bytes;
  a->library = open_library(error_message, error_capacity, a->library_path, sizeof a->library_path);
  if (a->library == NULL || resolve_api(a, error_message, error_capacity) != 0) {
    free(a);
    free(backend);
    return DYNRT_BACKEND_ERROR;
  }
  backend->api_version = DYNRT_BACKEND_API_VERSION;
  backend->name = kBackendName;
  backend->artifact = model;
  backend->artifact_bytes = model_bytes;
  /* LiteRT refuses host memory that is not 64-byte aligned (16: status 3) */
  backend->buffer_alignment = 64;
  backend->prepare_session = vt_prepare_session;
  backend->prepare_segment = vt_prepare_segment;
  backend->run_segment = vt_run_segment;
  backend->release_session = vt_release_session;
  backend->destroy = vt_destroy;
  backend->context = a;
  *backend_out = backend;
  return DYNRT_OK;
}

uint32_t dynrt_litert_thread_count(dynrt_backend_t backend) {
  if (backend == NULL || backend->destroy != vt_destroy || backend->context == NULL) return 0;
  return ((const adapter*)backend->context)->threads;
}
