/* Plan header, sections and record decoding (see plan_reader.h). Every size is computed in
 * uint64_t: counts are 32-bit and multiplied by record sizes, so nothing can wrap. */
#include "plan_reader.h"

#include <string.h>

#include "crc32.h"

uint32_t dynrt_load_u32(const unsigned char* bytes) {
  return (uint32_t)bytes[0] | ((uint32_t)bytes[1] << 8) | ((uint32_t)bytes[2] << 16) | ((uint32_t)bytes[3] << 24);
}

static uint16_t load_u16(const unsigned char* bytes) {
  return (uint16_t)(bytes[0] | (bytes[1] << 8));
}

float dynrt_load_f32(const unsigned char* bytes) {
  uint32_t bits = dynrt_load_u32(bytes);
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

/* Hands out consecutive sections of the payload, failing when one runs past its end. */
typedef struct section_cursor {
  const unsigned char* payload;
  uint64_t payload_bytes;
  uint64_t offset;
} section_cursor;

static dynrt_status take_section(section_cursor* cursor, uint64_t count, uint64_t element_bytes, const char* what,
                                 const unsigned char** start, error_sink* error) {
  uint64_t bytes = count * element_bytes; /* count < 2^32, element_bytes <= 140: no overflow */
  if (bytes > cursor->payload_bytes - cursor->offset) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID,
                      "plan: %s section of %llu bytes at payload offset %llu runs past the end (%llu bytes)", what,
                      (unsigned long long)bytes, (unsigned long long)cursor->offset,
                      (unsigned long long)cursor->payload_bytes);
  }
  *start = cursor->payload + cursor->offset;
  cursor->offset += bytes;
  return DYNRT_OK;
}

