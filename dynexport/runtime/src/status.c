/* Status descriptions (the table of dynrt_status.def) and the error-message helper. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>

const char* dynrt_status_string(dynrt_status status) {
  switch (status) {
#define DYNRT_STATUS(name, code, description) \
  case DYNRT_##name:                          \
    return description;
#include "dynrt_status.def"
#undef DYNRT_STATUS
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
