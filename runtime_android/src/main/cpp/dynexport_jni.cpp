// The JNI layer of the Kotlin API (org.dynexport.runtime.NativeBridge): a thin, one-to-one
// mapping of dynrt.h. One handle (a jlong) is one backend plus one session over it, as the
// native driver makes them; every function checks its handle and buffers, calls the C
// function and, when it fails, throws org.dynexport.runtime.DynexportException carrying the
// dynrt status code and the runtime's message. Nothing here allocates per frame: step reads
// and writes the caller's direct buffers (or pins its float arrays) and fills the caller's
// stats buffers in place.
//
// Backends: the table the CMake project writes from the core's registrations
// (jni_backends.h: every dynrt_driver_backend compiled in), chosen by name.

#include <jni.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include "dynrt.h"
#include "jni_backends.h"

namespace {

// dynrt_layer_stats as the Kotlin FrameStats reads it from its direct buffer (32 bytes a layer).
static_assert(sizeof(dynrt_layer_stats) == 32, "FrameStats.LAYER_BYTES");
static_assert(offsetof(dynrt_layer_stats, active_blocks) == 0 && offsetof(dynrt_layer_stats, total_blocks) == 4 &&
                  offsetof(dynrt_layer_stats, path) == 8 && offsetof(dynrt_layer_stats, ties) == 12 &&
                  offsetof(dynrt_layer_stats, executed_macs) == 16 && offsetof(dynrt_layer_stats, dense_macs) == 24,
              "FrameStats reads these offsets");
constexpr size_t kScalarBytes = 3 * sizeof(int64_t);  // frame_ns, segments_ns, segments_reused

jclass g_exception = nullptr;          // org/dynexport/runtime/DynexportException (global ref)
jmethodID g_exception_init = nullptr;  // (ILjava/lang/String;)V

struct Handle {
  const dynrt_driver_backend* entry = nullptr;
  dynrt_backend_t backend = nullptr;
  dynrt_session_t session = nullptr;
  void* owned_artifact = nullptr;  // an aligned copy, when the caller's bytes could not be kept
  dynrt_session_info info{};
  ~Handle() {
    dynrt_session_destroy(session);  // before the backend it uses
    dynrt_backend_destroy(backend);  // then the artifact bytes it may read from
    std::free(owned_artifact);
  }
};

// Throws DynexportException(status, message); the caller returns right after.
void throw_status(JNIEnv* env, int status, const std::string& message) {
  if (env->ExceptionCheck()) return;  // one already pending (e.g. an OutOfMemoryError) wins
  jstring text = env->NewStringUTF(message.c_str());
  if (text == nullptr) return;  // OutOfMemoryError pending
  jobject exception = env->NewObject(g_exception, g_exception_init, static_cast<jint>(status), text);
  if (exception != nullptr) env->Throw(static_cast<jthrowable>(exception));
}

void throw_invalid(JNIEnv* env, const std::string& message) { throw_status(env, DYNRT_INVALID_ARGUMENT, message); }

// "<what>: <status string> (status N): <session's last error>", as the native driver words it.
void throw_session(JNIEnv* env, dynrt_status status, const Handle* handle, const char* what) {
  std::string message = std::string(what) + ": " + dynrt_status_string(status) + " (status " +
                        std::to_string(static_cast<int>(status)) + ")";
  const char* last = handle && handle->session ? dynrt_session_last_error(handle->session) : "";
  if (last && *last) message += std::string(": ") + last;
  throw_status(env, status, message);
}

Handle* handle_of(JNIEnv* env, jlong value) {
  if (value == 0) {
    throw_invalid(env, "the session is closed");
    return nullptr;
  }
  return reinterpret_cast<Handle*>(static_cast<intptr_t>(value));
}

// A direct buffer's bytes [offset, offset + length) (the Kotlin side passes position and
// remaining, in bytes; element_bytes: 4 for a FloatBuffer, 1 for a ByteBuffer); nullptr with an
// exception pending when it is not direct or the range is not inside it.
uint8_t* direct_bytes(JNIEnv* env, jobject buffer, jlong offset, jlong length, jlong element_bytes, const char* what) {
  void* base = env->GetDirectBufferAddress(buffer);
  const jlong capacity = base ? env->GetDirectBufferCapacity(buffer) : -1;  // in elements
  if (base == nullptr || capacity < 0) {
    throw_invalid(env, std::string(what) + " is not a direct buffer (allocate it with ByteBuffer.allocateDirect)");
    return nullptr;
  }
  if (offset < 0 || length < 0 || offset + length > capacity * element_bytes) {
    throw_invalid(env, std::string(what) + ": bytes [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
                           ") are outside the buffer's " + std::to_string(capacity * element_bytes));
    return nullptr;
  }
  return static_cast<uint8_t*>(base) + offset;
}

const dynrt_driver_backend* find_backend(const char* name) {
  for (const dynrt_driver_backend* const* entry = kBackends; *entry; ++entry)
    if (std::strcmp((*entry)->name, name) == 0) return *entry;
  return nullptr;
}

std::string utf(JNIEnv* env, jstring text) {
  const char* chars = env->GetStringUTFChars(text, nullptr);
  if (chars == nullptr) return std::string();
  std::string copy = chars;
  env->ReleaseStringUTFChars(text, chars);
  return copy;
}

// The stats the C step fills, pointing into the Kotlin FrameStats' direct buffers, whose
// addresses it took once when it was made (directAddress below); their sizes follow from its
// counts, which the Kotlin side checked against the session. layers_address 0: no stats.
void bind_stats(jlong layers_address, jlong segments_address, jint layer_count, jint segment_count,
                dynrt_frame_stats* stats) {
  std::memset(stats, 0, sizeof *stats);
  stats->layers = reinterpret_cast<dynrt_layer_stats*>(static_cast<intptr_t>(layers_address));
  stats->layer_capacity = static_cast<uint32_t>(layer_count);
  stats->segment_ns = reinterpret_cast<uint64_t*>(static_cast<intptr_t>(segments_address));
  stats->segment_capacity = static_cast<uint32_t>(segment_count);
}

void store_scalars(jlong scalars_address, const dynrt_frame_stats& stats) {
  uint8_t* scalars = reinterpret_cast<uint8_t*>(static_cast<intptr_t>(scalars_address));
  const int64_t values[3] = {static_cast<int64_t>(stats.frame_ns), static_cast<int64_t>(stats.segments_ns),
                             static_cast<int64_t>(stats.segments_reused)};
  std::memcpy(scalars, values, sizeof values);
}

}  // namespace

