/*
 * Reading a plan in place: dynrt_plan_open checks the header, size and checksum and finds
 * the sections; the decode functions then read one record at a time straight from the
 * caller's bytes (nothing is allocated, so a session can be sized before its one
 * allocation). dynrt_plan_validate (plan_validator.c) checks every index and size.
 */
#ifndef DYNRT_PLAN_READER_H
#define DYNRT_PLAN_READER_H

#include <stddef.h>
#include <stdint.h>

#include "plan_format.h"
#include "status.h"

typedef struct plan_view {
  uint32_t major_version, minor_version;
  uint32_t tensor_count, segment_count, layer_count, instruction_count, artifact_count;
  uint32_t operand_count, input_count, output_count, string_bytes, constant_bytes;
  /* section starts inside the caller's plan bytes */
  const unsigned char* tensor_records;
  const unsigned char* segment_records;
  const unsigned char* layer_records;
  const unsigned char* instruction_records;
  const unsigned char* artifact_records;
  const unsigned char* operands;
  const unsigned char* inputs;
  const unsigned char* outputs;
  const unsigned char* strings;
  const unsigned char* constants;
} plan_view;

/* Header, payload size, checksum and section bounds. Statuses: DYNRT_PLAN_TRUNCATED,
 * BAD_MAGIC, VERSION, CHECKSUM, INVALID (a section runs past the payload, trailing bytes). */
dynrt_status dynrt_plan_open(const void* plan, size_t plan_bytes, plan_view* view, error_sink* error);

/* Record decoders; `index` must be below the matching count. */
void dynrt_plan_tensor(const plan_view* view, uint32_t index, plan_tensor* out);
void dynrt_plan_segment(const plan_view* view, uint32_t index, plan_segment* out);
void dynrt_plan_layer(const plan_view* view, uint32_t index, plan_layer* out);
void dynrt_plan_instruction(const plan_view* view, uint32_t index, plan_instruction* out);
void dynrt_plan_artifact(const plan_view* view, uint32_t index, plan_artifact* out);
uint32_t dynrt_plan_operand(const plan_view* view, uint32_t index);
uint32_t dynrt_plan_input(const plan_view* view, uint32_t index);
uint32_t dynrt_plan_output(const plan_view* view, uint32_t index);
float dynrt_plan_constant(const plan_view* view, uint32_t index);

/* The NUL-terminated UTF-8 string at a byte offset of the string section, or NULL when the
 * offset is out of range, the string is unterminated or not valid UTF-8 (`problem` then
 * says which). */
const char* dynrt_plan_string(const plan_view* view, uint32_t offset, const char** problem);

/* Little-endian loads, shared with the code that copies constants. */
uint32_t dynrt_load_u32(const unsigned char* bytes);
float dynrt_load_f32(const unsigned char* bytes);

#endif /* DYNRT_PLAN_READER_H */
