// The ExecuTorch backend's entry in the native driver's backend table
// (dynexport/runtime/driver/dynrt_driver_backend.h): its constructor, its thread count, and
// its log routed to stderr.

#include <cstdio>

#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include "dynrt_driver_backend.h"
#include "dynrt_executorch.h"

namespace {

bool g_verbose = false;

// ExecuTorch logs through its platform layer; by default only errors get through (its
// cpuinfo and thread pool report at info level on every start).
void emit_executorch_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
                         const char* message, size_t length) {
  if (!g_verbose && (level == kDebug || level == kInfo)) return;
  std::fprintf(stderr, "executorch %c %s:%zu] %.*s\n", static_cast<char>(level), filename ? filename : "?", line,
               static_cast<int>(length), message);
}

void set_up_process(int verbose) {
  g_verbose = verbose != 0;
  ::executorch::runtime::register_pal(::executorch::runtime::PalImpl::create(emit_executorch_log, __FILE__));
}

}  // namespace

extern "C" const dynrt_driver_backend dynrt_executorch_driver_entry = {
    "executorch", dynrt_executorch_backend_create_v2, dynrt_executorch_thread_count, set_up_process};
