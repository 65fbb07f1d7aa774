/* What every backend adapter needs around its runtime's own API (dynrt_backend_impl.h):
 * messages, operand text, and loading a runtime library the app ships. Kept here so the
 * adapters (targets/<name>/native) hold only what is particular to their runtime. */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>

#include "dynrt_backend_impl.h"

void dynrt_backend_message(char* message, size_t capacity, const char* format, ...) {
  va_list args;
  if (message == NULL || capacity == 0) return;
  va_start(args, format);
  vsnprintf(message, capacity, format, args);
  va_end(args);
}

const char* dynrt_format_operand_dims(char* text, size_t capacity, const dynrt_operand_info* operand, int any_batch) {
  uint64_t dims[4] = {0, 0, 0, 0};
  uint32_t i;
  for (i = 0; i < operand->rank && i < 4; ++i) dims[i] = operand->dims[i];
  return dynrt_format_dims(text, capacity, operand->rank < 4 ? operand->rank : 4, dims, any_batch);
}

const char* dynrt_dtype_name(uint32_t dtype) { return dtype == 0 ? "float32" : dtype == 1 ? "int32" : "?"; }

void* dynrt_open_runtime_library(const char* runtime, const char* const* candidates, size_t count, const char* hint,
                                 char* chosen, size_t chosen_capacity, char* message, size_t capacity) {
  char tried[1024] = "";
  size_t used = 0;
  size_t i;
  for (i = 0; i < count; ++i) {
    void* handle;
    if (candidates[i] == NULL || candidates[i][0] == '\0') continue;
    handle = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL);
    if (handle != NULL) {
      if (chosen != NULL && chosen_capacity > 0) snprintf(chosen, chosen_capacity, "%s", candidates[i]);
      return handle;
    }
    if (used < sizeof tried) {
      const char* why = dlerror();
      int wrote = snprintf(tried + used, sizeof tried - used, "%s%s", used ? "; " : "", why ? why : candidates[i]);
      if (wrote > 0) used += (size_t)wrote;
    }
  }
  dynrt_backend_message(message, capacity, "cannot load %s (%s): %s", runtime, used ? tried : "no candidate path", hint);
  return NULL;
}
