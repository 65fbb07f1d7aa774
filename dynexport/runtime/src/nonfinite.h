/* Finding NaN and Inf in float32 arrays: a leaf of the runtime (it calls nothing of it). */
#ifndef DYNRT_NONFINITE_H
#define DYNRT_NONFINITE_H

#include <stddef.h>
#include <stdint.h>

/* Index of the first NaN or Inf of a float32 array (any alignment), or `count` if none;
 * *bits_out gets that value's bit pattern. */
size_t dynrt_first_nonfinite(const float* values, size_t count, uint32_t* bits_out);

#endif /* DYNRT_NONFINITE_H */
