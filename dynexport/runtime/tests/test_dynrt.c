/*
 * C tests of the dynrt core, run on real plan files (tests/runtime writes them):
 *
 *     dynrt_test PLAN...            every test on every plan; exit 1 on any failure
 *     dynrt_test --bench PLAN       the runtime's own time per frame (gates, copies), with a
 *                                   backend that costs almost nothing
 *
 * Segments run in a built-in test backend whose outputs are a fixed function of the
 * segment's first input, so two sessions fed the same frames must agree bit for bit.
 * Allocations are counted by wrapping malloc/calloc/realloc/free at link time
 * (-Wl,--wrap=...), which is how the no-allocation-after-create rule is checked.
 *
 * A plan that carries an artifact record named "dynrt_test" for the bytes of TEST_ARTIFACT
 * also gets the artifact checks.
 */
#include <math.h> /* NAN */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32.h"
#include "dynrt.h"
#include "dynrt_backend_impl.h"
#include "dynrt_callback.h"

/* ---- allocation counting ------------------------------------------------------------ */

void* __real_malloc(size_t size);
void* __real_calloc(size_t count, size_t size);
void* __real_realloc(void* pointer, size_t size);
void __real_free(void* pointer);
void* __wrap_malloc(size_t size);
void* __wrap_calloc(size_t count, size_t size);
void* __wrap_realloc(void* pointer, size_t size);
void __wrap_free(void* pointer);

static unsigned long allocator_calls; /* every malloc, calloc, realloc and free of non-NULL */

void* __wrap_malloc(size_t size) {
  ++allocator_calls;
  return __real_malloc(size);
}
void* __wrap_calloc(size_t count, size_t size) {
  ++allocator_calls;
  return __real_calloc(count, size);
}
void* __wrap_realloc(void* pointer, size_t size) {
  ++allocator_calls;
  return __real_realloc(pointer, size);
}
void __wrap_free(void* pointer) {
  if (pointer != NULL) ++allocator_calls;
  __real_free(pointer);
}

/* ---- checks --------------------------------------------------------------------------- */

static unsigned long checks_run, checks_failed;
static const char* current_plan = "";

