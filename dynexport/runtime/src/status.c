/* Status descriptions and the error-message helper. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>

const char* dynrt_status_string(dynrt_status status) {
  switch (status) {
    case DYNRT_OK: return "ok";
    case DYNRT_INVALID_ARGUMENT: return "invalid argument";
    case DYNRT_WRONG_BUFFER_SIZE: return "wrong buffer size";
    case DYNRT_PLAN_TRUNCATED: return "plan truncated";
    case DYNRT_PLAN_BAD_MAGIC: return "not a dynexport plan (bad magic)";
    case DYNRT_PLAN_VERSION: return "unsupported plan format version";
    case DYNRT_PLAN_CHECKSUM: return "plan checksum mismatch";
    case DYNRT_PLAN_INVALID: return "invalid plan";
    case DYNRT_ARTIFACT_MISMATCH: return "backend artifact does not match the plan";
    case DYNRT_NONFINITE_INPUT: return "input frame contains NaN or Inf";
    case DYNRT_BACKEND_ERROR: return "backend error";
    case DYNRT_SEGMENT_MISMATCH: return "backend segment signature does not match the plan";
    case DYNRT_OUT_OF_MEMORY: return "out of memory";
  }
  return "unknown status";
}

dynrt_status dynrt_fail(error_sink* sink, dynrt_status status, const char* format, ...) {
  if (sink != NULL && sink->text != NULL && sink->capacity > 0) {
    va_list arguments;
    va_start(arguments, format);
    (void)vsnprintf(sink->text, sink->capacity, format, arguments);
    va_end(arguments);
  }
  return status;
}
