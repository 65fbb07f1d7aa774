/* model.onnxpack reader: see dynrt_onnxruntime_pack.h. Invariant: no byte is read before the
 * range holding it has been checked against pack_bytes (all arithmetic in uint64_t, which
 * cannot overflow for the sizes checked first). */
#include "dynrt_onnxruntime_pack.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char kMagic[8] = {'D', 'X', 'O', 'N', 'N', 'X', 'P', '1'};
enum { kHeaderBytes = 16, kEntryFixedBytes = 4 + 8 + 8 };

static uint32_t read_u32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t read_u64(const uint8_t* p) { return (uint64_t)read_u32(p) | ((uint64_t)read_u32(p + 4) << 32); }

static int refuse(char* message, size_t capacity, const char* format, ...) {
  if (message != NULL && capacity > 0) {
    va_list args;
    va_start(args, format);
    vsnprintf(message, capacity, format, args);
    va_end(args);
  }
  return -1;
}

static int by_offset(const void* a, const void* b) {
  const dynrt_onnxpack_entry* x = *(const dynrt_onnxpack_entry* const*)a;
  const dynrt_onnxpack_entry* y = *(const dynrt_onnxpack_entry* const*)b;
  return x->model < y->model ? -1 : x->model > y->model ? 1 : 0;
}

int dynrt_onnxpack_read(const void* pack, size_t pack_bytes, dynrt_onnxpack_entry** entries_out, uint32_t* count_out,
                        char* message, size_t message_capacity) {
  const uint8_t* bytes = (const uint8_t*)pack;
  uint64_t size = pack_bytes, position = kHeaderBytes, end;
  uint32_t count, i;
  dynrt_onnxpack_entry* entries;
  const dynrt_onnxpack_entry** sorted;
  *entries_out = NULL;
  *count_out = 0;
  if (bytes == NULL || size < kHeaderBytes)
    return refuse(message, message_capacity, "model.onnxpack: %zu bytes, shorter than its %d-byte header (truncated)",
                  pack_bytes, kHeaderBytes);
  if (memcmp(bytes, kMagic, sizeof kMagic) != 0)
    return refuse(message, message_capacity, "model.onnxpack: bad magic (not an ONNX Runtime artifact of dynexport)");
  count = read_u32(bytes + 8);
  if (count < 1 || count > DYNRT_ONNXPACK_MAX_SEGMENTS)
    return refuse(message, message_capacity, "model.onnxpack: segment count %u, expected 1..%u", count,
                  DYNRT_ONNXPACK_MAX_SEGMENTS);
  entries = (dynrt_onnxpack_entry*)calloc(count, sizeof *entries);
  sorted = (const dynrt_onnxpack_entry**)calloc(count, sizeof *sorted);
  if (entries == NULL || sorted == NULL) {
    free(entries);
    free((void*)sorted);
    return refuse(message, message_capacity, "model.onnxpack: out of memory for %u entries", count);
  }
  for (i = 0; i < count; ++i) {
    uint32_t name_bytes;
    uint64_t offset, model_bytes;
    if (position + 4 > size) {
      refuse(message, message_capacity, "model.onnxpack: entry %u is past the end of the file (truncated)", i);
      goto fail;
    }
    name_bytes = read_u32(bytes + position);
    if (name_bytes < 1 || name_bytes > DYNRT_ONNXPACK_MAX_NAME_BYTES || position + kEntryFixedBytes + name_bytes > size) {
      refuse(message, message_capacity, "model.onnxpack: entry %u has a name of %u bytes that does not fit the file",
             i, name_bytes);
      goto fail;
    }
    offset = read_u64(bytes + position + 4 + name_bytes);
    model_bytes = read_u64(bytes + position + 4 + name_bytes + 8);
    entries[i].name = (const char*)(bytes + position + 4);
    entries[i].name_bytes = name_bytes;
    if (model_bytes == 0 || offset > size || model_bytes > size - offset) {
      refuse(message, message_capacity,
             "model.onnxpack: segment %.*s's model (offset %llu, %llu bytes) is outside the file's %zu bytes "
             "(truncated or tampered)", (int)name_bytes, entries[i].name, (unsigned long long)offset,
             (unsigned long long)model_bytes, pack_bytes);
      goto fail;
    }
    entries[i].model = bytes + offset;
    entries[i].model_bytes = (size_t)model_bytes;
    position += kEntryFixedBytes + name_bytes;
    sorted[i] = &entries[i];
  }
  /* models after the directory, in no overlap */
  qsort((void*)sorted, count, sizeof *sorted, by_offset);
  end = position;
  for (i = 0; i < count; ++i) {
    uint64_t offset = (uint64_t)(sorted[i]->model - bytes);
    if (offset < end) {
      refuse(message, message_capacity, "model.onnxpack: segment %.*s's model overlaps the directory or another model",
             (int)sorted[i]->name_bytes, sorted[i]->name);
      goto fail;
    }
    end = offset + sorted[i]->model_bytes;
  }
  for (i = 0; i < count; ++i) {
    uint32_t j;
    for (j = 0; j < i; ++j) {
      if (entries[j].name_bytes == entries[i].name_bytes &&
          memcmp(entries[j].name, entries[i].name, entries[i].name_bytes) == 0) {
        refuse(message, message_capacity, "model.onnxpack: segment %.*s appears twice", (int)entries[i].name_bytes,
               entries[i].name);
        goto fail;
      }
    }
  }
  free((void*)sorted);
  *entries_out = entries;
  *count_out = count;
  return 0;
fail:
  free((void*)sorted);
  free(entries);
  return -1;
}