extern "C" {

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM* vm, void*) {
  JNIEnv* env = nullptr;
  if (vm->GetEnv(reinterpret_cast<void**>(&env), JNI_VERSION_1_6) != JNI_OK) return JNI_ERR;
  jclass local = env->FindClass("org/dynexport/runtime/DynexportException");
  if (local == nullptr) return JNI_ERR;
  g_exception = static_cast<jclass>(env->NewGlobalRef(local));
  env->DeleteLocalRef(local);
  g_exception_init = env->GetMethodID(g_exception, "<init>", "(ILjava/lang/String;)V");
  if (g_exception == nullptr || g_exception_init == nullptr) return JNI_ERR;
  return JNI_VERSION_1_6;
}

JNIEXPORT jstring JNICALL Java_org_dynexport_runtime_NativeBridge_compiledBackends(JNIEnv* env, jclass) {
  return env->NewStringUTF(DYNEXPORT_JNI_BACKEND_NAMES);
}

JNIEXPORT jstring JNICALL Java_org_dynexport_runtime_NativeBridge_statusString(JNIEnv* env, jclass, jint code) {
  return env->NewStringUTF(dynrt_status_string(static_cast<dynrt_status>(code)));
}

// Each backend's process set-up (its library's log to stderr; verbose: info lines too), once.
JNIEXPORT void JNICALL Java_org_dynexport_runtime_NativeBridge_setUpLogging(JNIEnv*, jclass, jboolean verbose) {
  static std::once_flag once;
  std::call_once(once, [verbose] {
    for (const dynrt_driver_backend* const* entry = kBackends; *entry; ++entry)
      if ((*entry)->set_up_process) (*entry)->set_up_process(verbose ? 1 : 0);
  });
}