#define CHECK(condition, ...)                                                              \
  do {                                                                                     \
    ++checks_run;                                                                          \
    if (!(condition)) {                                                                    \
      ++checks_failed;                                                                     \
      fprintf(stderr, "FAIL %s:%d [%s] %s: ", __FILE__, __LINE__, current_plan, #condition); \
      fprintf(stderr, __VA_ARGS__);                                                        \
      fputc('\n', stderr);                                                                 \
    }                                                                                      \
  } while (0)

static int is_plan_status(dynrt_status status) {
  return status >= DYNRT_PLAN_TRUNCATED && status <= DYNRT_ARTIFACT_MISMATCH;
}

/* ---- the test backend ----------------------------------------------------------------- */

#define TEST_MAX_SEGMENTS 1024
#define TEST_MAX_OPERANDS 16
static const char TEST_ARTIFACT[] = "dynrt test artifact v1";

typedef struct operand_shape {
  size_t elements_per_item; /* elements / dims[0] for the batch operand of a tile segment */
  size_t elements;
  uint32_t dtype;
} operand_shape;

typedef struct test_segment {
  uint32_t max_batch, input_count, output_count;
  operand_shape inputs[TEST_MAX_OPERANDS], outputs[TEST_MAX_OPERANDS];
  void* input_buffers[TEST_MAX_OPERANDS];  /* as prepared: run_segment must get the same */
  void* output_buffers[TEST_MAX_OPERANDS];
} test_segment;

/* What one session prepared (prepare_session .. release_session). The backend's own
 * allocations go around the counting wrappers: the tests count the runtime's. */
typedef struct test_session_state {
  uint32_t segment_count, prepared;
  test_segment* segments;
} test_session_state;

typedef struct test_backend {
  struct dynrt_backend base;  /* first: the dynrt_backend_t points here */
  long fail_on_call;          /* run_segment call number that fails (-1: none) */
  long calls;
  long live_states;           /* prepare_session minus release_session */
  long foreign_buffers;       /* run_segment calls with buffers other than the state's segment prepared */
  long misaligned;            /* buffers not at the backend's alignment, or tail bytes not zero */
} test_backend;

static operand_shape shape_of(const dynrt_operand_info* info) {
  operand_shape shape;
  uint32_t d;
  shape.elements = 1;
  for (d = 0; d < info->rank; ++d) shape.elements *= info->dims[d];
  shape.elements_per_item = info->rank > 0 && info->dims[0] > 0 ? shape.elements / info->dims[0] : shape.elements;
  shape.dtype = info->dtype;
  return shape;
}

static dynrt_status test_prepare_session(void* context, const dynrt_plan_info* plan, void** state_out, char* message,
                                         size_t capacity) {
  test_backend* self = (test_backend*)context;
  test_session_state* state;
  if (plan->segment_count > TEST_MAX_SEGMENTS) {
    snprintf(message, capacity, "the test backend takes at most %d segments", TEST_MAX_SEGMENTS);
    return DYNRT_SEGMENT_MISMATCH;
  }
  state = (test_session_state*)__real_calloc(1, sizeof *state);
  if (state == NULL) return DYNRT_OUT_OF_MEMORY;
  state->segment_count = plan->segment_count;
  state->segments = (test_segment*)__real_calloc(plan->segment_count > 0 ? plan->segment_count : 1, sizeof(test_segment));
  if (state->segments == NULL) {
    __real_free(state);
    return DYNRT_OUT_OF_MEMORY;
  }
  self->live_states += 1;
  *state_out = state;
  return DYNRT_OK;
}

static void test_release_session(void* context, void* session_state) {
  test_backend* self = (test_backend*)context;
  test_session_state* state = (test_session_state*)session_state;
  self->live_states -= 1;
  __real_free(state->segments);
  __real_free(state);
}

/* Whether `buffer` sits at the backend's alignment and its tail bytes read zero. */
static int buffer_as_asked(const test_backend* self, const void* buffer, const operand_shape* shape) {
  const size_t alignment = self->base.buffer_alignment > 64 ? self->base.buffer_alignment : 64;
  const unsigned char* tail = (const unsigned char*)buffer + shape->elements * 4;
  size_t i;
  if ((uintptr_t)buffer % alignment != 0) return 0;
  for (i = 0; i < self->base.buffer_tail_bytes; ++i) {
    if (tail[i] != 0) return 0;
  }
  return 1;
}

static dynrt_status test_prepare(void* context, void* session_state, uint32_t segment, const dynrt_segment_info* info,
                                 char* message, size_t capacity) {
  test_backend* self = (test_backend*)context;
  test_session_state* state = (test_session_state*)session_state;
  test_segment* s;
  uint32_t k;
  if (state == NULL || segment >= state->segment_count || segment != state->prepared ||
      info->input_count > TEST_MAX_OPERANDS || info->output_count > TEST_MAX_OPERANDS) {
    snprintf(message, capacity, "segment %lu: not the next of this session's %lu, or more than %d operands",
             (unsigned long)segment, state != NULL ? (unsigned long)state->segment_count : 0ul, TEST_MAX_OPERANDS);
    return DYNRT_SEGMENT_MISMATCH;
  }
  state->prepared += 1;
  s = &state->segments[segment];
  s->max_batch = info->max_batch;
  s->input_count = info->input_count;
  s->output_count = info->output_count;
  for (k = 0; k < info->input_count; ++k) {
    s->inputs[k] = shape_of(&info->inputs[k]);
    s->input_buffers[k] = info->input_buffers[k];
    if (!buffer_as_asked(self, info->input_buffers[k], &s->inputs[k])) self->misaligned += 1;
    if (info->inputs[k].layout != (info->inputs[k].rank == 4 ? DYNRT_LAYOUT_NHWC : DYNRT_LAYOUT_ROW_MAJOR)) {
      self->misaligned += 1; /* the plans written here keep 4-D tensors NHWC, the rest row-major */
    }
  }
  for (k = 0; k < info->output_count; ++k) {
    s->outputs[k] = shape_of(&info->outputs[k]);
    s->output_buffers[k] = info->output_buffers[k];
    if (!buffer_as_asked(self, info->output_buffers[k], &s->outputs[k])) self->misaligned += 1;
  }
  return DYNRT_OK;
}

/* output[i] = 0.5 * input0[i mod n] + 0.01 * (output index + 1): deterministic and bounded. */
static dynrt_status test_run(void* context, void* session_state, uint32_t segment, uint32_t batch, void* const* inputs,
                             void* const* outputs) {
  test_backend* self = (test_backend*)context;
  const test_session_state* state = (const test_session_state*)session_state;
  const test_segment* s;
  const float* source = NULL;
  size_t source_count = 0, i;
  uint32_t o, k;
  if (self->fail_on_call >= 0 && self->calls++ == self->fail_on_call) return DYNRT_BACKEND_ERROR;
  if (state == NULL || segment >= state->prepared) return DYNRT_INVALID_ARGUMENT;
  s = &state->segments[segment];
  for (k = 0; k < s->input_count; ++k) {
    if (inputs[k] != s->input_buffers[k]) self->foreign_buffers += 1;
  }
  for (k = 0; k < s->output_count; ++k) {
    if (outputs[k] != s->output_buffers[k]) self->foreign_buffers += 1;
  }
  if (s->input_count > 0 && s->inputs[0].dtype == 0) {
    source = (const float*)inputs[0];
    source_count = s->max_batch > 0 ? batch * s->inputs[0].elements_per_item : s->inputs[0].elements;
  }
  for (o = 0; o < s->output_count; ++o) {
    const size_t count = s->max_batch > 0 && o == 0 ? batch * s->outputs[0].elements_per_item : s->outputs[o].elements;
    if (s->outputs[o].dtype != 0) {
      memset(outputs[o], 0, count * 4);
      continue;
    }
    for (i = 0; i < count; ++i) {
      const float value = source_count > 0 ? 0.5f * source[i % source_count] : 0.0f;
      ((float*)outputs[o])[i] = value + 0.01f * (float)(o + 1);
    }
  }
  return DYNRT_OK;
}

static void test_destroy(struct dynrt_backend* backend) {
  const test_backend* self = (const test_backend*)backend;
  CHECK(self->live_states == 0, "backend destroyed with %ld session states not released", self->live_states);
  CHECK(self->foreign_buffers == 0, "%ld segment calls got buffers other than the ones prepared for their session",
        self->foreign_buffers);
  CHECK(self->misaligned == 0, "%ld operands not as the backend asked (alignment, zero tail, layout)",
        self->misaligned);
  free(backend);
}

static test_backend* make_test_backend(const char* name, const void* artifact, size_t artifact_bytes) {
  test_backend* self = (test_backend*)calloc(1, sizeof *self);
  if (self == NULL) {
    fprintf(stderr, "out of memory\n");
    exit(2);
  }
  self->base.api_version = DYNRT_BACKEND_API_VERSION;
  self->base.name = name;
  self->base.context = self;
  self->base.artifact = artifact;
  self->base.artifact_bytes = artifact_bytes;
  self->base.prepare_session = test_prepare_session;
  self->base.prepare_segment = test_prepare;
  self->base.run_segment = test_run;
  self->base.release_session = test_release_session;
  self->base.destroy = test_destroy;
  self->fail_on_call = -1;
  return self;
}

/* ---- plans and frames ------------------------------------------------------------------ */

typedef struct plan_file {
  const char* path;
  unsigned char* bytes;
  size_t size;
} plan_file;

static int read_plan(const char* path, plan_file* plan) {
  FILE* file = fopen(path, "rb");
  long size;
  plan->path = path;
  if (file == NULL || fseek(file, 0, SEEK_END) != 0 || (size = ftell(file)) < 0 || fseek(file, 0, SEEK_SET) != 0) {
    if (file != NULL) fclose(file);
    return 0;
  }
  plan->size = (size_t)size;
  plan->bytes = (unsigned char*)malloc(plan->size + 1);
  if (plan->bytes == NULL || fread(plan->bytes, 1, plan->size, file) != plan->size) {
    fclose(file);
    return 0;
  }
  fclose(file);
  return 1;
}

/* A textured frame with a bright square that moves with t: some blocks change, most not. */
static void make_frame(float* frame, const dynrt_session_info* info, int t) {
  const size_t count = info->input_bytes / 4;
  const size_t height = info->input_rank == 4 ? info->input_dims[1] : 1;
  const size_t width = info->input_rank == 4 ? info->input_dims[2] : count;
  const size_t channels = info->input_rank == 4 ? info->input_dims[3] : 1;
  size_t i;
  for (i = 0; i < count; ++i) {
    const size_t c = i % channels, x = (i / channels) % width, y = (i / channels / width) % (height ? height : 1);
    const size_t square_left = (size_t)(2 * t) % (width + 1);
    const int in_square = x >= square_left && x < square_left + 6 && y >= 3 && y < 9;
    const float texture = (float)((x * 7 + y * 13 + c * 5) % 17) / 17.0f; /* cheap: frames can be large */
    frame[i] = 0.25f + 0.5f * texture + (in_square ? 0.3f : 0.0f);
  }
}

typedef struct session_fixture {
  test_backend* backend;
  dynrt_session_t session;
  dynrt_session_info info;
  float* frame;
  float* output;
} session_fixture;

static int open_fixture(const plan_file* plan, session_fixture* fixture) {
  char why[256];
  dynrt_status status;
  memset(fixture, 0, sizeof *fixture);
  fixture->backend = make_test_backend("dynrt_test", NULL, 0);
  status = dynrt_session_create(plan->bytes, plan->size, &fixture->backend->base, why, sizeof why, &fixture->session);
  CHECK(status == DYNRT_OK, "create failed: %s (%s)", dynrt_status_string(status), why);
  if (status != DYNRT_OK) {
    dynrt_backend_destroy(&fixture->backend->base);
    return 0;
  }
  status = dynrt_session_describe(fixture->session, &fixture->info);
  CHECK(status == DYNRT_OK, "describe: %s", dynrt_status_string(status));
  fixture->frame = (float*)malloc(fixture->info.input_bytes);
  fixture->output = (float*)malloc(fixture->info.output_bytes);
  return fixture->frame != NULL && fixture->output != NULL;
}

static void close_fixture(session_fixture* fixture) {
  dynrt_session_destroy(fixture->session);
  dynrt_backend_destroy(&fixture->backend->base);
  free(fixture->frame);
  free(fixture->output);
}

static dynrt_status step_frame(session_fixture* fixture, int t, dynrt_frame_stats* stats) {
  make_frame(fixture->frame, &fixture->info, t);
  return dynrt_session_step(fixture->session, fixture->frame, fixture->info.input_bytes, fixture->output,
                            fixture->info.output_bytes, stats);
}

/* ---- the tests ---------------------------------------------------------------------------- */

static void test_describe(const plan_file* plan) {
  session_fixture f;
  size_t elements = 1;
  uint32_t d;
  if (!open_fixture(plan, &f)) return;
  for (d = 0; d < f.info.input_rank; ++d) elements *= f.info.input_dims[d];
  CHECK(f.info.input_bytes == 4 * elements, "input bytes %lu for %lu elements", (unsigned long)f.info.input_bytes,
        (unsigned long)elements);
  CHECK(f.info.arena_bytes >= f.info.state_bytes + f.info.input_bytes, "arena %lu smaller than what it holds",
        (unsigned long)f.info.arena_bytes);
  CHECK(strcmp(dynrt_session_last_error(f.session), "") == 0, "fresh session has an error: %s",
        dynrt_session_last_error(f.session));
  for (d = 0; d < f.info.layer_count; ++d) {
    dynrt_layer_info layer;
    CHECK(dynrt_session_describe_layer(f.session, d, &layer) == DYNRT_OK, "describe_layer %lu", (unsigned long)d);
    CHECK(layer.blocks == layer.block_rows * layer.block_cols && layer.blocks > 0 && layer.out_channels > 0,
          "layer %lu: %lu blocks = %lu x %lu, %lu channels", (unsigned long)d, (unsigned long)layer.blocks,
          (unsigned long)layer.block_rows, (unsigned long)layer.block_cols, (unsigned long)layer.out_channels);
    CHECK(layer.name != NULL && layer.name[0] != '\0', "layer %lu has no name", (unsigned long)d);
  }
  {
    dynrt_layer_info layer;
    CHECK(dynrt_session_describe_layer(f.session, f.info.layer_count, &layer) == DYNRT_INVALID_ARGUMENT,
          "describe_layer out of range");
    CHECK(dynrt_session_describe_layer(f.session, 0, NULL) == DYNRT_INVALID_ARGUMENT, "describe_layer into NULL");
  }
  close_fixture(&f);
}

/* dynrt_status_string gives each status of the table its own description, and every other
 * code "unknown status" (never NULL). */
static void test_status_strings(void) {
  static const struct {
    int code;
    const char* description;
  } TABLE[] = {
#define DYNRT_STATUS(name, code, description) {code, description},
#include "dynrt_status.def"
#undef DYNRT_STATUS
  };
  const size_t count = sizeof TABLE / sizeof TABLE[0];
  size_t i, j;
  int code;
  CHECK(count >= 13, "the status table has %lu rows", (unsigned long)count);
  CHECK(strcmp(dynrt_status_string(DYNRT_PLAN_CHECKSUM), "plan checksum mismatch") == 0, "DYNRT_PLAN_CHECKSUM: %s",
        dynrt_status_string(DYNRT_PLAN_CHECKSUM));
  for (i = 0; i < count; ++i) {
    const char* text = dynrt_status_string((dynrt_status)TABLE[i].code);
    CHECK(text != NULL && strcmp(text, TABLE[i].description) == 0, "status %d: '%s', the table says '%s'",
          TABLE[i].code, text != NULL ? text : "(NULL)", TABLE[i].description);
    for (j = 0; j < i; ++j) {
      CHECK(TABLE[j].code != TABLE[i].code && strcmp(TABLE[j].description, TABLE[i].description) != 0,
            "statuses %d and %d share a code or a description", TABLE[j].code, TABLE[i].code);
    }
  }
  for (code = -1; code <= 600; ++code) {
    int listed = 0;
    const char* text = dynrt_status_string((dynrt_status)code);
    for (i = 0; i < count; ++i) listed |= TABLE[i].code == code;
    CHECK(text != NULL && (listed || strcmp(text, "unknown status") == 0), "status %d (not in the table): '%s'", code,
          text != NULL ? text : "(NULL)");
  }
}

static void test_null_arguments(const plan_file* plan) {
  test_backend* backend = make_test_backend("dynrt_test", NULL, 0);
  dynrt_session_t session = (dynrt_session_t)1;
  dynrt_session_info info;
  char why[256];
  session_fixture f;
  uint8_t mask[4];

  CHECK(dynrt_session_create(NULL, plan->size, &backend->base, why, sizeof why, &session) ==
            DYNRT_INVALID_ARGUMENT, "NULL plan");
  CHECK(session == NULL, "session_out not cleared on failure");
  CHECK(strstr(why, "plan") != NULL, "message does not name the plan: %s", why);
  CHECK(dynrt_session_create(plan->bytes, plan->size, NULL, why, sizeof why, &session) == DYNRT_INVALID_ARGUMENT,
        "NULL backend");
  CHECK(dynrt_session_create(plan->bytes, plan->size, &backend->base, why, sizeof why, NULL) == DYNRT_INVALID_ARGUMENT,
        "NULL session_out");
  CHECK(dynrt_session_create(plan->bytes, plan->size, &backend->base, NULL, 0, NULL) == DYNRT_INVALID_ARGUMENT,
        "NULL message buffer");
  backend->base.api_version = 99;
  CHECK(dynrt_session_create(plan->bytes, plan->size, &backend->base, why, sizeof why, &session) ==
            DYNRT_INVALID_ARGUMENT, "wrong backend API version");
  backend->base.api_version = DYNRT_BACKEND_API_VERSION;
  backend->base.run_segment = NULL;
  CHECK(dynrt_session_create(plan->bytes, plan->size, &backend->base, why, sizeof why, &session) ==
            DYNRT_INVALID_ARGUMENT, "backend without run_segment");
  dynrt_backend_destroy(&backend->base);

  CHECK(dynrt_session_describe(NULL, &info) == DYNRT_INVALID_ARGUMENT, "describe NULL");
  CHECK(dynrt_session_reset(NULL) == DYNRT_INVALID_ARGUMENT, "reset NULL");
  CHECK(dynrt_session_step(NULL, NULL, 0, NULL, 0, NULL) == DYNRT_INVALID_ARGUMENT, "step NULL");
  CHECK(dynrt_session_layer_decisions(NULL, 0, NULL, 0, NULL, 0) == DYNRT_INVALID_ARGUMENT, "decisions NULL");
  CHECK(dynrt_session_set_tie_decisions(NULL, 0, mask, 1) == DYNRT_INVALID_ARGUMENT, "ties NULL");
  CHECK(dynrt_session_last_error(NULL) != NULL, "last_error(NULL) is NULL");
  dynrt_session_destroy(NULL);
  dynrt_backend_destroy(NULL);
  test_status_strings();
  CHECK(dynrt_callback_backend_create(NULL, NULL, NULL) == DYNRT_INVALID_ARGUMENT, "callback backend NULL");

  if (!open_fixture(plan, &f)) return;
  make_frame(f.frame, &f.info, 0);
  CHECK(dynrt_session_describe(f.session, NULL) == DYNRT_INVALID_ARGUMENT, "describe into NULL");
  CHECK(dynrt_session_step(f.session, NULL, f.info.input_bytes, f.output, f.info.output_bytes, NULL) ==
            DYNRT_INVALID_ARGUMENT, "NULL input");
  CHECK(strstr(dynrt_session_last_error(f.session), "input") != NULL, "message: %s",
        dynrt_session_last_error(f.session));
  CHECK(dynrt_session_step(f.session, f.frame, f.info.input_bytes, NULL, f.info.output_bytes, NULL) ==
            DYNRT_INVALID_ARGUMENT, "NULL output");
  {
    dynrt_frame_stats stats;
    memset(&stats, 0, sizeof stats);
    stats.layer_capacity = 3; /* with a NULL array */
    CHECK(dynrt_session_step(f.session, f.frame, f.info.input_bytes, f.output, f.info.output_bytes, &stats) ==
              DYNRT_INVALID_ARGUMENT, "stats capacity without an array");
  }
  CHECK(dynrt_session_layer_decisions(f.session, f.info.layer_count, NULL, 0, NULL, 0) == DYNRT_INVALID_ARGUMENT,
        "layer out of range");
  CHECK(strstr(dynrt_session_last_error(f.session), "layer_decisions: layer") != NULL, "message: %s",
        dynrt_session_last_error(f.session));
  CHECK(dynrt_session_set_tie_decisions(f.session, f.info.layer_count, mask, 1) == DYNRT_INVALID_ARGUMENT,
        "tie layer out of range");
  if (f.info.layer_count > 0) {
    CHECK(dynrt_session_set_tie_decisions(f.session, 0, NULL, 1) == DYNRT_INVALID_ARGUMENT, "tie mask NULL");
  }
  close_fixture(&f);
}

static void test_wrong_sizes(const plan_file* plan) {
  session_fixture f;
  uint8_t mask[1];
  if (!open_fixture(plan, &f)) return;
  make_frame(f.frame, &f.info, 0);
  CHECK(dynrt_session_step(f.session, f.frame, f.info.input_bytes - 4, f.output, f.info.output_bytes, NULL) ==
            DYNRT_WRONG_BUFFER_SIZE, "short input");
  CHECK(strstr(dynrt_session_last_error(f.session), "input") != NULL, "message: %s",
        dynrt_session_last_error(f.session));
  CHECK(dynrt_session_step(f.session, f.frame, f.info.input_bytes + 4, f.output, f.info.output_bytes, NULL) ==
            DYNRT_WRONG_BUFFER_SIZE, "long input");
  CHECK(dynrt_session_step(f.session, f.frame, f.info.input_bytes, f.output, f.info.output_bytes - 4, NULL) ==
            DYNRT_WRONG_BUFFER_SIZE, "short output");
  CHECK(strstr(dynrt_session_last_error(f.session), "output") != NULL, "message: %s",
        dynrt_session_last_error(f.session));
  if (f.info.layer_count > 0) {
    CHECK(dynrt_session_layer_decisions(f.session, 0, mask, 0, NULL, 0) == DYNRT_WRONG_BUFFER_SIZE,
          "block mask too small");
    CHECK(strstr(dynrt_session_last_error(f.session), "layer_decisions") != NULL &&
              strstr(dynrt_session_last_error(f.session), "blocks") != NULL,
          "layer_decisions failed without its own message: %s", dynrt_session_last_error(f.session));
    CHECK(dynrt_session_layer_decisions(f.session, 0, NULL, 0, mask, 0) == DYNRT_WRONG_BUFFER_SIZE,
          "channel array too small");
    CHECK(dynrt_session_set_tie_decisions(f.session, 0, mask, 0) == DYNRT_WRONG_BUFFER_SIZE, "tie mask too small");
  }
  CHECK(step_frame(&f, 0, NULL) == DYNRT_OK, "a good frame after the bad calls: %s",
        dynrt_session_last_error(f.session));
  close_fixture(&f);
}

/* A NaN / Inf frame changes nothing: the next good frame gives what a session that never
 * saw the bad frame gives, bit for bit. */
static void test_nonfinite_frames(const plan_file* plan) {
  static const uint32_t BAD_BITS[3] = {0x7FC00000u /* NaN */, 0x7F800000u /* +Inf */, 0xFF800000u /* -Inf */};
  session_fixture a, b;
  int kind;
  if (!open_fixture(plan, &a)) return;
  if (!open_fixture(plan, &b)) {
    close_fixture(&a);
    return;
  }
  CHECK(step_frame(&a, 0, NULL) == DYNRT_OK && step_frame(&b, 0, NULL) == DYNRT_OK, "first frames");
  for (kind = 0; kind < 3; ++kind) {
    const size_t index = (a.info.input_bytes / 4) * (size_t)(kind + 1) / 4;
    char expected[64];
    make_frame(a.frame, &a.info, 1);
    memcpy(&a.frame[index], &BAD_BITS[kind], 4);
    CHECK(dynrt_session_step(a.session, a.frame, a.info.input_bytes, a.output, a.info.output_bytes, NULL) ==
              DYNRT_NONFINITE_INPUT, "bad frame %d accepted", kind);
    snprintf(expected, sizeof expected, "element %lu ", (unsigned long)index);
    CHECK(strstr(dynrt_session_last_error(a.session), expected) != NULL, "message does not name %s: %s", expected,
          dynrt_session_last_error(a.session));
  }
  CHECK(step_frame(&a, 1, NULL) == DYNRT_OK && step_frame(&b, 1, NULL) == DYNRT_OK, "good frames");
  CHECK(memcmp(a.output, b.output, a.info.output_bytes) == 0, "a rejected frame changed the state");
  CHECK(step_frame(&a, 2, NULL) == DYNRT_OK && step_frame(&b, 2, NULL) == DYNRT_OK, "good frames");
  CHECK(memcmp(a.output, b.output, a.info.output_bytes) == 0, "a rejected frame changed the state (frame 2)");
  close_fixture(&a);
  close_fixture(&b);
}

/* Every prefix of the plan is refused as truncated; a byte too many as invalid. */
static void test_truncation(const plan_file* plan) {
  test_backend* backend = make_test_backend("dynrt_test", NULL, 0);
  unsigned char* longer = (unsigned char*)malloc(plan->size + 1);
  dynrt_session_t session;
  char why[256];
  size_t length;
  unsigned long wrong = 0;
  for (length = 0; length < plan->size; ++length) {
    dynrt_status status = dynrt_session_create(plan->bytes, length, &backend->base, why, sizeof why, &session);
    if (status != DYNRT_PLAN_TRUNCATED || session != NULL || why[0] == '\0') {
      ++wrong;
      if (wrong < 5) CHECK(0, "prefix of %lu bytes: %s (%s)", (unsigned long)length, dynrt_status_string(status), why);
      dynrt_session_destroy(session);
    }
  }
  CHECK(wrong == 0, "%lu truncated plans were not refused as truncated", wrong);
  memcpy(longer, plan->bytes, plan->size);
  longer[plan->size] = 0;
  CHECK(dynrt_session_create(longer, plan->size + 1, &backend->base, why, sizeof why, &session) == DYNRT_PLAN_INVALID,
        "trailing byte: %s", why);
  printf("  truncation: %lu prefixes refused as DYNRT_PLAN_TRUNCATED\n", (unsigned long)plan->size);
  free(longer);
  dynrt_backend_destroy(&backend->base);
}

/* One byte of the plan changed, at every position: refused by the checksum (or the header
 * checks); then the same with the checksum resealed, so the validator has to catch it.
 * Whatever the change, the result is a status, never a crash; a plan that still validates
 * must run a frame. */
static void test_byte_flips(const plan_file* plan) {
  static const unsigned char PATTERNS[4] = {0x01, 0x80, 0xFF, 0x10};
  test_backend* backend = make_test_backend("dynrt_test", NULL, 0);
  unsigned char* copy = (unsigned char*)malloc(plan->size);
  float* frame = NULL;
  float* output = NULL;
  unsigned long by_status[6] = {0, 0, 0, 0, 0, 0}, accepted = 0, frames_run = 0, other = 0;
  /* every byte of the first KiB (header, counts, the first records), then an even stride
   * through the rest so that a large plan costs about as much as a small one */
  const size_t dense_prefix = 1024, budget = 2048;
  const size_t stride = plan->size <= budget ? 1 : (plan->size - dense_prefix) / (budget - dense_prefix) + 1;
  size_t position, positions = 0;
  for (position = 0; position < plan->size; position += position < dense_prefix ? 1 : stride) {
    int reseal;
    ++positions;
    for (reseal = 0; reseal < 2; ++reseal) {
      dynrt_session_t session;
      dynrt_status status;
      char why[256];
      memcpy(copy, plan->bytes, plan->size);
      copy[position] ^= PATTERNS[position % 4];
      if (reseal) {
        const uint32_t crc = dynrt_crc32(copy + 16, plan->size - 16);
        if (position >= 12 && position < 16) continue; /* the checksum field itself */
        copy[12] = (unsigned char)crc;
        copy[13] = (unsigned char)(crc >> 8);
        copy[14] = (unsigned char)(crc >> 16);
        copy[15] = (unsigned char)(crc >> 24);
      }
      why[0] = '\0';
      status = dynrt_session_create(copy, plan->size, &backend->base, why, sizeof why, &session);
      if (status == DYNRT_OK) {
        dynrt_session_info info;
        ++accepted;
        CHECK(dynrt_session_describe(session, &info) == DYNRT_OK, "describe");
        /* step the plan unless the flip made its buffers huge (that only costs time) */
        if (info.arena_bytes < ((size_t)16 << 20)) {
          dynrt_status step_status;
          frame = (float*)realloc(frame, info.input_bytes);
          output = (float*)realloc(output, info.output_bytes);
          make_frame(frame, &info, 0);
          step_status = dynrt_session_step(session, frame, info.input_bytes, output, info.output_bytes, NULL);
          CHECK(step_status == DYNRT_OK || step_status == DYNRT_PLAN_INVALID || step_status == DYNRT_NONFINITE_INPUT,
                "flip at %lu: step gave %s: %s", (unsigned long)position, dynrt_status_string(step_status),
                dynrt_session_last_error(session));
          ++frames_run;
        }
        dynrt_session_destroy(session);
      } else if (is_plan_status(status)) {
        ++by_status[status - DYNRT_PLAN_TRUNCATED];
        CHECK(why[0] != '\0', "flip at %lu: %s without a message", (unsigned long)position,
              dynrt_status_string(status));
        CHECK(session == NULL, "session_out set on failure");
      } else {
        ++other;
        CHECK(status == DYNRT_OUT_OF_MEMORY, "flip at %lu: unexpected %s: %s", (unsigned long)position,
              dynrt_status_string(status), why);
      }
      if (!reseal && position >= 16) {
        CHECK(status == DYNRT_PLAN_CHECKSUM, "payload flip at %lu not caught by the checksum: %s",
              (unsigned long)position, dynrt_status_string(status));
      }
    }
  }
  printf("  byte flips: %lu of %lu positions x (as is, resealed): truncated %lu, bad magic %lu, version %lu, "
         "checksum %lu, invalid %lu, artifact %lu, out of memory %lu, accepted %lu (%lu of them stepped)\n",
         (unsigned long)positions, (unsigned long)plan->size, by_status[0], by_status[1], by_status[2], by_status[3],
         by_status[4], by_status[5], other, accepted, frames_run);
  free(copy);
  free(frame);
  free(output);
  dynrt_backend_destroy(&backend->base);
}

static void test_artifact(const plan_file* plan) {
  const size_t bytes = sizeof TEST_ARTIFACT - 1;
  char tampered[sizeof TEST_ARTIFACT];
  test_backend* good = make_test_backend("dynrt_test", TEST_ARTIFACT, bytes);
  test_backend* changed = make_test_backend("dynrt_test", tampered, bytes);
  test_backend* shorter = make_test_backend("dynrt_test", TEST_ARTIFACT, bytes - 1);
  test_backend* unknown = make_test_backend("no_such_backend", TEST_ARTIFACT, bytes);
  dynrt_session_t session;
  char why[256];
  dynrt_status status;
  memcpy(tampered, TEST_ARTIFACT, sizeof tampered);
  tampered[3] ^= 0x20;

  status = dynrt_session_create(plan->bytes, plan->size, &good->base, why, sizeof why, &session);
  if (status == DYNRT_OK) {
    dynrt_session_destroy(session);
    CHECK(dynrt_session_create(plan->bytes, plan->size, &changed->base, why, sizeof why, &session) ==
              DYNRT_ARTIFACT_MISMATCH, "a changed artifact was accepted");
    CHECK(strstr(why, "CRC32") != NULL, "message: %s", why);
    CHECK(dynrt_session_create(plan->bytes, plan->size, &shorter->base, why, sizeof why, &session) ==
              DYNRT_ARTIFACT_MISMATCH, "an artifact of another size was accepted");
    printf("  artifact: matching accepted, changed CRC and size refused\n");
  } else {
    CHECK(status == DYNRT_ARTIFACT_MISMATCH, "no dynrt_test artifact record: %s", dynrt_status_string(status));
  }
  CHECK(dynrt_session_create(plan->bytes, plan->size, &unknown->base, why, sizeof why, &session) ==
            DYNRT_ARTIFACT_MISMATCH, "an artifact of a backend the plan does not name was accepted");
  CHECK(strstr(why, "no_such_backend") != NULL, "message: %s", why);
  dynrt_backend_destroy(&good->base);
  dynrt_backend_destroy(&changed->base);
  dynrt_backend_destroy(&shorter->base);
  dynrt_backend_destroy(&unknown->base);
}

/* A segment failing mid-frame: DYNRT_BACKEND_ERROR naming the segment; the next frame is
 * computed densely (every skip-conv block), giving what a fresh session gives. */
static void test_backend_failure(const plan_file* plan) {
  session_fixture a, fresh;
  dynrt_layer_stats layers[256], fresh_layers[256];
  dynrt_frame_stats stats, fresh_stats;
  long calls_per_frame;
  uint32_t i;
  if (!open_fixture(plan, &a)) return;
  if (!open_fixture(plan, &fresh)) {
    close_fixture(&a);
    return;
  }
  memset(&stats, 0, sizeof stats);
  stats.layers = layers;
  stats.layer_capacity = 256;
  fresh_stats = stats;
  fresh_stats.layers = fresh_layers;
  /* the calls frame 1 makes after frame 0 (segments whose inputs did not change are not
   * called), counted on the fresh session, which a reset then makes fresh again */
  fresh.backend->fail_on_call = 1000000;
  CHECK(step_frame(&fresh, 0, NULL) == DYNRT_OK, "frame 0");
  fresh.backend->calls = 0;
  CHECK(step_frame(&fresh, 1, NULL) == DYNRT_OK, "frame 1");
  calls_per_frame = fresh.backend->calls;
  CHECK(dynrt_session_reset(fresh.session) == DYNRT_OK, "reset");
  fresh.backend->fail_on_call = -1;
  a.backend->fail_on_call = -1;
  CHECK(step_frame(&a, 0, NULL) == DYNRT_OK, "frame 0");
  if (calls_per_frame > 0) {
    a.backend->calls = 0;
    a.backend->fail_on_call = calls_per_frame / 2; /* the middle call of frame 1 */
    CHECK(step_frame(&a, 1, NULL) == DYNRT_BACKEND_ERROR, "a failing segment did not fail the frame");
    CHECK(strstr(dynrt_session_last_error(a.session), "segment") != NULL, "message does not name the segment: %s",
          dynrt_session_last_error(a.session));
    a.backend->fail_on_call = -1;
    CHECK(step_frame(&a, 2, &stats) == DYNRT_OK, "frame after the failure");
    CHECK(step_frame(&fresh, 2, &fresh_stats) == DYNRT_OK, "fresh session");
    CHECK(memcmp(a.output, fresh.output, a.info.output_bytes) == 0,
          "the frame after a backend failure differs from a fresh session's (not dense)");
    for (i = 0; i < a.info.layer_count && i < 256; ++i) {
      CHECK(layers[i].active_blocks == fresh_layers[i].active_blocks && layers[i].path == fresh_layers[i].path,
            "layer %lu: %lu blocks after the failure, a fresh session computes %lu", (unsigned long)i,
            (unsigned long)layers[i].active_blocks, (unsigned long)fresh_layers[i].active_blocks);
    }
    printf("  backend failure: call %ld of %ld failed the frame; the next frame matched a fresh session\n",
           calls_per_frame / 2, calls_per_frame);
  }
  close_fixture(&a);
  close_fixture(&fresh);
}

/* ---- sessions sharing one backend ------------------------------------------------------ */

#define SHARED_CLIPS 3
#define SHARED_FRAMES 24 /* more than any schedule below steps a session */

/* Frame i of clip c: the moving square forwards, backwards, and from the middle. */
static int clip_frame(int clip, int i) {
  const int period = 8;
  return clip == 0 ? i % period : clip == 1 ? period - 1 - i % period : (i + period / 2) % period;
}

typedef struct shared_run {
  dynrt_session_t session;
  int clip, frames_done, alive;
} shared_run;

static void step_shared(const plan_file* plan, shared_run* run, const float* const lone[SHARED_CLIPS], float* frame,
                        float* output, const dynrt_session_info* info, const char* schedule) {
  dynrt_status status;
  if (!run->alive || run->frames_done >= SHARED_FRAMES) return;
  make_frame(frame, info, clip_frame(run->clip, run->frames_done));
  status = dynrt_session_step(run->session, frame, info->input_bytes, output, info->output_bytes, NULL);
  CHECK(status == DYNRT_OK, "%s: clip %d frame %d: %s", schedule, run->clip, run->frames_done,
        dynrt_session_last_error(run->session));
  CHECK(memcmp(output, lone[run->clip] + (size_t)run->frames_done * (info->output_bytes / 4), info->output_bytes) == 0,
        "%s: clip %d frame %d differs from a lone session's", schedule, run->clip, run->frames_done);
  (void)plan;
  run->frames_done += 1;
}

static void step_all(const plan_file* plan, shared_run* runs, int count, const float* const lone[SHARED_CLIPS],
                     float* frame, float* output, const dynrt_session_info* info, const char* schedule) {
  int k;
  for (k = 0; k < count; ++k) step_shared(plan, &runs[k], lone, frame, output, info, schedule);
}

/* The permutation number `index` of 0..count-1 (count <= 3). */
static void permutation(int index, int count, int* order) {
  int pool[3] = {0, 1, 2}, k, left = count;
  for (k = 0; k < count; ++k) {
    int factorial = 1, f, pick;
    for (f = 2; f < left; ++f) factorial *= f;
    pick = index / factorial;
    index %= factorial;
    order[k] = pool[pick];
    for (f = pick; f + 1 < left; ++f) pool[f] = pool[f + 1];
    --left;
  }
}

/* Two and three sessions on ONE backend, each stepping its own clip: created one by one
 * (every live session steps between creations), stepped together, destroyed one by one
 * (the others step on between destructions), in every creation and destruction order.
 * Every output equals a lone session's on the same clip, bit for bit. */
static void test_sessions_sharing_a_backend(const plan_file* plan) {
  float* lone[SHARED_CLIPS] = {NULL, NULL, NULL};
  session_fixture f;
  dynrt_session_info info;
  int clip, count, schedules = 0;
  if (!open_fixture(plan, &f)) return;
  info = f.info;
  for (clip = 0; clip < SHARED_CLIPS; ++clip) {
    int i;
    lone[clip] = (float*)malloc((size_t)SHARED_FRAMES * info.output_bytes);
    if (lone[clip] == NULL) break;
    CHECK(dynrt_session_reset(f.session) == DYNRT_OK, "reset");
    for (i = 0; i < SHARED_FRAMES; ++i) {
      make_frame(f.frame, &info, clip_frame(clip, i));
      CHECK(dynrt_session_step(f.session, f.frame, info.input_bytes, lone[clip] + (size_t)i * (info.output_bytes / 4),
                               info.output_bytes, NULL) == DYNRT_OK,
            "lone session, clip %d frame %d: %s", clip, i, dynrt_session_last_error(f.session));
    }
  }
  for (count = 2; count <= 3 && lone[SHARED_CLIPS - 1] != NULL; ++count) {
    const int orders = count == 2 ? 2 : 6;
    int create_index, destroy_index;
    for (create_index = 0; create_index < orders; ++create_index) {
      for (destroy_index = 0; destroy_index < orders; ++destroy_index) {
        test_backend* backend = make_test_backend("dynrt_test", NULL, 0);
        shared_run runs[3];
        int create_order[3], destroy_order[3], k;
        char schedule[96];
        permutation(create_index, count, create_order);
        permutation(destroy_index, count, destroy_order);
        snprintf(schedule, sizeof schedule, "%d sessions, created %d%d%d, destroyed %d%d%d", count, create_order[0],
                 create_order[1], count > 2 ? create_order[2] : 9, destroy_order[0], destroy_order[1],
                 count > 2 ? destroy_order[2] : 9);
        memset(runs, 0, sizeof runs);
        for (k = 0; k < count; ++k) {
          shared_run* run = &runs[create_order[k]];
          char why[256];
          dynrt_status status = dynrt_session_create(plan->bytes, plan->size, &backend->base, why, sizeof why,
                                                     &run->session);
          CHECK(status == DYNRT_OK, "%s: create: %s", schedule, why);
          run->clip = create_order[k];
          run->alive = status == DYNRT_OK;
          step_all(plan, runs, count, (const float* const*)lone, f.frame, f.output, &info, schedule);
        }
        for (k = 0; k < 3; ++k) step_all(plan, runs, count, (const float* const*)lone, f.frame, f.output, &info, schedule);
        for (k = 0; k < count; ++k) {
          shared_run* run = &runs[destroy_order[k]];
          if (run->alive) dynrt_session_destroy(run->session);
          run->alive = 0;
          step_all(plan, runs, count, (const float* const*)lone, f.frame, f.output, &info, schedule);
        }
        CHECK(backend->live_states == 0, "%s: %ld session states left", schedule, backend->live_states);
        dynrt_backend_destroy(&backend->base);
        ++schedules;
      }
    }
  }
  printf("  shared backend: %d schedules of 2 and 3 sessions matched lone sessions\n", schedules);
  for (clip = 0; clip < SHARED_CLIPS; ++clip) free(lone[clip]);
  close_fixture(&f);
}

/* A backend's buffer needs: every operand buffer at its alignment, followed by zero tail
 * bytes; the outputs are the same as with the defaults; out-of-range needs are refused. */
static void test_buffer_needs(const plan_file* plan) {
  session_fixture plain;
  test_backend* backend = make_test_backend("dynrt_test", NULL, 0);
  dynrt_session_t session = NULL;
  char why[256];
  float* output = NULL;
  int t;
  if (!open_fixture(plan, &plain)) {
    dynrt_backend_destroy(&backend->base);
    return;
  }
  backend->base.buffer_alignment = 3;
  CHECK(dynrt_session_create(plan->bytes, plan->size, &backend->base, why, sizeof why, &session) ==
            DYNRT_INVALID_ARGUMENT && strstr(why, "power of two") != NULL, "alignment 3: %s", why);
  backend->base.buffer_alignment = 256;
  backend->base.buffer_tail_bytes = DYNRT_MAX_BUFFER_TAIL_BYTES + 1;
  CHECK(dynrt_session_create(plan->bytes, plan->size, &backend->base, why, sizeof why, &session) ==
            DYNRT_INVALID_ARGUMENT && strstr(why, "tail") != NULL, "too long a tail: %s", why);
  backend->base.buffer_tail_bytes = 48;
  CHECK(dynrt_session_create(plan->bytes, plan->size, &backend->base, why, sizeof why, &session) == DYNRT_OK,
        "alignment 256, tail 48: %s", why);
  output = (float*)malloc(plain.info.output_bytes);
  for (t = 0; session != NULL && output != NULL && t < 6; ++t) {
    CHECK(step_frame(&plain, t, NULL) == DYNRT_OK, "default buffers, frame %d", t);
    CHECK(dynrt_session_step(session, plain.frame, plain.info.input_bytes, output, plain.info.output_bytes, NULL) ==
              DYNRT_OK, "aligned buffers, frame %d: %s", t, dynrt_session_last_error(session));
    CHECK(memcmp(output, plain.output, plain.info.output_bytes) == 0, "frame %d differs with other buffer needs", t);
  }
  CHECK(backend->misaligned == 0, "%ld buffers not at 256 bytes with a zero tail of 48", backend->misaligned);
  dynrt_session_destroy(session);
  dynrt_backend_destroy(&backend->base);
  free(output);
  close_fixture(&plain);
}

/* dynrt_session_time_segment: every segment at its batches runs (no allocation), out of
 * range is refused with a message, and afterwards the session is as after a reset. */
static void test_time_segment(const plan_file* plan) {
  session_fixture a, b;
  uint64_t elapsed = 1;
  unsigned long before;
  uint32_t segment, calls = 0;
  int t;
  if (!open_fixture(plan, &a)) return;
  if (!open_fixture(plan, &b)) {
    close_fixture(&a);
    return;
  }
  for (t = 0; t < 3; ++t) {
    CHECK(step_frame(&a, t, NULL) == DYNRT_OK && step_frame(&b, t, NULL) == DYNRT_OK, "frame %d", t);
  }
  before = allocator_calls;
  for (segment = 0; segment < a.info.segment_count; ++segment) {
    uint32_t batch;
    for (batch = 1; batch <= 64; ++batch) {
      dynrt_status status = dynrt_session_time_segment(a.session, segment, batch, &elapsed);
      if (status != DYNRT_OK) {
        CHECK(status == DYNRT_INVALID_ARGUMENT && batch > 1 && strstr(dynrt_session_last_error(a.session), "batch"),
              "segment %lu at batch %lu: %s", (unsigned long)segment, (unsigned long)batch,
              dynrt_session_last_error(a.session));
        break;
      }
      ++calls;
    }
  }
  CHECK(allocator_calls == before, "time_segment made %lu allocator calls", allocator_calls - before);
  CHECK(dynrt_session_time_segment(a.session, a.info.segment_count, 1, &elapsed) == DYNRT_INVALID_ARGUMENT &&
            strstr(dynrt_session_last_error(a.session), "segment") != NULL,
        "segment out of range: %s", dynrt_session_last_error(a.session));
  CHECK(dynrt_session_time_segment(a.session, 0, 0, &elapsed) == DYNRT_INVALID_ARGUMENT || a.info.segment_count == 0,
        "batch 0");
  CHECK(dynrt_session_time_segment(a.session, 0, 1, NULL) == DYNRT_INVALID_ARGUMENT, "NULL elapsed_ns");
  CHECK(dynrt_session_reset(b.session) == DYNRT_OK, "reset");
  for (t = 3; t < 6; ++t) {
    CHECK(step_frame(&a, t, NULL) == DYNRT_OK && step_frame(&b, t, NULL) == DYNRT_OK, "frame %d", t);
    CHECK(memcmp(a.output, b.output, a.info.output_bytes) == 0,
          "frame %d after timing segments differs from a reset session's", t);
  }
  printf("  time_segment: %lu calls over %lu segments, then as after a reset\n", (unsigned long)calls,
         (unsigned long)a.info.segment_count);
  close_fixture(&a);
  close_fixture(&b);
}

/* Creating allocates exactly once (the arena); step, reset and the queries never. */
static void test_no_allocation_after_create(const plan_file* plan) {
  session_fixture f;
  dynrt_layer_stats layers[64];
  uint64_t segment_ns[64];
  dynrt_frame_stats stats;
  unsigned long before;
  uint8_t* mask;
  uint8_t* channels;
  dynrt_session_t second;
  char why[256];
  int t;
  uint32_t layer;
  if (!open_fixture(plan, &f)) return;
  mask = (uint8_t*)malloc(1 << 20);
  channels = (uint8_t*)malloc(1 << 16);
  memset(&stats, 0, sizeof stats);
  stats.layers = layers;
  stats.layer_capacity = 64;
  stats.segment_ns = segment_ns;
  stats.segment_capacity = 64;

  before = allocator_calls;
  CHECK(dynrt_session_create(plan->bytes, plan->size, &f.backend->base, why, sizeof why, &second) == DYNRT_OK, "%s",
        why);
  CHECK(allocator_calls - before == 1, "create made %lu allocator calls, expected one (the arena)",
        allocator_calls - before);
  dynrt_session_destroy(second);

  before = allocator_calls;
  for (t = 0; t < 12; ++t) {
    dynrt_session_info info;
    CHECK(step_frame(&f, t, &stats) == DYNRT_OK, "frame %d: %s", t, dynrt_session_last_error(f.session));
    CHECK(dynrt_session_describe(f.session, &info) == DYNRT_OK, "describe");
    for (layer = 0; layer < f.info.layer_count; ++layer) {
      CHECK(dynrt_session_layer_decisions(f.session, layer, mask, 1 << 20, channels, 1 << 16) == DYNRT_OK,
            "decisions");
      dynrt_layer_info shape;
      CHECK(dynrt_session_describe_layer(f.session, layer, &shape) == DYNRT_OK, "describe_layer");
      CHECK(dynrt_session_set_tie_decisions(f.session, layer, mask, shape.blocks) == DYNRT_OK, "ties");
    }
    if (t == 5) CHECK(dynrt_session_reset(f.session) == DYNRT_OK, "reset");
    if (t == 7) {
      f.frame[0] = (float)NAN;
      CHECK(dynrt_session_step(f.session, f.frame, f.info.input_bytes, f.output, f.info.output_bytes, &stats) ==
                DYNRT_NONFINITE_INPUT, "NaN frame");
      CHECK(dynrt_session_step(f.session, f.frame, 4, f.output, f.info.output_bytes, &stats) == DYNRT_WRONG_BUFFER_SIZE,
            "short frame");
      (void)dynrt_session_last_error(f.session);
    }
  }
  f.backend->fail_on_call = 0;
  f.backend->calls = 0;
  if (f.info.segment_count > 0) {
    CHECK(step_frame(&f, 20, &stats) == DYNRT_BACKEND_ERROR, "backend failure");
  }
  CHECK(allocator_calls == before, "step/reset/queries made %lu allocator calls", allocator_calls - before);
  printf("  allocations: create 1, step/reset/queries over 12 frames 0\n");
  free(mask);
  free(channels);
  close_fixture(&f);
}

/* Statistics: consistent counts and MACs; frame and segment times measured. */
static void test_stats(const plan_file* plan) {
  session_fixture f;
  dynrt_layer_stats layers[64];
  uint64_t segment_ns[64];
  dynrt_frame_stats stats;
  uint32_t i;
  int t;
  if (!open_fixture(plan, &f)) return;
  memset(&stats, 0, sizeof stats);
  stats.layers = layers;
  stats.layer_capacity = 64;
  stats.segment_ns = segment_ns;
  stats.segment_capacity = 64;
  for (t = 0; t < 4; ++t) {
    uint64_t sum = 0;
    CHECK(step_frame(&f, t, &stats) == DYNRT_OK, "frame %d", t);
    for (i = 0; i < f.info.layer_count && i < 64; ++i) {
      CHECK(layers[i].active_blocks <= layers[i].total_blocks, "layer %lu: %lu of %lu blocks", (unsigned long)i,
            (unsigned long)layers[i].active_blocks, (unsigned long)layers[i].total_blocks);
      CHECK(layers[i].path <= DYNRT_PATH_DENSE, "path %lu", (unsigned long)layers[i].path);
      CHECK(layers[i].path != DYNRT_PATH_REUSE || layers[i].active_blocks == 0, "reuse with active blocks");
    }
    for (i = 0; i < f.info.segment_count && i < 64; ++i) sum += segment_ns[i];
    CHECK(sum == stats.segments_ns, "segment times do not add up");
    CHECK(stats.frame_ns >= stats.segments_ns, "frame shorter than its segments");
  }
  close_fixture(&f);
}

/* The runtime's own work cut into tasks (dynrt_backend.parallel_for) must give what the
 * serial loop gives, bit for bit: outputs, decisions and ties, frame by frame, on a clip
 * whose every third frame changes everywhere (every block scored). Tasks 1.. run on
 * threads of their own while task 0 runs on the caller, so tasks really overlap. */
#define DYNRT_MAX_TEST_TASKS 4u

typedef struct parallel_call {
  void (*task)(void* argument, uint32_t task);
  void* argument;
  uint32_t index;
} parallel_call;

static unsigned long parallel_calls;

static void* run_parallel_call(void* call) {
  const parallel_call* c = (const parallel_call*)call;
  c->task(c->argument, c->index);
  return NULL;
}

static void threads_parallel_for(void* context, void (*task)(void* argument, uint32_t task), void* argument,
                                 uint32_t tasks) {
  pthread_t threads[DYNRT_MAX_TEST_TASKS];
  parallel_call calls[DYNRT_MAX_TEST_TASKS];
  uint32_t t, started = 0;
  (void)context;
  CHECK(tasks >= 2 && tasks <= DYNRT_MAX_TEST_TASKS, "parallel_for with %lu tasks", (unsigned long)tasks);
  if (tasks > DYNRT_MAX_TEST_TASKS) tasks = DYNRT_MAX_TEST_TASKS;
  parallel_calls += 1;
  for (t = 1; t < tasks; ++t) {
    calls[t].task = task;
    calls[t].argument = argument;
    calls[t].index = t;
    if (pthread_create(&threads[t], NULL, run_parallel_call, &calls[t]) != 0) break;
    started = t;
  }
  task(argument, 0);
  for (t = started + 1; t < tasks; ++t) task(argument, t); /* threads that could not start */
  for (t = 1; t <= started; ++t) pthread_join(threads[t], NULL);
}

static void test_parallel_tasks(const plan_file* plan) {
  session_fixture serial, parallel;
  dynrt_layer_stats serial_layers[64], parallel_layers[64];
  dynrt_frame_stats serial_stats, parallel_stats;
  const unsigned long calls_before = parallel_calls;
  uint8_t masks[2][4096], channels[2][1024];
  int t;
  uint32_t i;
  if (!open_fixture(plan, &serial)) return;
  parallel = serial; /* its own session, on a backend lending threads */
  parallel.backend = make_test_backend("dynrt_test", NULL, 0);
  parallel.backend->base.parallel_for = threads_parallel_for;
  parallel.backend->base.parallel_threads = DYNRT_MAX_TEST_TASKS;
  parallel.output = (float*)malloc(serial.info.output_bytes);
  parallel.session = NULL;
  CHECK(parallel.output != NULL &&
            dynrt_session_create(plan->bytes, plan->size, &parallel.backend->base, NULL, 0, &parallel.session) ==
                DYNRT_OK,
        "create with parallel_for");
  memset(&serial_stats, 0, sizeof serial_stats);
  serial_stats.layers = serial_layers;
  serial_stats.layer_capacity = 64;
  parallel_stats = serial_stats;
  parallel_stats.layers = parallel_layers;
  for (t = 0; t < 12 && serial.session != NULL && parallel.session != NULL; ++t) {
    size_t k;
    make_frame(serial.frame, &serial.info, t);
    if (t % 3 == 2) {
      for (k = 0; k < serial.info.input_bytes / 4; ++k) serial.frame[k] += 0.05f * (float)t; /* everything changes */
    }
    CHECK(dynrt_session_step(serial.session, serial.frame, serial.info.input_bytes, serial.output,
                             serial.info.output_bytes, &serial_stats) == DYNRT_OK &&
              dynrt_session_step(parallel.session, serial.frame, serial.info.input_bytes, parallel.output,
                                 serial.info.output_bytes, &parallel_stats) == DYNRT_OK,
          "frame %d: %s / %s", t, dynrt_session_last_error(serial.session), dynrt_session_last_error(parallel.session));
    CHECK(memcmp(serial.output, parallel.output, serial.info.output_bytes) == 0,
          "frame %d: the output with tasks differs from the serial one", t);
    for (i = 0; i < serial.info.layer_count && i < 64; ++i) {
      const size_t blocks = serial_layers[i].total_blocks < 4096 ? serial_layers[i].total_blocks : 4096;
      CHECK(dynrt_session_layer_decisions(serial.session, i, masks[0], sizeof masks[0], channels[0],
                                          sizeof channels[0]) == DYNRT_OK &&
                dynrt_session_layer_decisions(parallel.session, i, masks[1], sizeof masks[1], channels[1],
                                              sizeof channels[1]) == DYNRT_OK,
            "frame %d layer %lu: decisions", t, (unsigned long)i);
      CHECK(memcmp(masks[0], masks[1], blocks) == 0 && serial_layers[i].ties == parallel_layers[i].ties &&
                serial_layers[i].path == parallel_layers[i].path,
            "frame %d layer %lu: decisions, ties or path differ with tasks", t, (unsigned long)i);
    }
  }
  printf("  tasks: 12 frames matched the serial session bit for bit (%lu parallel_for calls)\n",
         parallel_calls - calls_before);
  dynrt_session_destroy(parallel.session);
  parallel.session = NULL;
  dynrt_backend_destroy(&parallel.backend->base);
  free(parallel.output);
  close_fixture(&serial);
}

/* ---- benchmark ----------------------------------------------------------------------- */

static int compare_u64(const void* a, const void* b) {
  const uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

static int run_benchmark(const plan_file* plan, int frames) {
  session_fixture f;
  dynrt_layer_stats layers[256];
  dynrt_frame_stats stats;
  uint64_t* own = (uint64_t*)calloc((size_t)frames, sizeof(uint64_t));
  double active = 0, total = 0;
  int t;
  uint32_t i;
  if (!open_fixture(plan, &f)) return 1;
  memset(&stats, 0, sizeof stats);
  stats.layers = layers;
  stats.layer_capacity = 256;
  for (t = 0; t < frames; ++t) {
    if (step_frame(&f, t, &stats) != DYNRT_OK) {
      fprintf(stderr, "bench: %s\n", dynrt_session_last_error(f.session));
      return 1;
    }
    own[t] = stats.frame_ns - stats.segments_ns;
    for (i = 0; i < f.info.layer_count && i < 256; ++i) {
      active += layers[i].active_blocks;
      total += layers[i].total_blocks;
    }
  }
  qsort(own, (size_t)frames, sizeof own[0], compare_u64);
  printf("bench %s: %d frames, runtime's own time per frame (everything but segments): min %.1f us, median %.1f us; "
         "active blocks %.0f%%; arena %lu bytes\n",
         plan->path, frames, (double)own[0] / 1e3, (double)own[frames / 2] / 1e3,
         total > 0 ? 100.0 * active / total : 0.0, (unsigned long)f.info.arena_bytes);
  free(own);
  close_fixture(&f);
  return 0;
}

int main(int argc, char** argv) {
  int first = 1, i;
  if (argc > 2 && strcmp(argv[1], "--bench") == 0) {
    plan_file plan;
    const int frames = argc > 3 ? atoi(argv[3]) : 200;
    if (!read_plan(argv[2], &plan)) {
      fprintf(stderr, "cannot read %s\n", argv[2]);
      return 2;
    }
    i = run_benchmark(&plan, frames > 1 ? frames : 200);
    free(plan.bytes);
    return i;
  }
  if (argc < 2) {
    fprintf(stderr, "usage: dynrt_test PLAN.dxfp...   |   dynrt_test --bench PLAN.dxfp [FRAMES]\n");
    return 2;
  }
  for (i = first; i < argc; ++i) {
    plan_file plan;
    if (!read_plan(argv[i], &plan)) {
      fprintf(stderr, "FAIL cannot read plan %s\n", argv[i]);
      ++checks_failed;
      continue;
    }
    current_plan = argv[i];
    printf("plan %s (%lu bytes)\n", argv[i], (unsigned long)plan.size);
    test_describe(&plan);
    test_null_arguments(&plan);
    test_wrong_sizes(&plan);
    test_nonfinite_frames(&plan);
    test_stats(&plan);
    test_backend_failure(&plan);
    test_sessions_sharing_a_backend(&plan);
    test_parallel_tasks(&plan);
    test_buffer_needs(&plan);
    test_time_segment(&plan);
    test_no_allocation_after_create(&plan);
    test_artifact(&plan);
    test_truncation(&plan);
    test_byte_flips(&plan);
    free(plan.bytes);
  }
  printf("dynrt_test: %lu checks, %lu failed, %d plans\n", checks_run, checks_failed, argc - first);
  return checks_failed == 0 ? 0 : 1;
}