dynrt_status dynrt_plan_open(const void* plan, size_t plan_bytes, plan_view* view, error_sink* error) {
  const unsigned char* bytes = (const unsigned char*)plan;
  uint32_t payload_bytes, checksum, counts[PLAN_COUNT_FIELDS];
  const unsigned char* counts_start = NULL;
  section_cursor cursor;
  dynrt_status status;
  uint32_t i;

  memset(view, 0, sizeof *view);
  if (plan_bytes < PLAN_HEADER_BYTES) {
    return dynrt_fail(error, DYNRT_PLAN_TRUNCATED, "plan: %lu bytes is shorter than the %u-byte header",
                      (unsigned long)plan_bytes, PLAN_HEADER_BYTES);
  }
  if (memcmp(bytes, PLAN_MAGIC, 4) != 0) {
    return dynrt_fail(error, DYNRT_PLAN_BAD_MAGIC,
                      "plan: bad magic %02x %02x %02x %02x, expected \"DXFP\" (not a dynexport plan)", bytes[0],
                      bytes[1], bytes[2], bytes[3]);
  }
  view->major_version = load_u16(bytes + 4);
  view->minor_version = load_u16(bytes + 6);
  if (view->major_version != PLAN_MAJOR_VERSION) {
    return dynrt_fail(error, DYNRT_PLAN_VERSION, "plan: format version %u.%u, this runtime reads %u.x",
                      view->major_version, view->minor_version, PLAN_MAJOR_VERSION);
  }
  payload_bytes = dynrt_load_u32(bytes + 8);
  checksum = dynrt_load_u32(bytes + 12);
  if ((uint64_t)(plan_bytes - PLAN_HEADER_BYTES) < payload_bytes) {
    return dynrt_fail(error, DYNRT_PLAN_TRUNCATED, "plan: payload is %lu bytes, header says %lu (truncated?)",
                      (unsigned long)(plan_bytes - PLAN_HEADER_BYTES), (unsigned long)payload_bytes);
  }
  if ((uint64_t)(plan_bytes - PLAN_HEADER_BYTES) > payload_bytes) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: payload is %lu bytes, header says %lu (trailing data?)",
                      (unsigned long)(plan_bytes - PLAN_HEADER_BYTES), (unsigned long)payload_bytes);
  }
  if (dynrt_crc32(bytes + PLAN_HEADER_BYTES, payload_bytes) != checksum) {
    return dynrt_fail(error, DYNRT_PLAN_CHECKSUM, "plan: checksum mismatch (the file was modified or damaged)");
  }

  cursor.payload = bytes + PLAN_HEADER_BYTES;
  cursor.payload_bytes = payload_bytes;
  cursor.offset = 0;
  status = take_section(&cursor, PLAN_COUNT_FIELDS, 4, "counts", &counts_start, error);
  if (status != DYNRT_OK) return status;
  for (i = 0; i < PLAN_COUNT_FIELDS; ++i) counts[i] = dynrt_load_u32(counts_start + 4 * i);
  view->tensor_count = counts[0];
  view->segment_count = counts[1];
  view->layer_count = counts[2];
  view->instruction_count = counts[3];
  view->artifact_count = counts[4];
  view->operand_count = counts[5];
  view->input_count = counts[6];
  view->output_count = counts[7];
  view->string_bytes = counts[8];
  view->constant_bytes = counts[9];

  if ((status = take_section(&cursor, view->tensor_count, TENSOR_RECORD_BYTES, "tensor", &view->tensor_records,
                             error)) ||
      (status = take_section(&cursor, view->segment_count, SEGMENT_RECORD_BYTES, "segment", &view->segment_records,
                             error)) ||
      (status = take_section(&cursor, view->layer_count, LAYER_RECORD_BYTES, "layer", &view->layer_records, error)) ||
      (status = take_section(&cursor, view->instruction_count, INSTRUCTION_RECORD_BYTES, "instruction",
                             &view->instruction_records, error)) ||
      (status = take_section(&cursor, view->artifact_count, ARTIFACT_RECORD_BYTES, "artifact",
                             &view->artifact_records, error)) ||
      (status = take_section(&cursor, view->operand_count, 4, "operand", &view->operands, error)) ||
      (status = take_section(&cursor, view->input_count, 4, "input", &view->inputs, error)) ||
      (status = take_section(&cursor, view->output_count, 4, "output", &view->outputs, error)) ||
      (status = take_section(&cursor, view->string_bytes, 1, "string", &view->strings, error))) {
    return status;
  }
  if (view->constant_bytes % 4 != 0) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: constants section of %lu bytes is not float32-aligned",
                      (unsigned long)view->constant_bytes);
  }
  status = take_section(&cursor, view->constant_bytes, 1, "constant", &view->constants, error);
  if (status != DYNRT_OK) return status;
  if (cursor.offset != cursor.payload_bytes) {
    return dynrt_fail(error, DYNRT_PLAN_INVALID, "plan: %llu unexpected trailing bytes",
                      (unsigned long long)(cursor.payload_bytes - cursor.offset));
  }
  return DYNRT_OK;
}

void dynrt_plan_tensor(const plan_view* view, uint32_t index, plan_tensor* out) {
  const unsigned char* record = view->tensor_records + (size_t)index * TENSOR_RECORD_BYTES;
  uint32_t i;
  out->name = dynrt_load_u32(record);
  out->dtype = record[4];
  out->layout = record[5];
  out->role = record[6];
  out->rank = record[7];
  for (i = 0; i < 4; ++i) out->dims[i] = dynrt_load_u32(record + 8 + 4 * i);
}

void dynrt_plan_segment(const plan_view* view, uint32_t index, plan_segment* out) {
  const unsigned char* record = view->segment_records + (size_t)index * SEGMENT_RECORD_BYTES;
  out->name = dynrt_load_u32(record);
  out->input_begin = dynrt_load_u32(record + 4);
  out->input_count = dynrt_load_u32(record + 8);
  out->output_begin = dynrt_load_u32(record + 12);
  out->output_count = dynrt_load_u32(record + 16);
  out->max_batch = dynrt_load_u32(record + 20);
}