// plan / artifact: direct ByteBuffers, [offset, offset + length). The plan is copied by the
// session. The artifact is kept by the backend (dynrt_backend_create_fn): used in place when
// artifactInPlace (the Kotlin session then holds the buffer until close) and 64-byte aligned,
// else copied once into aligned memory the handle owns.
JNIEXPORT jlong JNICALL Java_org_dynexport_runtime_NativeBridge_open(JNIEnv* env, jclass, jstring backend_name,
                                                                   jobject plan, jlong plan_offset, jlong plan_length,
                                                                   jobject artifact, jlong artifact_offset,
                                                                   jlong artifact_length, jboolean artifact_in_place,
                                                                   jint threads) {
  const std::string name = utf(env, backend_name);
  if (env->ExceptionCheck()) return 0;
  const dynrt_driver_backend* entry = find_backend(name.c_str());
  if (entry == nullptr) {
    throw_invalid(env, "backend '" + name + "' is not compiled into libdynexport_jni (it has: " +
                           (DYNEXPORT_JNI_BACKEND_NAMES[0] ? DYNEXPORT_JNI_BACKEND_NAMES : "none") +
                           "); build runtime_android with that backend's adapter");
    return 0;
  }
  if (threads < 0) {
    throw_invalid(env, "threads " + std::to_string(threads) + ": expected 0 (the backend's default) or more");
    return 0;
  }
  const uint8_t* plan_bytes = direct_bytes(env, plan, plan_offset, plan_length, 1, "plan");
  if (plan_bytes == nullptr) return 0;
  uint8_t* artifact_bytes = direct_bytes(env, artifact, artifact_offset, artifact_length, 1, "artifact");
  if (artifact_bytes == nullptr) return 0;

  Handle* handle = new (std::nothrow) Handle();
  if (handle == nullptr) {
    throw_status(env, DYNRT_OUT_OF_MEMORY, "out of memory allocating a session handle");
    return 0;
  }
  handle->entry = entry;
  const void* kept = artifact_bytes;
  if (!artifact_in_place || reinterpret_cast<uintptr_t>(artifact_bytes) % 64 != 0) {
    size_t rounded = (static_cast<size_t>(artifact_length) + 64) / 64 * 64;
    // posix_memalign, not aligned_alloc: Android has the latter only from API 28
    if (posix_memalign(&handle->owned_artifact, 64, rounded) != 0) handle->owned_artifact = nullptr;
    if (handle->owned_artifact == nullptr) {
      delete handle;
      throw_status(env, DYNRT_OUT_OF_MEMORY, "out of memory copying the " + name + " artifact (" +
                                                 std::to_string(artifact_length) + " bytes)");
      return 0;
    }
    std::memcpy(handle->owned_artifact, artifact_bytes, static_cast<size_t>(artifact_length));
    kept = handle->owned_artifact;
  }
  dynrt_backend_options options = DYNRT_BACKEND_OPTIONS_INIT;
  options.threads = static_cast<uint32_t>(threads);
  char why[1024] = "";
  dynrt_status status = entry->create(kept, static_cast<size_t>(artifact_length), &options, why, sizeof why,
                                      &handle->backend);
  if (status != DYNRT_OK) {
    delete handle;
    throw_status(env, status, "cannot create the " + name + " backend (threads " + std::to_string(threads) + "): " +
                                  dynrt_status_string(status) + " (status " + std::to_string(status) + ")" +
                                  (why[0] ? std::string(": ") + why : std::string()));
    return 0;
  }
  status = dynrt_session_create(plan_bytes, static_cast<size_t>(plan_length), handle->backend, why, sizeof why,
                                &handle->session);
  if (status == DYNRT_OK) status = dynrt_session_describe(handle->session, &handle->info);
  if (status != DYNRT_OK) {
    delete handle;
    throw_status(env, status, "plan rejected with the " + name + " artifact: " + dynrt_status_string(status) +
                                  " (status " + std::to_string(status) + ")" +
                                  (why[0] ? std::string(": ") + why : std::string()));
    return 0;
  }
  return static_cast<jlong>(reinterpret_cast<intptr_t>(handle));
}

JNIEXPORT void JNICALL Java_org_dynexport_runtime_NativeBridge_close(JNIEnv*, jclass, jlong value) {
  delete reinterpret_cast<Handle*>(static_cast<intptr_t>(value));  // 0: a no-op, as dynrt's destroy
}

// ints: input_rank, input_dims[4], output_rank, output_dims[4], layer_count, segment_count;
// longs: input_bytes, output_bytes, state_bytes, arena_bytes.
JNIEXPORT void JNICALL Java_org_dynexport_runtime_NativeBridge_describe(JNIEnv* env, jclass, jlong value,
                                                                      jintArray ints, jlongArray longs) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return;
  const dynrt_session_info& info = handle->info;
  const jint i[12] = {static_cast<jint>(info.input_rank),     static_cast<jint>(info.input_dims[0]),
                      static_cast<jint>(info.input_dims[1]),  static_cast<jint>(info.input_dims[2]),
                      static_cast<jint>(info.input_dims[3]),  static_cast<jint>(info.output_rank),
                      static_cast<jint>(info.output_dims[0]), static_cast<jint>(info.output_dims[1]),
                      static_cast<jint>(info.output_dims[2]), static_cast<jint>(info.output_dims[3]),
                      static_cast<jint>(info.layer_count),    static_cast<jint>(info.segment_count)};
  const jlong l[4] = {static_cast<jlong>(info.input_bytes), static_cast<jlong>(info.output_bytes),
                      static_cast<jlong>(info.state_bytes), static_cast<jlong>(info.arena_bytes)};
  if (env->GetArrayLength(ints) < 12 || env->GetArrayLength(longs) < 4) {
    throw_invalid(env, "describe: arrays of 12 ints and 4 longs expected");
    return;
  }
  env->SetIntArrayRegion(ints, 0, 12, i);
  env->SetLongArrayRegion(longs, 0, 4, l);
}

