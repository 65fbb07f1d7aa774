/* The callback backend (dynrt_callback.h): each segment call is forwarded to a function.
 * It prepares nothing, so its sessions need no state of their own (NULL): the function
 * tells sessions apart by their buffers, which differ per session. */
#include <stdlib.h>

#include "dynrt_backend_impl.h"
#include "dynrt_callback.h"

typedef struct callback_backend {
  struct dynrt_backend backend;  /* first: the dynrt_backend_t handed out points here */
  dynrt_segment_callback run;
  void* user_data;
} callback_backend;

static dynrt_status prepare_segment(void* context, void* session_state, uint32_t segment,
                                    const dynrt_segment_info* info, char* message, size_t message_capacity) {
  (void)context;
  (void)session_state;
  (void)segment;
  (void)info;
  (void)message;
  (void)message_capacity;
  return DYNRT_OK; /* the callback knows its segments; nothing to look up */
}

static dynrt_status run_segment(void* context, void* session_state, uint32_t segment, uint32_t batch,
                                void* const* inputs, void* const* outputs) {
  const callback_backend* self = (const callback_backend*)context;
  (void)session_state;
  return self->run(self->user_data, segment, batch, inputs, outputs) == 0 ? DYNRT_OK : DYNRT_BACKEND_ERROR;
}

static void destroy(struct dynrt_backend* backend) {
  free(backend); /* the callback_backend that starts with it */
}

dynrt_status dynrt_callback_backend_create(dynrt_segment_callback run, void* user_data, dynrt_backend_t* backend_out) {
  callback_backend* self;
  if (backend_out == NULL) return DYNRT_INVALID_ARGUMENT;
  *backend_out = NULL;
  if (run == NULL) return DYNRT_INVALID_ARGUMENT;
  self = (callback_backend*)calloc(1, sizeof *self);
  if (self == NULL) return DYNRT_OUT_OF_MEMORY;
  self->run = run;
  self->user_data = user_data;
  self->backend.api_version = DYNRT_BACKEND_API_VERSION;
  self->backend.name = "callback";
  self->backend.context = self;
  self->backend.artifact = NULL;
  self->backend.artifact_bytes = 0;
  self->backend.buffer_alignment = 0;   /* the defaults: 64-byte aligned, no tail */
  self->backend.buffer_tail_bytes = 0;
  self->backend.prepare_session = NULL;
  self->backend.prepare_segment = prepare_segment;
  self->backend.run_segment = run_segment;
  self->backend.release_session = NULL;
  self->backend.destroy = destroy;
  *backend_out = &self->backend;
  return DYNRT_OK;
}
