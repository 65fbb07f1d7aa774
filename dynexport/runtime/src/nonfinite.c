/* The NaN / Inf scan of float32 arrays (nonfinite.h): a leaf that step.c (the frame check)
 * and gates.c (the check folded into the first gate's pass) both call. */
#include "nonfinite.h"

#include <string.h>

/* Index of the first NaN or Inf of a float32 array, or `count` if there is none. Works on
 * the bit pattern (all exponent bits set), so it holds under -ffast-math too, and reads
 * through memcpy so an unaligned caller buffer is fine. Every frame is scanned whole, so
 * the common case is branch-free: (bits & exponent) + 0x00800000 reaches bit 31 only for an
 * all-ones exponent, and a chunk ORs those (SIMD code); only a flagged chunk is searched. */
size_t dynrt_first_nonfinite(const float* values, size_t count, uint32_t* bits_out) {
  enum { CHUNK = 256 };
  const unsigned char* bytes = (const unsigned char*)values;
  size_t begin, i;
  for (begin = 0; begin < count; begin += CHUNK) {
    const size_t end = count - begin < CHUNK ? count : begin + CHUNK;
    uint32_t flags = 0;
    for (i = begin; i < end; ++i) {
      uint32_t bits;
      memcpy(&bits, bytes + 4 * i, 4);
      flags |= (bits & 0x7F800000u) + 0x00800000u;
    }
    if ((flags & 0x80000000u) == 0) continue;
    for (i = begin; i < end; ++i) {
      uint32_t bits;
      memcpy(&bits, bytes + 4 * i, 4);
      if ((bits & 0x7F800000u) == 0x7F800000u) {
        *bits_out = bits;
        return i;
      }
    }
  }
  return count;
}