JNIEXPORT jint JNICALL Java_org_dynexport_runtime_NativeBridge_threadCount(JNIEnv* env, jclass, jlong value,
                                                                         jint asked) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return 0;
  return handle->entry->thread_count ? static_cast<jint>(handle->entry->thread_count(handle->backend)) : asked;
}

// One frame on direct buffers: input [inOffset, +inBytes), output [outOffset, +outBytes) in
// bytes, inside the buffers (the Kotlin side checked position, remaining and capacity: one JNI
// call per buffer here, not three, as this is the per-frame path); stats addresses as above.
JNIEXPORT void JNICALL Java_org_dynexport_runtime_NativeBridge_stepDirect(
    JNIEnv* env, jclass, jlong value, jobject input, jlong input_offset, jlong input_bytes, jobject output,
    jlong output_offset, jlong output_bytes, jlong layers_address, jlong segments_address, jlong scalars_address,
    jint layer_count, jint segment_count) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return;
  uint8_t* in = static_cast<uint8_t*>(env->GetDirectBufferAddress(input));
  uint8_t* out = static_cast<uint8_t*>(env->GetDirectBufferAddress(output));
  if (in == nullptr || out == nullptr) {
    throw_invalid(env, std::string(in ? "output" : "input") + " is not a direct buffer (allocate it with "
                                                               "ByteBuffer.allocateDirect)");
    return;
  }
  dynrt_frame_stats stats;
  if (scalars_address) bind_stats(layers_address, segments_address, layer_count, segment_count, &stats);
  dynrt_status status = dynrt_session_step(handle->session, reinterpret_cast<const float*>(in + input_offset),
                                           static_cast<size_t>(input_bytes), reinterpret_cast<float*>(out + output_offset),
                                           static_cast<size_t>(output_bytes), scalars_address ? &stats : nullptr);
  if (status != DYNRT_OK) {
    throw_session(env, status, handle, "step");
    return;
  }
  if (scalars_address) store_scalars(scalars_address, stats);
}

// The address of a direct buffer (FrameStats takes its buffers' once), or an exception.
JNIEXPORT jlong JNICALL Java_org_dynexport_runtime_NativeBridge_directAddress(JNIEnv* env, jclass, jobject buffer) {
  void* address = env->GetDirectBufferAddress(buffer);
  if (address == nullptr) throw_invalid(env, "not a direct buffer");
  return static_cast<jlong>(reinterpret_cast<intptr_t>(address));
}

// One frame on float arrays, pinned for the call (GetPrimitiveArrayCritical: no copy on
// HotSpot and ART unless the GC cannot pin; the region has no other JNI call in it).
JNIEXPORT void JNICALL Java_org_dynexport_runtime_NativeBridge_stepArrays(
    JNIEnv* env, jclass, jlong value, jfloatArray input, jint input_offset, jint input_length, jfloatArray output,
    jint output_offset, jint output_length, jlong layers_address, jlong segments_address, jlong scalars_address,
    jint layer_count, jint segment_count) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return;
  if (input_offset < 0 || input_length < 0 || output_offset < 0 || output_length < 0 ||
      static_cast<jlong>(input_offset) + input_length > env->GetArrayLength(input) ||
      static_cast<jlong>(output_offset) + output_length > env->GetArrayLength(output)) {
    throw_invalid(env, "step: offset and length outside the array");
    return;
  }
  dynrt_frame_stats stats;
  if (scalars_address) bind_stats(layers_address, segments_address, layer_count, segment_count, &stats);
  float* in = static_cast<float*>(env->GetPrimitiveArrayCritical(input, nullptr));
  if (in == nullptr) return;  // OutOfMemoryError pending
  float* out = static_cast<float*>(env->GetPrimitiveArrayCritical(output, nullptr));
  if (out == nullptr) {
    env->ReleasePrimitiveArrayCritical(input, in, JNI_ABORT);
    return;
  }
  dynrt_status status = dynrt_session_step(handle->session, in + input_offset, static_cast<size_t>(input_length) * 4,
                                           out + output_offset, static_cast<size_t>(output_length) * 4,
                                           scalars_address ? &stats : nullptr);
  env->ReleasePrimitiveArrayCritical(output, out, 0);
  env->ReleasePrimitiveArrayCritical(input, in, JNI_ABORT);  // not written: nothing to copy back
  if (status != DYNRT_OK) {
    throw_session(env, status, handle, "step");
    return;
  }
  if (scalars_address) store_scalars(scalars_address, stats);
}

