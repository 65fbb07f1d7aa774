/* The ONNX Runtime backend's entry in the native driver's backend table
 * (dynexport/runtime/driver/dynrt_driver_backend.h): its constructor and its log level. */
#include "dynrt_driver_backend.h"
#include "dynrt_onnxruntime.h"

static void set_up_process(int verbose) { dynrt_onnxruntime_set_verbose(verbose); }

/* thread_count NULL: the driver reports the --threads asked for, which is what ORT is given */
const dynrt_driver_backend dynrt_onnxruntime_driver_entry = {"onnxruntime", dynrt_onnxruntime_backend_create, NULL,
                                                            set_up_process};
