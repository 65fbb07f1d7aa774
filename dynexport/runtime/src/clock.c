/* The monotonic clock for frame and segment timings. clock_gettime is POSIX, not C99,
 * which is why this one file asks for the POSIX interfaces. */
#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 199309L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 199309L
#endif

#include <time.h>

#include "session_internal.h"

uint64_t dynrt_monotonic_ns(void) {
#if defined(CLOCK_MONOTONIC)
  struct timespec now;
  if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) return 0;
  return (uint64_t)now.tv_sec * UINT64_C(1000000000) + (uint64_t)now.tv_nsec;
#else
  return 0;
#endif
}
