/* Dims as text for messages ("[1, 16, 16, 8]"), the one formatter of the runtime, its
 * adapters and the driver (dynrt_backend_impl.h). */
#include <stdio.h>

#include "dynrt_backend_impl.h"

const char* dynrt_format_dims(char* text, size_t capacity, uint32_t rank, const uint64_t* dims, int any_batch) {
  size_t used = 0;
  uint32_t i;
  if (text == NULL || capacity == 0) return "";
  text[0] = '\0';
  used += (size_t)snprintf(text, capacity, "[");
  for (i = 0; i < rank && used < capacity; ++i) {
    const char* separator = i > 0 ? ", " : "";
    if (i == 0 && any_batch) {
      used += (size_t)snprintf(text + used, capacity - used, "%sN", separator);
    } else {
      used += (size_t)snprintf(text + used, capacity - used, "%s%llu", separator, (unsigned long long)dims[i]);
    }
  }
  if (used < capacity) (void)snprintf(text + used, capacity - used, "]");
  return text;
}
