/* The ONNX Runtime backend adapter (dynrt_onnxruntime.h), backend API v2.
 *
 * create:          dlopen the library, check its C API version, read the pack's directory
 *                  (bounds-checked), make the env and the session options every segment uses.
 * prepare_session: a session state with one slot per plan segment.
 * prepare_segment: find the segment's model in the pack, make its ORT session, check its
 *                  signature against the plan's operands, bind the runtime's buffers as tensors.
 * run_segment:     Run with the tensors bound for this batch (made on a segment's first call
 *                  with that batch, then reused: the runtime's buffers do not move).
 *
 * Invariant: the backend context is read-only after create (sessions on other threads share
 * it); everything a session makes lives in its state and is freed by release_session.
 */
#include "dynrt_onnxruntime.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynrt_backend_impl.h"
#include "dynrt_onnxruntime_pack.h"
#include "onnxruntime_c_api.h"

#ifndef DYNRT_ONNXRUNTIME_DEFAULT_LIBRARY
#define DYNRT_ONNXRUNTIME_DEFAULT_LIBRARY ""
#endif

static const char kBackendName[] = "onnxruntime";
static int g_verbose = 0;

typedef struct adapter {
  void* library;
  const OrtApi* api;
  OrtEnv* env;
  OrtSessionOptions* options;
  OrtMemoryInfo* memory;
  dynrt_onnxpack_entry* entries;
  uint32_t entry_count;
  uint32_t threads;
} adapter;

/* One segment of one session. values: (inputs + outputs) OrtValues per batch, slot b-1 for
 * batch b (one slot for a non-tile segment), NULL until first needed. */
typedef struct segment_state {
  OrtSession* session;
  uint32_t max_batch;
  uint32_t input_count, output_count;
  char** input_names;
  char** output_names;
  dynrt_operand_info* operands;  /* inputs then outputs, as the plan gave them */
  void** buffers;                /* the bound buffers, inputs then outputs */
  OrtValue** values;             /* batches * (input_count + output_count) */
  uint32_t batches;
} segment_state;

typedef struct session_state {
  uint32_t segment_count;
  segment_state* segments;
} session_state;

/* Takes ORT's status: NULL is success; otherwise its message into `message` after `what`. */
static int ort_failed(const OrtApi* api, OrtStatus* status, char* message, size_t capacity, const char* what) {
  if (status == NULL) return 0;
  dynrt_backend_message(message, capacity, "%s: %s", what, api->GetErrorMessage(status));
  api->ReleaseStatus(status);
  return 1;
}

/* --- loading the library --------------------------------------------------------------------- */

typedef const OrtApiBase*(ORT_API_CALL* get_api_base_fn)(void);

static void* open_library(char* message, size_t capacity, char* chosen, size_t chosen_capacity) {
  const char* candidates[3];
  candidates[0] = getenv("DYNRT_ONNXRUNTIME_LIBRARY");
  candidates[1] = DYNRT_ONNXRUNTIME_DEFAULT_LIBRARY;
  candidates[2] = "libonnxruntime.so.1";
  return dynrt_open_runtime_library("ONNX Runtime", candidates, 3,
                                    "set DYNRT_ONNXRUNTIME_LIBRARY to the path of libonnxruntime.so "
                                    "(the onnxruntime wheel's onnxruntime/capi/libonnxruntime.so.*)",
                                    chosen, chosen_capacity, message, capacity);
}

/* --- the backend ----------------------------------------------------------------------------- */

static void free_adapter(adapter* a) {
  if (a == NULL) return;
  if (a->api != NULL) {
    if (a->memory != NULL) a->api->ReleaseMemoryInfo(a->memory);
    if (a->options != NULL) a->api->ReleaseSessionOptions(a->options);
    if (a->env != NULL) a->api->ReleaseEnv(a->env);
  }
  /* the library stays loaded: ORT's process-wide state (its env, thread pools' TLS) must not
   * be unmapped under a later backend; dlopen counts references anyway */
  free(a->entries);
  free(a);
}

