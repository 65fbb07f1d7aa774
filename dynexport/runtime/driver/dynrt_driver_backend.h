/*
 * A backend as the native driver sees it: one entry per backend compiled into the driver,
 * chosen by name (--backend NAME). A backend's CMake fragment registers its entry with
 * dynrt_register_driver_backend (dynexport/runtime/CMakeLists.txt); the driver's CMake
 * writes the table of every registered entry (driver_backends.h in the build folder).
 */
#ifndef DYNRT_DRIVER_BACKEND_H
#define DYNRT_DRIVER_BACKEND_H

#include "dynrt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dynrt_driver_backend {
  const char* name;                 /* the plan's artifact name of the backend: "executorch", ... */
  dynrt_backend_create_fn create;   /* its constructor over the artifact bytes */
  /* (optional, NULL: the --threads asked for) how many threads its segments run with */
  uint32_t (*thread_count)(dynrt_backend_t backend);
  /* (optional) called once, before any backend is made: route the backend library's log to
   * stderr (verbose: its info lines too, else errors only) */
  void (*set_up_process)(int verbose);
} dynrt_driver_backend;

#ifdef __cplusplus
}
#endif

#endif /* DYNRT_DRIVER_BACKEND_H */
