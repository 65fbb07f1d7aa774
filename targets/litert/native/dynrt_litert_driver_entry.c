/* The LiteRT backend's entry in the native driver's backend table
 * (dynexport/runtime/driver/dynrt_driver_backend.h): its constructor and its verbosity. */
#include "dynrt_driver_backend.h"
#include "dynrt_litert.h"

static void set_up_process(int verbose) { dynrt_litert_set_verbose(verbose); }

/* thread_count NULL: the driver reports the --threads asked for, which is what XNNPACK is given */
const dynrt_driver_backend dynrt_litert_driver_entry = {"litert", dynrt_litert_backend_create, NULL, set_up_process};