static void release_segment(const OrtApi* api, segment_state* s) {
  uint32_t i, values = s->batches * (s->input_count + s->output_count);
  if (s->values != NULL)
    for (i = 0; i < values; ++i)
      if (s->values[i] != NULL) api->ReleaseValue(s->values[i]);
  if (s->input_names != NULL)
    for (i = 0; i < s->input_count; ++i) free(s->input_names[i]);
  if (s->output_names != NULL)
    for (i = 0; i < s->output_count; ++i) free(s->output_names[i]);
  if (s->session != NULL) api->ReleaseSession(s->session);
  free(s->values);
  free(s->input_names);
  free(s->output_names);
  free(s->operands);
  free(s->buffers);
  memset(s, 0, sizeof *s);
}

static void vt_release_session(void* context, void* state_pointer) {
  const adapter* a = (const adapter*)context;
  session_state* state = (session_state*)state_pointer;
  uint32_t i;
  if (state == NULL) return;
  for (i = 0; i < state->segment_count; ++i) release_segment(a->api, &state->segments[i]);
  free(state->segments);
  free(state);
}

static dynrt_status vt_prepare_session(void* context, const dynrt_plan_info* plan, void** state_out, char* message,
                                       size_t capacity) {
  session_state* state;
  (void)context;
  *state_out = NULL;
  state = (session_state*)calloc(1, sizeof *state);
  if (state == NULL || (plan->segment_count > 0 &&
                        (state->segments = (segment_state*)calloc(plan->segment_count, sizeof *state->segments)) == NULL)) {
    free(state);
    dynrt_backend_message(message, capacity, "out of memory for %u segment states", plan->segment_count);
    return DYNRT_OUT_OF_MEMORY;
  }
  state->segment_count = plan->segment_count;
  *state_out = state;
  return DYNRT_OK;
}

