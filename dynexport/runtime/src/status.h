/*
 * Failing with a reason: every function that can fail returns a dynrt_status and writes a
 * one-line, NUL-terminated message naming what is wrong into an error_sink (a caller
 * buffer; capacity 0 means "the caller does not want the text").
 */
#ifndef DYNRT_STATUS_H
#define DYNRT_STATUS_H

#include <stddef.h>

#include "dynrt.h"

typedef struct error_sink {
  char* text;
  size_t capacity;
} error_sink;

#if defined(__GNUC__) || defined(__clang__)
#define DYNRT_PRINTF_LIKE(format_index, first_argument) \
  __attribute__((format(printf, format_index, first_argument)))
#else
#define DYNRT_PRINTF_LIKE(format_index, first_argument)
#endif

/* Writes the formatted message into the sink (truncated to fit) and returns `status`, so a
 * check reads `return dynrt_fail(sink, DYNRT_PLAN_INVALID, "...", ...);`. */
dynrt_status dynrt_fail(error_sink* sink, dynrt_status status, const char* format, ...) DYNRT_PRINTF_LIKE(3, 4);

#endif /* DYNRT_STATUS_H */
