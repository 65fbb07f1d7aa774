/*
 * Reader of model.onnxpack (the format is in ../README.md and ../pack.py): the directory of
 * one ONNX model per segment. Every offset and size is checked against the file before any
 * byte it names is read; the entries point into the caller's bytes (nothing is copied).
 */
#ifndef DYNRT_ONNXRUNTIME_PACK_H
#define DYNRT_ONNXRUNTIME_PACK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DYNRT_ONNXPACK_MAX_SEGMENTS 4096u
#define DYNRT_ONNXPACK_MAX_NAME_BYTES 255u

typedef struct dynrt_onnxpack_entry {
  const char* name;      /* not NUL-terminated: name_bytes long, inside the pack */
  uint32_t name_bytes;
  const uint8_t* model;  /* inside the pack */
  size_t model_bytes;
} dynrt_onnxpack_entry;

/* Reads the directory of `pack` into *entries_out (malloc'ed, *count_out entries; the caller
 * frees it). Returns 0, or -1 with the reason in message (truncated, bad magic, an entry
 * outside the file or overlapping, a repeated name, out of memory). */
int dynrt_onnxpack_read(const void* pack, size_t pack_bytes, dynrt_onnxpack_entry** entries_out, uint32_t* count_out,
                        char* message, size_t message_capacity);

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_ONNXRUNTIME_PACK_H */