static ONNXTensorElementDataType element_type(uint32_t dtype) {
  return dtype == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
         : dtype == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

/* The model's operand `index` (input or output) against the plan's; 0 when they agree. */
static int check_operand(const adapter* a, OrtSession* session, int is_input, uint32_t index,
                         const dynrt_operand_info* info, int batched, const char* segment, char* message,
                         size_t capacity) {
  const OrtApi* api = a->api;
  OrtTypeInfo* type = NULL;
  const OrtTensorTypeAndShapeInfo* tensor = NULL;
  ONNXTensorElementDataType element = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t rank = 0, d;
  int64_t dims[8];
  char plan_text[DYNRT_DIMS_TEXT_CAPACITY], model_text[160];
  int mismatch = 0, used = 0;
  const char* role = is_input ? "input" : "output";
  OrtStatus* status = is_input ? api->SessionGetInputTypeInfo(session, index, &type)
                               : api->SessionGetOutputTypeInfo(session, index, &type);
  if (ort_failed(api, status, message, capacity, "reading a segment's signature")) return 1;
  if (ort_failed(api, api->CastTypeInfoToTensorInfo(type, &tensor), message, capacity, "reading a segment's signature") ||
      tensor == NULL) {
    if (tensor == NULL) dynrt_backend_message(message, capacity, "segment %s: %s %u is not a tensor", segment, role,
                                              index);
    api->ReleaseTypeInfo(type);
    return 1;
  }
  if (ort_failed(api, api->GetTensorElementType(tensor, &element), message, capacity, "reading an element type") ||
      ort_failed(api, api->GetDimensionsCount(tensor, &rank), message, capacity, "reading a rank")) {
    api->ReleaseTypeInfo(type);
    return 1;
  }
  if (rank > 8 || ort_failed(api, api->GetDimensions(tensor, dims, rank), message, capacity, "reading dims")) {
    if (rank > 8) dynrt_backend_message(message, capacity, "segment %s: %s %u has rank %zu", segment, role, index,
                                        rank);
    api->ReleaseTypeInfo(type);
    return 1;
  }
  api->ReleaseTypeInfo(type);
  mismatch = element != element_type(info->dtype) || rank != info->rank;
  for (d = 0; !mismatch && d < rank; ++d) {
    if (d == 0 && batched) mismatch = !(dims[0] == -1 || dims[0] == (int64_t)info->dims[0]);
    else mismatch = dims[d] != (int64_t)info->dims[d];
  }
  if (!mismatch) return 0;
  model_text[0] = '\0';
  for (d = 0; d < rank && used >= 0 && (size_t)used < sizeof model_text; ++d)
    used += snprintf(model_text + used, sizeof model_text - (size_t)used, "%s%lld", d ? ", " : "[",
                     (long long)dims[d]);
  if (used >= 0 && (size_t)used < sizeof model_text) snprintf(model_text + used, sizeof model_text - (size_t)used, "]");
  dynrt_backend_message(message, capacity,
                        "segment %s: %s %u is %s %s in the plan but the ONNX model's is element type %d dims %s "
                        "(-1: symbolic); rebuild so the plan and model.onnxpack come from one build", segment, role,
                        index, dynrt_dtype_name(info->dtype),
                        dynrt_format_operand_dims(plan_text, sizeof plan_text, info, batched), (int)element,
                        rank ? model_text : "[]");
  return 1;
}

static char* copy_name(const OrtApi* api, OrtSession* session, int is_input, uint32_t index, OrtAllocator* allocator,
                       char* message, size_t capacity) {
  char* name = NULL;
  char* copy;
  OrtStatus* status = is_input ? api->SessionGetInputName(session, index, allocator, &name)
                               : api->SessionGetOutputName(session, index, allocator, &name);
  if (ort_failed(api, status, message, capacity, "reading an operand name")) return NULL;
  copy = (char*)malloc(strlen(name) + 1);
  if (copy != NULL) strcpy(copy, name);
  else dynrt_backend_message(message, capacity, "out of memory for an operand name");
  status = api->AllocatorFree(allocator, name);
  if (status != NULL) api->ReleaseStatus(status);  /* the name is copied: nothing to undo */
  return copy;
}

static const dynrt_onnxpack_entry* find_entry(const adapter* a, const char* name) {
  size_t length = strlen(name);
  uint32_t i;
  for (i = 0; i < a->entry_count; ++i)
    if (a->entries[i].name_bytes == length && memcmp(a->entries[i].name, name, length) == 0) return &a->entries[i];
  return NULL;
}

static dynrt_status vt_prepare_segment(void* context, void* state_pointer, uint32_t index,
                                       const dynrt_segment_info* info, char* message, size_t capacity) {
  const adapter* a = (const adapter*)context;
  const OrtApi* api = a->api;
  session_state* state = (session_state*)state_pointer;
  segment_state* s;
  const dynrt_onnxpack_entry* entry;
  OrtAllocator* allocator = NULL;
  size_t model_inputs = 0, model_outputs = 0;
  uint32_t i, operands;
  if (state == NULL || index >= state->segment_count) return DYNRT_INVALID_ARGUMENT;
  s = &state->segments[index];
  entry = find_entry(a, info->name);
  if (entry == NULL) {
    dynrt_backend_message(message, capacity, "model.onnxpack has no model for segment '%s' (it has %u segments)",
                          info->name, a->entry_count);
    return DYNRT_SEGMENT_MISMATCH;
  }
  if (ort_failed(api, api->CreateSessionFromArray(a->env, entry->model, entry->model_bytes, a->options, &s->session),
                 message, capacity, "ONNX Runtime cannot load the segment's model")) {
    size_t used = strlen(message);
    if (used + 1 < capacity) snprintf(message + used, capacity - used, " (segment %s)", info->name);
    return DYNRT_SEGMENT_MISMATCH;
  }
  if (ort_failed(api, api->SessionGetInputCount(s->session, &model_inputs), message, capacity, "input count") ||
      ort_failed(api, api->SessionGetOutputCount(s->session, &model_outputs), message, capacity, "output count"))
    return DYNRT_BACKEND_ERROR;
  if (model_inputs != info->input_count || model_outputs != info->output_count) {
    dynrt_backend_message(message, capacity,
                          "segment %s: the plan has %u inputs and %u outputs, its ONNX model %zu and %zu", info->name,
                          info->input_count, info->output_count, model_inputs, model_outputs);
    return DYNRT_SEGMENT_MISMATCH;
  }
  s->max_batch = info->max_batch;
  s->input_count = info->input_count;
  s->output_count = info->output_count;
  operands = s->input_count + s->output_count;
  s->batches = info->max_batch > 0 ? info->max_batch : 1;
  s->input_names = (char**)calloc(s->input_count ? s->input_count : 1, sizeof(char*));
  s->output_names = (char**)calloc(s->output_count ? s->output_count : 1, sizeof(char*));
  s->operands = (dynrt_operand_info*)calloc(operands ? operands : 1, sizeof(dynrt_operand_info));
  s->buffers = (void**)calloc(operands ? operands : 1, sizeof(void*));
  s->values = (OrtValue**)calloc((size_t)s->batches * (operands ? operands : 1), sizeof(OrtValue*));
  if (!s->input_names || !s->output_names || !s->operands || !s->buffers || !s->values) {
    dynrt_backend_message(message, capacity, "out of memory preparing segment %s", info->name);
    return DYNRT_OUT_OF_MEMORY;
  }
  for (i = 0; i < operands; ++i) {
    int is_input = i < s->input_count;
    uint32_t k = is_input ? i : i - s->input_count;
    const dynrt_operand_info* operand = is_input ? &info->inputs[k] : &info->outputs[k];
    if (operand->rank < 1 || operand->rank > 4 || element_type(operand->dtype) == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) {
      dynrt_backend_message(message, capacity,
                            "segment %s: operand %u has rank %u dtype %u, which this adapter does not bind", info->name,
                            i, operand->rank, operand->dtype);
      return DYNRT_SEGMENT_MISMATCH;
    }
    if (check_operand(a, s->session, is_input, k, operand, info->max_batch > 0 && k == 0, info->name, message, capacity))
      return DYNRT_SEGMENT_MISMATCH;
    s->operands[i] = *operand;
    s->buffers[i] = is_input ? info->input_buffers[k] : info->output_buffers[k];
  }
  if (ort_failed(api, api->GetAllocatorWithDefaultOptions(&allocator), message, capacity, "ORT's allocator"))
    return DYNRT_BACKEND_ERROR;
  for (i = 0; i < s->input_count; ++i)
    if ((s->input_names[i] = copy_name(api, s->session, 1, i, allocator, message, capacity)) == NULL)
      return DYNRT_BACKEND_ERROR;
  for (i = 0; i < s->output_count; ++i)
    if ((s->output_names[i] = copy_name(api, s->session, 0, i, allocator, message, capacity)) == NULL)
      return DYNRT_BACKEND_ERROR;
  return DYNRT_OK;
}

/* An ORT tensor over `buffer` with the operand's dims (the leading one `batch` when batched). */
static OrtStatus* make_value(const adapter* a, const dynrt_operand_info* operand, void* buffer, int batched,
                             uint32_t batch, OrtValue** out) {
  int64_t shape[4];
  size_t elements = 1;
  uint32_t d;
  for (d = 0; d < operand->rank; ++d) {
    shape[d] = (int64_t)(d == 0 && batched ? batch : operand->dims[d]);
    elements *= (size_t)shape[d];
  }
  return a->api->CreateTensorWithDataAsOrtValue(a->memory, buffer, elements * 4u, shape, operand->rank,
                                                element_type(operand->dtype), out);
}

static dynrt_status vt_run_segment(void* context, void* state_pointer, uint32_t index, uint32_t batch,
                                   void* const* inputs, void* const* outputs) {
  const adapter* a = (const adapter*)context;
  const OrtApi* api = a->api;
  session_state* state = (session_state*)state_pointer;
  segment_state* s;
  OrtValue** values;
  OrtValue* scratch[64];
  uint32_t i, operands;
  int temporary = 0;
  OrtStatus* status;
  if (state == NULL || index >= state->segment_count || state->segments[index].session == NULL)
    return DYNRT_INVALID_ARGUMENT;
  s = &state->segments[index];
  if (s->max_batch > 0 ? (batch < 1 || batch > s->max_batch) : batch != 1) return DYNRT_INVALID_ARGUMENT;
  operands = s->input_count + s->output_count;
  values = s->values + (size_t)(batch - 1) * operands;
  for (i = 0; i < operands; ++i) {
    void* buffer = i < s->input_count ? inputs[i] : outputs[i - s->input_count];
    if (buffer != s->buffers[i]) temporary = 1;  /* not the bound buffers: tensors for this call only */
  }
  if (temporary) {
    if (operands > sizeof scratch / sizeof scratch[0]) return DYNRT_INVALID_ARGUMENT;
    memset(scratch, 0, sizeof scratch);
    values = scratch;
  }
  for (i = 0; i < operands; ++i) {
    if (values[i] == NULL) {
      int is_input = i < s->input_count;
      uint32_t k = is_input ? i : i - s->input_count;
      void* buffer = is_input ? inputs[k] : outputs[k];
      status = make_value(a, &s->operands[i], buffer, s->max_batch > 0 && k == 0, batch, &values[i]);
      if (status != NULL) {
        api->ReleaseStatus(status);
        goto fail;
      }
    }
  }
  status = api->Run(s->session, NULL, (const char* const*)s->input_names, (const OrtValue* const*)values,
                    s->input_count, (const char* const*)s->output_names, s->output_count, values + s->input_count);
  if (status != NULL) {
    if (g_verbose) fprintf(stderr, "onnxruntime: segment %u: %s\n", index, api->GetErrorMessage(status));
    api->ReleaseStatus(status);
    goto fail;
  }
  if (temporary)
    for (i = 0; i < operands; ++i) api->ReleaseValue(scratch[i]);
  return DYNRT_OK;
fail:
  if (temporary)
    for (i = 0; i < operands; ++i)
      if (scratch[i] != NULL) api->ReleaseValue(scratch[i]);
  return DYNRT_BACKEND_ERROR;
}

static void vt_destroy(struct dynrt_backend* backend) {
  if (backend == NULL) return;
  free_adapter((adapter*)backend->context);
  free(backend);
}

void dynrt_onnxruntime_set_verbose(int verbose) { g_verbose = verbose != 0; }

dynrt_status dynrt_onnxruntime_backend_create(const void* pack, size_t pack_bytes, const dynrt_backend_options* options,
                                              char* error_message, size_t error_capacity, dynrt_backend_t* backend_out) {
  adapter* a;
  struct dynrt_backend* backend;
  get_api_base_fn get_api_base;
  const OrtApiBase* base;
  char path[512] = "";
  uint32_t threads = 0;
  if (backend_out != NULL) *backend_out = NULL;
  if (pack == NULL || pack_bytes == 0 || backend_out == NULL) {
    dynrt_backend_message(error_message, error_capacity, "onnxruntime backend: no pack bytes or no output pointer");
    return DYNRT_INVALID_ARGUMENT;
  }
  if (options != NULL) {
    if (options->struct_size < sizeof(size_t) + sizeof(uint32_t)) {
      dynrt_backend_message(error_message, error_capacity, "onnxruntime backend: options.struct_size %zu is too small",
                            options->struct_size);
      return DYNRT_INVALID_ARGUMENT;
    }
    threads = options->threads;
  }
  a = (adapter*)calloc(1, sizeof *a);
  backend = (struct dynrt_backend*)calloc(1, sizeof *backend);
  if (a == NULL || backend == NULL) {
    free(a);
    free(backend);
    dynrt_backend_message(error_message, error_capacity, "onnxruntime backend: out of memory");
    return DYNRT_OUT_OF_MEMORY;
  }
  a->threads = threads;
  if (dynrt_onnxpack_read(pack, pack_bytes, &a->entries, &a->entry_count, error_message, error_capacity) != 0)
    goto fail;
  a->library = open_library(error_message, error_capacity, path, sizeof path);
  if (a->library == NULL) goto fail;
  *(void**)(&get_api_base) = dlsym(a->library, "OrtGetApiBase");
  if (get_api_base == NULL || (base = get_api_base()) == NULL) {
    dynrt_backend_message(error_message, error_capacity, "%s has no OrtGetApiBase: not an ONNX Runtime library", path);
    goto fail;
  }
  a->api = base->GetApi(ORT_API_VERSION);
  if (a->api == NULL) {
    dynrt_backend_message(error_message, error_capacity,
                          "ONNX Runtime %s at %s does not serve C API version %d (this adapter was compiled with "
                          "the header of API %d): use onnxruntime >= 1.%d", base->GetVersionString(), path,
                          ORT_API_VERSION, ORT_API_VERSION, ORT_API_VERSION);
    goto fail;
  }
  {
    const OrtApi* api = a->api;
    char threads_text[16];
    OrtLoggingLevel level = g_verbose ? ORT_LOGGING_LEVEL_INFO : ORT_LOGGING_LEVEL_WARNING;
    snprintf(threads_text, sizeof threads_text, "%u", threads);
    if (ort_failed(api, api->CreateEnv(level, "dynrt", &a->env), error_message, error_capacity, "OrtEnv") ||
        ort_failed(api, api->CreateSessionOptions(&a->options), error_message, error_capacity, "session options") ||
        ort_failed(api, api->SetIntraOpNumThreads(a->options, (int)threads), error_message, error_capacity,
                   "intra-op threads") ||
        ort_failed(api, api->SetInterOpNumThreads(a->options, 1), error_message, error_capacity, "inter-op threads") ||
        ort_failed(api, api->SetSessionExecutionMode(a->options, ORT_SEQUENTIAL), error_message, error_capacity,
                   "execution mode") ||
        ort_failed(api, api->SetSessionGraphOptimizationLevel(a->options, ORT_ENABLE_ALL), error_message,
                   error_capacity, "optimization level") ||
        (threads != 1 &&
         ort_failed(api, api->AddSessionConfigEntry(a->options, "session.intra_op.allow_spinning", "0"), error_message,
                    error_capacity, "thread spinning")) ||
        ort_failed(api, api->CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &a->memory), error_message,
                   error_capacity, "memory info"))
      goto fail;
  }
  backend->api_version = DYNRT_BACKEND_API_VERSION;
  backend->name = kBackendName;
  backend->artifact = pack;
  backend->artifact_bytes = pack_bytes;
  backend->prepare_session = vt_prepare_session;
  backend->prepare_segment = vt_prepare_segment;
  backend->run_segment = vt_run_segment;
  backend->release_session = vt_release_session;
  backend->destroy = vt_destroy;
  backend->context = a;
  *backend_out = backend;
  return DYNRT_OK;
fail:
  free_adapter(a);
  free(backend);
  return DYNRT_BACKEND_ERROR;
}

uint32_t dynrt_onnxruntime_thread_count(dynrt_backend_t backend) {
  if (backend == NULL || backend->destroy != vt_destroy || backend->context == NULL) return 0;
  return ((const adapter*)backend->context)->threads;
}