void dynrt_plan_layer(const plan_view* view, uint32_t index, plan_layer* out) {
  const unsigned char* record = view->layer_records + (size_t)index * LAYER_RECORD_BYTES;
  uint32_t field[35]; /* the record as 35 little-endian words; words 17..19 are floats */
  uint32_t i;
  for (i = 0; i < 35; ++i) field[i] = dynrt_load_u32(record + 4 * i);
  out->name = field[0];
  out->kind = field[1];
  out->gate = field[2];
  for (i = 0; i < 2; ++i) {
    out->input_size[i] = field[3 + i];
    out->kernel[i] = field[5 + i];
    out->stride[i] = field[7 + i];
    out->padding[i] = field[9 + i];
    out->dilation[i] = field[11 + i];
  }
  out->block = field[13];
  out->in_channels = field[14];
  out->out_channels = field[15];
  out->dense_cutoff = field[16];
  out->threshold = dynrt_load_f32(record + 4 * 17);
  out->norm_scale = dynrt_load_f32(record + 4 * 18);
  out->gate_bias = dynrt_load_f32(record + 4 * 19);
  out->gate_weight = field[20];
  out->gate_weight_count = field[21];
  for (i = 0; i < LAYER_TENSOR_SLOTS; ++i) out->tensors[i] = field[22 + i];
  out->macs_per_position = field[33];
  out->gate_macs_per_position = field[34];
}

void dynrt_plan_instruction(const plan_view* view, uint32_t index, plan_instruction* out) {
  const unsigned char* record = view->instruction_records + (size_t)index * INSTRUCTION_RECORD_BYTES;
  out->op = dynrt_load_u32(record);
  out->a = dynrt_load_u32(record + 4);
  out->b = dynrt_load_u32(record + 8);
  out->c = dynrt_load_u32(record + 12);
  out->d = dynrt_load_u32(record + 16);
}

void dynrt_plan_artifact(const plan_view* view, uint32_t index, plan_artifact* out) {
  const unsigned char* record = view->artifact_records + (size_t)index * ARTIFACT_RECORD_BYTES;
  out->name = dynrt_load_u32(record);
  out->size = dynrt_load_u32(record + 4);
  out->crc32 = dynrt_load_u32(record + 8);
}

uint32_t dynrt_plan_operand(const plan_view* view, uint32_t index) {
  return dynrt_load_u32(view->operands + (size_t)index * 4);
}

uint32_t dynrt_plan_input(const plan_view* view, uint32_t index) {
  return dynrt_load_u32(view->inputs + (size_t)index * 4);
}

uint32_t dynrt_plan_output(const plan_view* view, uint32_t index) {
  return dynrt_load_u32(view->outputs + (size_t)index * 4);
}

float dynrt_plan_constant(const plan_view* view, uint32_t index) {
  return dynrt_load_f32(view->constants + (size_t)index * 4);
}

/* Length of the UTF-8 sequence starting at text[0] (Python's strict decoder: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 if it is not valid there. */
static size_t utf8_sequence_length(const unsigned char* text, size_t available) {
  unsigned char lead = text[0];
  size_t length, i;
  uint32_t code_point, minimum;
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) { length = 2; code_point = lead & 0x1Fu; minimum = 0x80; }
  else if (lead >= 0xE0 && lead <= 0xEF) { length = 3; code_point = lead & 0x0Fu; minimum = 0x800; }
  else if (lead >= 0xF0 && lead <= 0xF4) { length = 4; code_point = lead & 0x07u; minimum = 0x10000; }
  else return 0;
  if (length > available) return 0;
  for (i = 1; i < length; ++i) {
    if ((text[i] & 0xC0) != 0x80) return 0;
    code_point = (code_point << 6) | (text[i] & 0x3Fu);
  }
  if (code_point < minimum || code_point > 0x10FFFF || (code_point >= 0xD800 && code_point <= 0xDFFF)) return 0;
  return length;
}

const char* dynrt_plan_string(const plan_view* view, uint32_t offset, const char** problem) {
  const unsigned char* start;
  const unsigned char* end;
  size_t position = 0, remaining;
  if (offset >= view->string_bytes) {
    *problem = "string offset out of range";
    return NULL;
  }
  start = view->strings + offset;
  remaining = view->string_bytes - offset;
  end = (const unsigned char*)memchr(start, 0, remaining);
  if (end == NULL) {
    *problem = "unterminated string";
    return NULL;
  }
  while (start + position < end) {
    size_t length = utf8_sequence_length(start + position, (size_t)(end - start) - position);
    if (length == 0) {
      *problem = "string is not UTF-8";
      return NULL;
    }
    position += length;
  }
  return (const char*)start;
}
