/* CRC-32 (the zlib / PNG polynomial): plan checksums and artifact identity. */
#ifndef DYNRT_CRC32_H
#define DYNRT_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* zlib.crc32(data) of `bytes` bytes. */
uint32_t dynrt_crc32(const void* data, size_t bytes);

#endif /* DYNRT_CRC32_H */
