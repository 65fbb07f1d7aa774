/* Backends are made by adapters (dynrt_callback_backend_create, the ExecuTorch adapter, ...);
 * destroying one goes through its own destroy function. */
#include <stddef.h>

#include "dynrt_backend_impl.h"

void dynrt_backend_destroy(dynrt_backend_t backend) {
  if (backend != NULL && backend->destroy != NULL) backend->destroy(backend);
}