JNIEXPORT void JNICALL Java_org_dynexport_runtime_NativeBridge_reset(JNIEnv* env, jclass, jlong value) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return;
  dynrt_status status = dynrt_session_reset(handle->session);
  if (status != DYNRT_OK) throw_session(env, status, handle, "reset");
}

// ints: blocks, block_rows, block_cols, out_channels; returns the layer's name.
JNIEXPORT jstring JNICALL Java_org_dynexport_runtime_NativeBridge_describeLayer(JNIEnv* env, jclass, jlong value,
                                                                              jint layer, jintArray ints) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return nullptr;
  dynrt_layer_info info{};
  dynrt_status status = dynrt_session_describe_layer(handle->session, static_cast<uint32_t>(layer), &info);
  if (status != DYNRT_OK) {
    throw_session(env, status, handle, ("describeLayer(" + std::to_string(layer) + ")").c_str());
    return nullptr;
  }
  const jint values[4] = {static_cast<jint>(info.blocks), static_cast<jint>(info.block_rows),
                          static_cast<jint>(info.block_cols), static_cast<jint>(info.out_channels)};
  env->SetIntArrayRegion(ints, 0, 4, values);
  return env->NewStringUTF(info.name ? info.name : "");
}

// Direct byte buffers (either may be null): [offset, +capacity) bytes.
JNIEXPORT void JNICALL Java_org_dynexport_runtime_NativeBridge_layerDecisions(
    JNIEnv* env, jclass, jlong value, jint layer, jobject mask, jlong mask_offset, jlong mask_capacity,
    jobject channels, jlong channel_offset, jlong channel_capacity) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return;
  uint8_t* mask_bytes = nullptr;
  uint8_t* channel_bytes = nullptr;
  if (mask && !(mask_bytes = direct_bytes(env, mask, mask_offset, mask_capacity, 1, "blockMask"))) return;
  if (channels && !(channel_bytes = direct_bytes(env, channels, channel_offset, channel_capacity, 1, "channelDecisions")))
    return;
  dynrt_status status = dynrt_session_layer_decisions(handle->session, static_cast<uint32_t>(layer), mask_bytes,
                                                      mask ? static_cast<size_t>(mask_capacity) : 0, channel_bytes,
                                                      channels ? static_cast<size_t>(channel_capacity) : 0);
  if (status != DYNRT_OK) throw_session(env, status, handle, ("layerDecisions(" + std::to_string(layer) + ")").c_str());
}

JNIEXPORT void JNICALL Java_org_dynexport_runtime_NativeBridge_setTieDecisions(JNIEnv* env, jclass, jlong value,
                                                                             jint layer, jobject mask,
                                                                             jlong offset, jlong blocks) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return;
  const uint8_t* bytes = direct_bytes(env, mask, offset, blocks, 1, "referenceMask");
  if (bytes == nullptr) return;
  dynrt_status status = dynrt_session_set_tie_decisions(handle->session, static_cast<uint32_t>(layer), bytes,
                                                        static_cast<size_t>(blocks));
  if (status != DYNRT_OK) throw_session(env, status, handle, ("setTieDecisions(" + std::to_string(layer) + ")").c_str());
}

JNIEXPORT jlong JNICALL Java_org_dynexport_runtime_NativeBridge_timeSegment(JNIEnv* env, jclass, jlong value,
                                                                          jint segment, jint batch) {
  Handle* handle = handle_of(env, value);
  if (handle == nullptr) return 0;
  uint64_t ns = 0;
  dynrt_status status = dynrt_session_time_segment(handle->session, static_cast<uint32_t>(segment),
                                                   static_cast<uint32_t>(batch), &ns);
  if (status != DYNRT_OK) {
    throw_session(env, status, handle, ("timeSegment(" + std::to_string(segment) + ", " + std::to_string(batch) + ")").c_str());
    return 0;
  }
  return static_cast<jlong>(ns);
}

}  // extern "C"
