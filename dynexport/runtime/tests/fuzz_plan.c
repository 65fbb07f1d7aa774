/*
 * libFuzzer target: plan bytes -> dynrt_session_create, and when the plan is accepted, a
 * few frames through it (a stub backend leaves segment outputs as they are).
 *
 *     cmake -S dynexport/runtime -B build/fuzz -G Ninja -DDYNRT_FUZZ=ON \
 *           -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
 *     cmake --build build/fuzz --target fuzz_plan
 *     build/fuzz/fuzz_plan -max_total_time=30 CORPUS_DIR SEED_DIR   # seeds: real plan files
 *
 * Every input is tried twice: as is (which mostly reaches the header and checksum checks),
 * and with its payload checksum recomputed, so that mutations get past the CRC and exercise
 * the validator and the instructions. The fuzz build limits a session's arena to 64 MiB
 * (DYNRT_MAX_ARENA_BYTES) so that mutated sizes do not ask for gigabytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crc32.h"
#include "dynrt.h"
#include "dynrt_backend_impl.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static dynrt_status stub_prepare(void* context, void* session_state, uint32_t segment, const dynrt_segment_info* info,
                                 char* message, size_t message_capacity) {
  (void)context;
  (void)session_state;
  (void)segment;
  (void)message;
  (void)message_capacity;
  /* touch what the runtime hands over: a wrong pointer shows up under ASan here */
  if (info->input_count > 0 && info->inputs[0].rank > 4) return DYNRT_SEGMENT_MISMATCH;
  if (info->output_count > 0 && info->output_buffers[0] == NULL) return DYNRT_SEGMENT_MISMATCH;
  return DYNRT_OK;
}

static dynrt_status stub_run(void* context, void* session_state, uint32_t segment, uint32_t batch,
                             void* const* inputs, void* const* outputs) {
  (void)context;
  (void)session_state;
  (void)segment;
  (void)batch;
  (void)inputs;
  (void)outputs;
  return DYNRT_OK;
}

/* a tail, so that the fuzzer also runs the arena layout with one */
static struct dynrt_backend stub_backend = {
    DYNRT_BACKEND_API_VERSION, "fuzz", NULL, NULL, 0, 0, 16, NULL, stub_prepare, stub_run, NULL, NULL,
    NULL, 0};

/* A frame of an accepted plan may only fail the ways a plan can make it fail at run time
 * (a tile instruction with more active blocks than its batch holds); anything else, or a
 * query that fails on a valid session, is a finding: abort() makes libFuzzer report it. */
static void expect_frame_status(dynrt_status status) {
  if (status != DYNRT_OK && status != DYNRT_PLAN_INVALID) abort();
}

static void expect_ok(dynrt_status status) {
  if (status != DYNRT_OK) abort();
}

static void run_plan(const uint8_t* plan, size_t size) {
  enum { STATS_CAPACITY = 64 };
  dynrt_layer_stats layers[STATS_CAPACITY];
  uint64_t segment_ns[STATS_CAPACITY];
  dynrt_frame_stats stats;
  dynrt_session_info info;
  dynrt_session_t session;
  char why[256];
  float* frame;
  float* output;
  size_t i;
  uint32_t layer;

  if (dynrt_session_create(plan, size, &stub_backend, why, sizeof why, &session) != DYNRT_OK) return;
  expect_ok(dynrt_session_describe(session, &info));
  frame = (float*)calloc(1, info.input_bytes + 4);
  output = (float*)malloc(info.output_bytes + 4);
  memset(&stats, 0, sizeof stats);
  stats.layers = layers;
  stats.layer_capacity = STATS_CAPACITY;
  stats.segment_ns = segment_ns;
  stats.segment_capacity = STATS_CAPACITY;
  if (frame != NULL && output != NULL) {
    /* a zero frame (dense), then a changed one with every layer's ties imposed (gates score
     * residuals), then one after a reset */
    expect_frame_status(dynrt_session_step(session, frame, info.input_bytes, output, info.output_bytes, &stats));
    for (i = 0; i < info.input_bytes / 4; i += 3) frame[i] = (float)(i % 7) * 0.25f;
    for (layer = 0; layer < info.layer_count; ++layer) {
      dynrt_layer_info shape;
      uint8_t* mask;
      expect_ok(dynrt_session_describe_layer(session, layer, &shape));
      mask = (uint8_t*)malloc((size_t)shape.blocks + 1);
      if (mask != NULL) {
        memset(mask, (int)(layer & 1), (size_t)shape.blocks + 1);
        expect_ok(dynrt_session_set_tie_decisions(session, layer, mask, shape.blocks));
        free(mask);
      }
    }
    expect_frame_status(dynrt_session_step(session, frame, info.input_bytes, output, info.output_bytes, &stats));
    expect_ok(dynrt_session_reset(session));
    expect_frame_status(dynrt_session_step(session, frame, info.input_bytes, output, info.output_bytes, NULL));
    for (layer = 0; layer < info.layer_count; ++layer) {
      dynrt_layer_info shape;
      uint8_t* mask;
      uint8_t* channels;
      expect_ok(dynrt_session_describe_layer(session, layer, &shape));
      mask = (uint8_t*)malloc((size_t)shape.blocks + 1);
      channels = (uint8_t*)malloc((size_t)shape.out_channels + 1);
      if (mask != NULL && channels != NULL) {
        expect_ok(dynrt_session_layer_decisions(session, layer, mask, shape.blocks, channels, shape.out_channels));
      }
      free(mask);
      free(channels);
    }
  }
  (void)dynrt_session_last_error(session);
  free(frame);
  free(output);
  dynrt_session_destroy(session);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run_plan(data, size);
  if (size >= 16) {
    uint8_t* resealed = (uint8_t*)malloc(size);
    uint32_t crc;
    if (resealed == NULL) return 0;
    memcpy(resealed, data, size);
    crc = dynrt_crc32(resealed + 16, size - 16);
    resealed[12] = (uint8_t)crc;
    resealed[13] = (uint8_t)(crc >> 8);
    resealed[14] = (uint8_t)(crc >> 16);
    resealed[15] = (uint8_t)(crc >> 24);
    /* the header's payload size too, so that inserted or removed bytes still parse */
    resealed[8] = (uint8_t)(size - 16);
    resealed[9] = (uint8_t)((size - 16) >> 8);
    resealed[10] = (uint8_t)((size - 16) >> 16);
    resealed[11] = (uint8_t)((size - 16) >> 24);
    run_plan(resealed, size);
    free(resealed);
  }
  return 0;
}
