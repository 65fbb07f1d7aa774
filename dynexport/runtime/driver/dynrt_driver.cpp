// dynrt_driver: streams a clip through the native runtime on any backend compiled in, for
// `dynexport verify` / `dynexport bench` (host, qemu-aarch64, adb).
//
//   dynrt_driver --backend NAME --plan plan.dxfp --artifact ARTIFACT --frames frames.bin --outputs outputs.bin
//       [--decisions decisions.bin] [--tie-decisions ties.bin] [--reset-frames 0,17,...]
//       [--stats stats.jsonl] [--threads N] [--repeat R] [--warmup W] [--verbose]
//       [--dense-plan dense.dxfp --dense-artifact dense.pte [--dense-outputs dense_outputs.bin]]
//
// Files (all raw, native little-endian):
//   frames.bin     T frames, each info.input_bytes of float32 NHWC; T = size / input_bytes.
//   outputs.bin    (written) T * info.output_bytes: each frame's output.
//   decisions.bin  (written) per frame, per gated layer in plan order: the block mask
//                  (blocks bytes, 1 = computed), then the channel decisions (out_channels
//                  bytes: 0 skip, 1 reuse, 2 compute).
//   ties.bin       (read) per frame, per layer: the reference block mask (blocks bytes) whose
//                  decisions blocks in the tie band take (dynrt_session_set_tie_decisions).
//   stats.jsonl    (written) one JSON object per frame and pass, see README.md.
// --reset-frames: dynrt_session_reset before stepping these frames (scene cuts).
// --repeat R: stream the clip R times, resetting the session before each pass; outputs and
//   decisions come from the last pass, stats from every pass.
// --warmup W (default 1): W untimed passes before those R (not in stats or the summary): the
//   first calls of an XNNPACK method set up its runtime.
// --dense-plan/--dense-artifact (bench mode): a second session, on its own backend with the
//   same --threads, over the dense export of the same model (same input/output sizes, else
//   exit 2). Every frame of every pass runs through both, interleaved: even frames dense
//   first, odd frames dynamic first. The dense session is reset with the dynamic one (each
//   pass, --reset-frames) and takes no tie decisions. Each step is timed around
//   dynrt_session_step with a steady clock: "wall_ns" (dynamic) and "dense_ns" in stats.
//   --dense-outputs: the dense session's outputs of the last pass, laid out like outputs.bin.
// --shared-sessions-check: instead of the above, a check of the backend itself: sessions
//   sharing one backend object. Each of 3 clips (the frames forwards, backwards, and from the
//   middle, looped) is stepped by a lone session (its own backend); then 2 and 3 sessions on
//   ONE backend, each on its own clip, are created one by one (the live ones stepping between
//   creations), stepped together and destroyed one by one (the others stepping on), in every
//   creation and destruction order; every output must equal the lone session's bit for bit.
//   outputs.bin gets clip 0's lone outputs; stdout a JSON summary; exit 3 on any difference.
// --tune-segments GROUPS (tune mode, for `dynexport tune`): instead of streaming, time
//   segments on the backend. GROUPS is "segment:batch,segment:batch,.../segment:batch,...":
//   groups of calls separated by '/'. The frames are stepped once first (the buffers then
//   hold real activations), then per group --warmup W untimed rounds and --rounds R timed
//   ones; each round runs every call of the group once, in a fresh order shuffled with
//   --seed S (default 0) and the group's index, timed around the backend call
//   (dynrt_session_time_segment). --copy-bytes N: also time a memcpy of max(N, 64 KiB) bytes,
//   2 untimed and 21 timed times (the cost of gathering tiles, on this device). --outputs is
//   not needed. stdout: {"backend", "threads", "rounds", "warmup", "copy_bytes", "copy_ns":
//   [21 times], "tune": [per group: [per call: {"segment", "batch", "ns": [R times]}]]}.
// --backend NAME: which of the backends compiled in (driver_backends.h, written by CMake from
//   what each backend's fragment registered) runs the segments; the artifact is its file.
// --threads N: the backend's threads (dynrt_backend_options.threads), 0 = its default.
// --verbose: also the backend library's info log lines (by default only its errors reach stderr).
// stdout: one JSON summary line; in bench mode with "median_dense_ns" and "median_dynamic_ns":
//   for each frame the median of its R step times, then the median of those over the frames
//   (a median is the sorted values' element n / 2).
// Exit codes: 0 ok, 2 bad arguments or files (a dense plan of other sizes too), 3 a runtime
// status error (dynrt_status_string and the session's last error on stderr).

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <random>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "driver_backends.h"
#include "dynrt.h"
#include "dynrt_backend_impl.h"  // dynrt_format_dims

namespace {

constexpr int kExitOk = 0, kExitUsage = 2, kExitStatus = 3;

const char* const kUsage =
    "usage: dynrt_driver --backend NAME --plan plan.dxfp --artifact ARTIFACT --frames frames.bin --outputs outputs.bin\n"
    "         [--decisions decisions.bin] [--tie-decisions ties.bin] [--reset-frames 0,17,...]\n"
    "         [--stats stats.jsonl] [--threads N] [--repeat R] [--warmup W] [--verbose]\n"
    "         [--dense-plan dense.dxfp --dense-artifact dense.pte [--dense-outputs dense_outputs.bin]]\n"
    "       dynrt_driver --backend NAME --plan plan.dxfp --artifact ARTIFACT --frames frames.bin --outputs outputs.bin\n"
    "         --shared-sessions-check [--threads N]\n"
    "       dynrt_driver --backend NAME --plan plan.dxfp --artifact ARTIFACT --frames frames.bin\n"
    "         --tune-segments S:B,S:B/S:B,... [--rounds R] [--warmup W] [--seed S] [--copy-bytes N] [--threads N]\n"
    "  --backend NAME: one of the backends compiled in: " DYNRT_COMPILED_BACKEND_NAMES ".\n"
    "  --warmup W: untimed passes first (default 1). --dense-*: bench mode, a dense session stepped\n"
    "  on every frame next to the dynamic one (even frames dense first); stats gain dense_ns and\n"
    "  wall_ns, the summary median_dense_ns and median_dynamic_ns: per frame the median over the\n"
    "  R passes, then the median over frames. --shared-sessions-check: sessions sharing one backend,\n"
    "  created and destroyed in every order, must give a lone session's outputs (see the source).\n";

// An error that ends the run with an exit code; main prints it.
struct Failure {
  int code;
  std::string message;
};

Failure fail(int code, const char* format, ...) __attribute__((format(printf, 2, 3)));

Failure fail(int code, const char* format, ...) {
  char text[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof text, format, args);
  va_end(args);
  return Failure{code, text};
}

struct Options {
  const char* backend = nullptr;
  const char *plan = nullptr, *artifact = nullptr, *frames = nullptr, *outputs = nullptr;
  const char *decisions = nullptr, *ties = nullptr, *stats = nullptr;
  const char *dense_plan = nullptr, *dense_artifact = nullptr, *dense_outputs = nullptr;  // bench mode
  std::vector<uint64_t> reset_frames;
  uint32_t threads = 0;
  uint32_t repeat = 1;
  uint32_t warmup = 1;
  bool verbose = false;
  bool shared_sessions_check = false;
  const char* tune_segments = nullptr;  // tune mode
  uint32_t rounds = 25;
  uint64_t seed = 0;
  uint64_t copy_bytes = 0;
};

bool parse_u64(const char* text, uint64_t* value) {
  if (text == nullptr || *text < '0' || *text > '9') return false;
  errno = 0;
  char* end = nullptr;
  unsigned long long parsed = std::strtoull(text, &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *value = parsed;
  return true;
}

Options parse_arguments(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    const char* value = nullptr;
    size_t equals = flag.find('=');
    if (flag.rfind("--", 0) == 0 && equals != std::string::npos) {
      value = argv[i] + equals + 1;
      flag.resize(equals);
    } else if (flag == "--verbose") {
      options.verbose = true;
      continue;
    } else if (flag == "--shared-sessions-check") {
      options.shared_sessions_check = true;
      continue;
    } else if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(kExitOk);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      throw fail(kExitUsage, "%s needs a value\n%s", flag.c_str(), kUsage);
    }
    uint64_t number = 0;
    if (flag == "--backend") options.backend = value;
    else if (flag == "--plan") options.plan = value;
    else if (flag == "--artifact") options.artifact = value;
    else if (flag == "--frames") options.frames = value;
    else if (flag == "--outputs") options.outputs = value;
    else if (flag == "--decisions") options.decisions = value;
    else if (flag == "--tie-decisions") options.ties = value;
    else if (flag == "--stats") options.stats = value;
    else if (flag == "--dense-plan") options.dense_plan = value;
    else if (flag == "--dense-artifact") options.dense_artifact = value;
    else if (flag == "--dense-outputs") options.dense_outputs = value;
    else if (flag == "--tune-segments") options.tune_segments = value;
    else if (flag == "--rounds") {
      if (!parse_u64(value, &number) || number < 1 || number > 1000000)
        throw fail(kExitUsage, "--rounds %s: expected a count >= 1", value);
      options.rounds = static_cast<uint32_t>(number);
    } else if (flag == "--copy-bytes") {
      if (!parse_u64(value, &number) || number > (uint64_t{1} << 32))
        throw fail(kExitUsage, "--copy-bytes %s: expected a byte count up to 4 GiB", value);
      options.copy_bytes = number;
    } else if (flag == "--seed") {
      if (!parse_u64(value, &number)) throw fail(kExitUsage, "--seed %s: expected a number >= 0", value);
      options.seed = number;
    }
    else if (flag == "--threads") {
      if (!parse_u64(value, &number) || number > 1024) throw fail(kExitUsage, "--threads %s: expected 0..1024", value);
      options.threads = static_cast<uint32_t>(number);
    } else if (flag == "--repeat") {
      if (!parse_u64(value, &number) || number < 1 || number > 1000000)
        throw fail(kExitUsage, "--repeat %s: expected a count >= 1", value);
      options.repeat = static_cast<uint32_t>(number);
    } else if (flag == "--warmup") {
      if (!parse_u64(value, &number) || number > 1000000)
        throw fail(kExitUsage, "--warmup %s: expected a count >= 0", value);
      options.warmup = static_cast<uint32_t>(number);
    } else if (flag == "--reset-frames") {
      std::string list = value;
      size_t start = 0;
      while (start <= list.size() && !list.empty()) {
        size_t comma = list.find(',', start);
        std::string item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!parse_u64(item.c_str(), &number))
          throw fail(kExitUsage, "--reset-frames %s: '%s' is not a frame index", value, item.c_str());
        options.reset_frames.push_back(number);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else {
      throw fail(kExitUsage, "unknown option %s\n%s", flag.c_str(), kUsage);
    }
  }
  const char* missing = !options.plan ? "--plan" : !options.artifact ? "--artifact" : !options.frames ? "--frames"
                        : !options.outputs && !options.tune_segments ? "--outputs"
                        : !options.backend ? "--backend" : nullptr;
  if (missing) throw fail(kExitUsage, "missing %s\n%s", missing, kUsage);
  if (!options.dense_plan != !options.dense_artifact)
    throw fail(kExitUsage, "%s needs %s too (bench mode takes the dense export's plan and artifact)",
               options.dense_plan ? "--dense-plan" : "--dense-artifact",
               options.dense_plan ? "--dense-artifact" : "--dense-plan");
  if (options.dense_outputs && !options.dense_plan)
    throw fail(kExitUsage, "--dense-outputs needs --dense-plan and --dense-artifact");
  std::sort(options.reset_frames.begin(), options.reset_frames.end());
  return options;
}

// --- backends ---------------------------------------------------------------------------------

std::string compiled_backend_names() {
  std::string names;
  for (const dynrt_driver_backend* entry : kCompiledBackends) names += (names.empty() ? "" : ", ") + std::string(entry->name);
  return names;
}

const dynrt_driver_backend& find_backend(const char* name) {
  for (const dynrt_driver_backend* entry : kCompiledBackends)
    if (std::strcmp(entry->name, name) == 0) return *entry;
  throw fail(kExitUsage, "--backend %s: not compiled into this driver (it has: %s); build the runtime with that "
             "backend's adapter", name, compiled_backend_names().c_str());
}

// --- files ----------------------------------------------------------------------------------

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Bytes = std::unique_ptr<uint8_t, FreeDeleter>;

Bytes allocate(size_t bytes) {
  size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  Bytes block(static_cast<uint8_t*>(std::aligned_alloc(64, rounded)));
  if (!block) throw fail(kExitUsage, "out of memory allocating %zu bytes", bytes);
  std::memset(block.get(), 0, rounded);
  return block;
}

File open_file(const char* path, const char* mode, const char* what) {
  File file(std::fopen(path, mode));
  if (!file) throw fail(kExitUsage, "cannot open %s %s: %s", what, path, std::strerror(errno));
  return file;
}

uint64_t file_size(std::FILE* file, const char* path) {
  if (std::fseek(file, 0, SEEK_END) != 0) throw fail(kExitUsage, "cannot seek in %s", path);
  long size = std::ftell(file);
  if (size < 0 || std::fseek(file, 0, SEEK_SET) != 0) throw fail(kExitUsage, "cannot seek in %s", path);
  return static_cast<uint64_t>(size);
}

// The whole file, 64-byte aligned (backends may need it: ExecuTorch programs need 16).
Bytes read_whole(const char* path, const char* what, size_t* size_out) {
  File file = open_file(path, "rb", what);
  uint64_t size = file_size(file.get(), path);
  if (size == 0) throw fail(kExitUsage, "%s %s is empty", what, path);
  Bytes data = allocate(size);
  if (std::fread(data.get(), 1, size, file.get()) != size) throw fail(kExitUsage, "cannot read %s %s", what, path);
  *size_out = size;
  return data;
}

void read_exact(std::FILE* file, void* buffer, size_t bytes, const char* path) {
  if (std::fread(buffer, 1, bytes, file) != bytes) throw fail(kExitUsage, "cannot read %s", path);
}

void write_exact(std::FILE* file, const void* buffer, size_t bytes, const char* path) {
  if (bytes && std::fwrite(buffer, 1, bytes, file) != bytes)
    throw fail(kExitUsage, "cannot write %s: %s", path, std::strerror(errno));
}

// --- the run --------------------------------------------------------------------------------

struct Runtime {
  dynrt_backend_t backend = nullptr;
  dynrt_session_t session = nullptr;
  Runtime() = default;
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  ~Runtime() {
    dynrt_session_destroy(session);  // before the backend it uses
    dynrt_backend_destroy(backend);
  }
};

Failure status_failure(dynrt_status status, dynrt_const_session_t session, const char* format, ...)
    __attribute__((format(printf, 3, 4)));

Failure status_failure(dynrt_status status, dynrt_const_session_t session, const char* format, ...) {
  char what[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(what, sizeof what, format, args);
  va_end(args);
  const char* last = session ? dynrt_session_last_error(session) : "";
  return fail(kExitStatus, "%s: %s (status %d)%s%s", what, dynrt_status_string(status), static_cast<int>(status),
              last && *last ? ": " : "", last ? last : "");
}

const char* path_name(uint32_t path) {
  switch (path) {
    case DYNRT_PATH_REUSE: return "reuse";
    case DYNRT_PATH_TILES: return "tiles";
    case DYNRT_PATH_DENSE: return "dense";
    default: return "unknown";
  }
}

std::string shape_text(const uint32_t* dims, uint32_t rank) {
  uint64_t values[4] = {};
  rank = std::min<uint32_t>(rank, 4);
  for (uint32_t i = 0; i < rank; ++i) values[i] = dims[i];
  char text[DYNRT_DIMS_TEXT_CAPACITY];
  return dynrt_format_dims(text, sizeof text, rank, values, 0);
}

// One plan on its own backend. Members go in reverse order: the session, then the backend,
// then the artifact bytes the backend may read from.
struct Loaded {
  Bytes artifact;
  Runtime rt;
  dynrt_session_info info{};
  const char* who = "";  // prefix of error messages: "" or "dense session: "
};

std::unique_ptr<Loaded> load(const dynrt_driver_backend& backend, const char* plan_path, const char* artifact_path,
                             uint32_t threads, bool dense) {
  auto loaded = std::make_unique<Loaded>();
  loaded->who = dense ? "dense session: " : "";
  size_t plan_bytes = 0, artifact_bytes = 0;
  Bytes plan = read_whole(plan_path, dense ? "dense plan" : "plan", &plan_bytes);
  loaded->artifact = read_whole(artifact_path, dense ? "dense artifact" : "artifact", &artifact_bytes);
  dynrt_backend_options options = DYNRT_BACKEND_OPTIONS_INIT;
  options.threads = threads;
  char why[1024] = "";
  dynrt_status status = backend.create(loaded->artifact.get(), artifact_bytes, &options, why, sizeof why,
                                       &loaded->rt.backend);
  if (status != DYNRT_OK)
    throw fail(kExitStatus, "cannot create the %s backend from %s %s (threads %u): %s (status %d)%s%s", backend.name,
               dense ? "dense artifact" : "artifact", artifact_path, threads, dynrt_status_string(status),
               static_cast<int>(status), why[0] ? ": " : "", why);
  status = dynrt_session_create(plan.get(), plan_bytes, loaded->rt.backend, why, sizeof why, &loaded->rt.session);
  if (status != DYNRT_OK)
    throw fail(kExitStatus, "%s %s with artifact %s rejected: %s (status %d): %s", dense ? "dense plan" : "plan",
               plan_path, artifact_path, dynrt_status_string(status), static_cast<int>(status), why);
  status = dynrt_session_describe(loaded->rt.session, &loaded->info);
  if (status != DYNRT_OK) throw status_failure(status, loaded->rt.session, "%sdynrt_session_describe", loaded->who);
  return loaded;
}

// Bench mode compares two exports of one model: the same frame must feed both.
void check_dense_fits(const Loaded& dynamic, const Loaded& dense, const Options& options) {
  const dynrt_session_info &a = dynamic.info, &b = dense.info;
  if (a.input_bytes == b.input_bytes && a.output_bytes == b.output_bytes) return;
  throw fail(kExitUsage,
             "--dense-plan %s does not fit --plan %s: the dense plan takes %zu bytes %s and gives %zu bytes %s, the "
             "plan %zu bytes %s and %zu bytes %s (it must be the dense export of the same model at the same input "
             "size)",
             options.dense_plan, options.plan, b.input_bytes, shape_text(b.input_dims, b.input_rank).c_str(),
             b.output_bytes, shape_text(b.output_dims, b.output_rank).c_str(), a.input_bytes,
             shape_text(a.input_dims, a.input_rank).c_str(), a.output_bytes,
             shape_text(a.output_dims, a.output_rank).c_str());
}

// The gated layers' shapes and the per-frame sizes of the decision and tie records.
struct LayerTable {
  std::vector<dynrt_layer_info> layers;
  size_t blocks_per_frame = 0, max_blocks = 1, max_channels = 1;
};

LayerTable describe_layers(dynrt_const_session_t session, uint32_t count) {
  LayerTable table;
  table.layers.resize(count);
  for (uint32_t l = 0; l < count; ++l) {
    dynrt_status status = dynrt_session_describe_layer(session, l, &table.layers[l]);
    if (status != DYNRT_OK) throw status_failure(status, session, "dynrt_session_describe_layer(%u)", l);
    table.blocks_per_frame += table.layers[l].blocks;
    table.max_blocks = std::max<size_t>(table.max_blocks, table.layers[l].blocks);
    table.max_channels = std::max<size_t>(table.max_channels, table.layers[l].out_channels);
  }
  return table;
}

// A frame_stats over caller arrays sized for the session (allocated before the frame loop).
struct StatsBuffers {
  std::vector<dynrt_layer_stats> layers;
  std::vector<uint64_t> segment_ns;
  dynrt_frame_stats stats{};
  explicit StatsBuffers(const dynrt_session_info& info) : layers(info.layer_count), segment_ns(info.segment_count) {
    stats.layers = layers.data();
    stats.layer_capacity = info.layer_count;
    stats.segment_ns = segment_ns.data();
    stats.segment_capacity = info.segment_count;
  }
};

void reset_session(const Loaded& loaded, const char* where) {
  dynrt_status status = dynrt_session_reset(loaded.rt.session);
  if (status != DYNRT_OK)
    throw status_failure(status, loaded.rt.session, "%s%s: dynrt_session_reset", loaded.who, where);
}

// One dynrt_session_step; returns its wall time, measured around the call with a steady clock.
uint64_t timed_step(const Loaded& loaded, const uint8_t* frame, uint8_t* result, dynrt_frame_stats* stats,
                    uint64_t t, const char* pass_name) {
  const auto start = std::chrono::steady_clock::now();
  dynrt_status status = dynrt_session_step(loaded.rt.session, reinterpret_cast<const float*>(frame),
                                           loaded.info.input_bytes, reinterpret_cast<float*>(result),
                                           loaded.info.output_bytes, stats);
  const auto end = std::chrono::steady_clock::now();
  if (status != DYNRT_OK)
    throw status_failure(status, loaded.rt.session, "%sframe %" PRIu64 " (%s)", loaded.who, t, pass_name);
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count());
}

void apply_tie_decisions(const Loaded& loaded, const LayerTable& table, const uint8_t* reference, uint64_t t) {
  for (uint32_t l = 0; l < table.layers.size(); ++l) {
    dynrt_status status = dynrt_session_set_tie_decisions(loaded.rt.session, l, reference, table.layers[l].blocks);
    if (status != DYNRT_OK)
      throw status_failure(status, loaded.rt.session, "frame %" PRIu64 ": set_tie_decisions(layer %u)", t, l);
    reference += table.layers[l].blocks;
  }
}

void write_decisions(const Loaded& loaded, const LayerTable& table, uint8_t* mask, uint8_t* channels,
                     std::FILE* file, const char* path, uint64_t t) {
  for (uint32_t l = 0; l < table.layers.size(); ++l) {
    const dynrt_layer_info& layer = table.layers[l];
    dynrt_status status = dynrt_session_layer_decisions(loaded.rt.session, l, mask, layer.blocks, channels,
                                                        layer.out_channels);
    if (status != DYNRT_OK)
      throw status_failure(status, loaded.rt.session, "frame %" PRIu64 ": layer_decisions(layer %u)", t, l);
    write_exact(file, mask, layer.blocks, path);
    write_exact(file, channels, layer.out_channels, path);
  }
}

// One stats.jsonl line; dense_ns only in bench mode.
void write_stats_line(std::FILE* f, const char* path, uint32_t pass, uint64_t t, const dynrt_frame_stats& s,
                      uint64_t wall_ns, const uint64_t* dense_ns) {
  std::fprintf(f, "{\"pass\": %u, \"frame\": %" PRIu64 ", \"frame_ns\": %" PRIu64 ", \"wall_ns\": %" PRIu64, pass, t,
               s.frame_ns, wall_ns);
  if (dense_ns) std::fprintf(f, ", \"dense_ns\": %" PRIu64, *dense_ns);
  std::fprintf(f, ", \"segments_ns\": %" PRIu64 ", \"segments_reused\": %u, \"layers\": [", s.segments_ns,
               s.segments_reused);
  for (uint32_t l = 0; l < s.layer_capacity; ++l) {
    const dynrt_layer_stats& layer = s.layers[l];
    std::fprintf(f,
                 "%s{\"active\": %u, \"total\": %u, \"path\": \"%s\", \"ties\": %u, \"executed_macs\": %" PRIu64
                 ", \"dense_macs\": %" PRIu64 "}",
                 l ? ", " : "", layer.active_blocks, layer.total_blocks, path_name(layer.path), layer.ties,
                 layer.executed_macs, layer.dense_macs);
  }
  std::fputs("], \"segment_ns\": [", f);
  for (uint32_t i = 0; i < s.segment_capacity; ++i) std::fprintf(f, "%s%" PRIu64, i ? ", " : "", s.segment_ns[i]);
  if (std::fputs("]}\n", f) < 0) throw fail(kExitUsage, "cannot write %s", path);
}

// The sorted values' element n / 2 (for an even count, the upper of the two middle ones).
uint64_t median(std::vector<uint64_t> values) {
  auto middle = values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2);
  std::nth_element(values.begin(), middle, values.end());
  return *middle;
}

// ns[pass * frames + frame]: each frame's median over the passes, then the median of those.
uint64_t median_of_frame_medians(const std::vector<uint64_t>& ns, uint64_t frames, uint32_t passes) {
  std::vector<uint64_t> per_frame(frames), across(passes);
  for (uint64_t t = 0; t < frames; ++t) {
    for (uint32_t p = 0; p < passes; ++p) across[p] = ns[p * frames + t];
    per_frame[t] = median(across);
  }
  return median(per_frame);
}

// --- --shared-sessions-check ---------------------------------------------------------------

constexpr int kClips = 3;
constexpr uint64_t kClipSteps = 12;  // more than a schedule below steps one session

uint64_t clip_frame(int clip, uint64_t i, uint64_t frames) {
  return clip == 0 ? i % frames : clip == 1 ? frames - 1 - i % frames : (i + frames / 2) % frames;
}

// Sessions made on one backend object (not owning it), destroyed by the schedule or at the end.
struct SharedSession {
  dynrt_session_t session = nullptr;
  int clip = 0;
  uint64_t steps = 0;
  SharedSession() = default;
  SharedSession(const SharedSession&) = delete;
  SharedSession& operator=(const SharedSession&) = delete;
  ~SharedSession() { dynrt_session_destroy(session); }
};

struct SharedCheck {
  const Bytes* plan;
  size_t plan_bytes;
  const std::vector<uint8_t>* frames;
  uint64_t frame_count;
  dynrt_session_info info;
  std::vector<std::vector<uint8_t>> lone;  // per clip, kClipSteps outputs
  std::vector<uint8_t> output;
  uint64_t steps = 0;

  void step(SharedSession& run, const char* schedule) {
    if (run.session == nullptr || run.steps >= kClipSteps) return;
    const uint8_t* frame = frames->data() + clip_frame(run.clip, run.steps, frame_count) * info.input_bytes;
    dynrt_status status = dynrt_session_step(run.session, reinterpret_cast<const float*>(frame), info.input_bytes,
                                             reinterpret_cast<float*>(output.data()), info.output_bytes, nullptr);
    if (status != DYNRT_OK)
      throw status_failure(status, run.session, "%s: clip %d step %" PRIu64, schedule, run.clip, run.steps);
    const uint8_t* expected = lone[run.clip].data() + run.steps * info.output_bytes;
    if (std::memcmp(output.data(), expected, info.output_bytes) != 0) {
      const float* got = reinterpret_cast<const float*>(output.data());
      const float* want = reinterpret_cast<const float*>(expected);
      float worst = 0;
      for (size_t i = 0; i < info.output_bytes / 4; ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
      throw fail(kExitStatus, "%s: clip %d step %" PRIu64 " differs from a lone session's (max abs difference %g)",
                 schedule, run.clip, run.steps, static_cast<double>(worst));
    }
    run.steps += 1;
    steps += 1;
  }
};

int check_shared_sessions(const dynrt_driver_backend& backend, const Options& options) {
  size_t plan_bytes = 0, artifact_bytes = 0;
  Bytes plan = read_whole(options.plan, "plan", &plan_bytes);
  Bytes artifact = read_whole(options.artifact, "artifact", &artifact_bytes);
  auto make_backend = [&](Runtime& rt) {
    dynrt_backend_options backend_options = DYNRT_BACKEND_OPTIONS_INIT;
    backend_options.threads = options.threads;
    char why[1024] = "";
    dynrt_status status = backend.create(artifact.get(), artifact_bytes, &backend_options, why, sizeof why, &rt.backend);
    if (status != DYNRT_OK)
      throw fail(kExitStatus, "cannot create the %s backend: %s (status %d): %s", backend.name,
                 dynrt_status_string(status), static_cast<int>(status), why);
  };
  auto make_session = [&](dynrt_backend_t on, dynrt_session_t* out, const char* schedule) {
    char why[1024] = "";
    dynrt_status status = dynrt_session_create(plan.get(), plan_bytes, on, why, sizeof why, out);
    if (status != DYNRT_OK)
      throw fail(kExitStatus, "%s: plan %s rejected: %s (status %d): %s", schedule, options.plan,
                 dynrt_status_string(status), static_cast<int>(status), why);
  };

  SharedCheck check{};
  {  // the lone sessions, each on its own backend
    Runtime first;
    make_backend(first);
    make_session(first.backend, &first.session, "lone session");
    if (dynrt_session_describe(first.session, &check.info) != DYNRT_OK) throw fail(kExitStatus, "describe failed");
  }
  File frames_file = open_file(options.frames, "rb", "frames");
  const uint64_t size = file_size(frames_file.get(), options.frames);
  if (size == 0 || size % check.info.input_bytes != 0)
    throw fail(kExitUsage, "frames %s: %" PRIu64 " bytes is not a whole number of frames of %zu bytes", options.frames,
               size, check.info.input_bytes);
  std::vector<uint8_t> frames(size);
  read_exact(frames_file.get(), frames.data(), size, options.frames);
  check.frames = &frames;
  check.frame_count = size / check.info.input_bytes;
  check.output.resize(check.info.output_bytes);
  for (int clip = 0; clip < kClips; ++clip) {
    Runtime lone;
    make_backend(lone);
    make_session(lone.backend, &lone.session, "lone session");
    check.lone.emplace_back(kClipSteps * check.info.output_bytes);
    for (uint64_t i = 0; i < kClipSteps; ++i) {
      const uint8_t* frame = frames.data() + clip_frame(clip, i, check.frame_count) * check.info.input_bytes;
      dynrt_status status = dynrt_session_step(lone.session, reinterpret_cast<const float*>(frame),
                                               check.info.input_bytes,
                                               reinterpret_cast<float*>(check.lone.back().data() + i * check.info.output_bytes),
                                               check.info.output_bytes, nullptr);
      if (status != DYNRT_OK) throw status_failure(status, lone.session, "lone session, clip %d step %" PRIu64, clip, i);
    }
  }
  File outputs = open_file(options.outputs, "wb", "outputs");
  write_exact(outputs.get(), check.lone[0].data(), check.lone[0].size(), options.outputs);

  uint32_t schedules = 0;
  for (int count = 2; count <= kClips; ++count) {
    std::vector<int> create_order(count), destroy_order(count);
    for (int k = 0; k < count; ++k) create_order[k] = k;
    do {
      for (int k = 0; k < count; ++k) destroy_order[k] = k;
      do {
        char schedule[128];
        std::snprintf(schedule, sizeof schedule, "%d sessions on one backend, created in order", count);
        std::string name = schedule;
        for (int k : create_order) name += " " + std::to_string(k);
        name += ", destroyed in order";
        for (int k : destroy_order) name += " " + std::to_string(k);
        Runtime shared;  // the backend; its sessions below are destroyed before it
        make_backend(shared);
        std::vector<SharedSession> runs(count);
        for (int k = 0; k < count; ++k) {
          SharedSession& run = runs[create_order[k]];
          run.clip = create_order[k];
          make_session(shared.backend, &run.session, name.c_str());
          for (SharedSession& live : runs) check.step(live, name.c_str());
        }
        for (int repeat = 0; repeat < 3; ++repeat)
          for (SharedSession& live : runs) check.step(live, name.c_str());
        for (int k = 0; k < count; ++k) {
          SharedSession& run = runs[destroy_order[k]];
          dynrt_session_destroy(run.session);
          run.session = nullptr;
          for (SharedSession& live : runs) check.step(live, name.c_str());
        }
        ++schedules;
      } while (std::next_permutation(destroy_order.begin(), destroy_order.end()));
    } while (std::next_permutation(create_order.begin(), create_order.end()));
  }
  std::printf("{\"backend\": \"%s\", \"shared_sessions_check\": {\"schedules\": %u, \"steps\": %" PRIu64
              ", \"differences\": 0}}\n",
              backend.name, schedules, check.steps);
  return kExitOk;
}

// --- --tune-segments ------------------------------------------------------------------------

struct TimedCall {
  uint32_t segment = 0, batch = 1;
  std::vector<uint64_t> ns;
};

std::vector<std::vector<TimedCall>> parse_tune_groups(const char* spec) {
  std::vector<std::vector<TimedCall>> groups(1);
  std::string text = spec;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find_first_of(",/", start);
    std::string item = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    size_t colon = item.find(':');
    uint64_t segment = 0, batch = 0;
    if (colon == std::string::npos || !parse_u64(item.substr(0, colon).c_str(), &segment) ||
        !parse_u64(item.substr(colon + 1).c_str(), &batch) || segment > UINT32_MAX || batch > UINT32_MAX)
      throw fail(kExitUsage, "--tune-segments %s: '%s' is not segment:batch", spec, item.c_str());
    TimedCall call;
    call.segment = static_cast<uint32_t>(segment);
    call.batch = static_cast<uint32_t>(batch);
    groups.back().push_back(call);
    if (end == std::string::npos) break;
    if (text[end] == '/') groups.emplace_back();
    start = end + 1;
  }
  return groups;
}

int tune_segments(const dynrt_driver_backend& backend, const Options& options) {
  std::vector<std::vector<TimedCall>> groups = parse_tune_groups(options.tune_segments);
  std::unique_ptr<Loaded> loaded = load(backend, options.plan, options.artifact, options.threads, false);
  const dynrt_session_info& info = loaded->info;
  File frames = open_file(options.frames, "rb", "frames");
  const uint64_t size = file_size(frames.get(), options.frames);
  if (size == 0 || size % info.input_bytes != 0)
    throw fail(kExitUsage, "frames %s: %" PRIu64 " bytes is not a whole number of frames of %zu bytes", options.frames,
               size, info.input_bytes);
  Bytes frame = allocate(info.input_bytes);
  Bytes result = allocate(info.output_bytes);
  for (uint64_t t = 0; t < size / info.input_bytes; ++t) {  // real activations in every buffer
    read_exact(frames.get(), frame.get(), info.input_bytes, options.frames);
    (void)timed_step(*loaded, frame.get(), result.get(), nullptr, t, "tune");
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<TimedCall>& calls = groups[g];
    std::vector<size_t> order(calls.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    for (TimedCall& call : calls) call.ns.reserve(options.rounds);
    std::mt19937_64 shuffle(options.seed * 1000003u + g);
    for (uint32_t round = 0; round < options.warmup + options.rounds; ++round) {
      std::shuffle(order.begin(), order.end(), shuffle);
      for (size_t i : order) {
        TimedCall& call = calls[i];
        uint64_t ns = 0;
        dynrt_status status = dynrt_session_time_segment(loaded->rt.session, call.segment, call.batch, &ns);
        if (status != DYNRT_OK)
          throw status_failure(status, loaded->rt.session, "--tune-segments: segment %u at batch %u", call.segment,
                               call.batch);
        if (round >= options.warmup) call.ns.push_back(ns);
      }
    }
  }
  // a plain copy of the gathered bytes (below 64 KiB the clock's resolution dominates)
  std::vector<uint64_t> copy_ns;
  const uint64_t copy_bytes = options.copy_bytes ? std::max<uint64_t>(options.copy_bytes, 1 << 16) : 0;
  if (copy_bytes) {
    Bytes source = allocate(copy_bytes), target = allocate(copy_bytes);
    for (uint64_t i = 0; i < copy_bytes; ++i) source.get()[i] = static_cast<uint8_t>(i * 131u);
    for (int r = 0; r < 23; ++r) {
      const auto start = std::chrono::steady_clock::now();
      std::memcpy(target.get(), source.get(), copy_bytes);
      const auto end = std::chrono::steady_clock::now();
      if (r >= 2) copy_ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count());
    }
    volatile uint8_t keep = target.get()[copy_bytes / 2];  // the copy is used
    (void)keep;
  }
  const uint32_t threads = backend.thread_count ? backend.thread_count(loaded->rt.backend) : options.threads;
  std::printf("{\"backend\": \"%s\", \"threads\": %u, \"rounds\": %u, \"warmup\": %u, \"copy_bytes\": %" PRIu64
              ", \"copy_ns\": [",
              backend.name, threads, options.rounds, options.warmup, copy_bytes);
  for (size_t r = 0; r < copy_ns.size(); ++r) std::printf("%s%" PRIu64, r ? ", " : "", copy_ns[r]);
  std::printf("], \"tune\": [");
  for (size_t g = 0; g < groups.size(); ++g) {
    std::printf("%s[", g ? ", " : "");
    for (size_t i = 0; i < groups[g].size(); ++i) {
      const TimedCall& call = groups[g][i];
      std::printf("%s{\"segment\": %u, \"batch\": %u, \"ns\": [", i ? ", " : "", call.segment, call.batch);
      for (size_t r = 0; r < call.ns.size(); ++r) std::printf("%s%" PRIu64, r ? ", " : "", call.ns[r]);
      std::printf("]}");
    }
    std::printf("]");
  }
  std::puts("]}");
  return kExitOk;
}

int run(const Options& options) {
  const dynrt_driver_backend& backend = find_backend(options.backend);
  if (backend.set_up_process) backend.set_up_process(options.verbose ? 1 : 0);
  if (options.shared_sessions_check) return check_shared_sessions(backend, options);
  if (options.tune_segments) return tune_segments(backend, options);
  std::unique_ptr<Loaded> dynamic = load(backend, options.plan, options.artifact, options.threads, false);
  std::unique_ptr<Loaded> dense;  // bench mode; destroyed first (declared last)
  if (options.dense_plan) {
    dense = load(backend, options.dense_plan, options.dense_artifact, options.threads, true);
    check_dense_fits(*dynamic, *dense, options);
  }
  const dynrt_session_info& info = dynamic->info;
  const LayerTable table = describe_layers(dynamic->rt.session, info.layer_count);

  File frames = open_file(options.frames, "rb", "frames");
  uint64_t frames_size = file_size(frames.get(), options.frames);
  std::string input_shape = shape_text(info.input_dims, info.input_rank);
  if (frames_size == 0 || frames_size % info.input_bytes != 0)
    throw fail(kExitUsage,
               "frames %s: %" PRIu64 " bytes is not a whole number of frames of %zu bytes (float32 NHWC %s); "
               "%" PRIu64 " frames and %" PRIu64 " bytes left over",
               options.frames, frames_size, info.input_bytes, input_shape.c_str(), frames_size / info.input_bytes,
               frames_size % info.input_bytes);
  const uint64_t frame_count = frames_size / info.input_bytes;
  for (uint64_t reset : options.reset_frames)
    if (reset >= frame_count)
      throw fail(kExitUsage, "--reset-frames: frame %" PRIu64 " is past the clip's %" PRIu64 " frames", reset,
                 frame_count);

  File ties;
  if (options.ties) {
    ties = open_file(options.ties, "rb", "tie decisions");
    uint64_t size = file_size(ties.get(), options.ties);
    if (size != frame_count * table.blocks_per_frame)
      throw fail(kExitUsage,
                 "tie decisions %s: %" PRIu64 " bytes, expected %" PRIu64 " (%" PRIu64 " frames x %zu blocks)",
                 options.ties, size, frame_count * table.blocks_per_frame, frame_count, table.blocks_per_frame);
  }
  File outputs = open_file(options.outputs, "wb", "outputs");
  File decisions = options.decisions ? open_file(options.decisions, "wb", "decisions") : File();
  File stats = options.stats ? open_file(options.stats, "wb", "stats") : File();
  File dense_outputs = options.dense_outputs ? open_file(options.dense_outputs, "wb", "dense outputs") : File();

  // Everything the loop touches, allocated now.
  Bytes frame = allocate(info.input_bytes);
  Bytes result = allocate(info.output_bytes);
  Bytes dense_result = allocate(dense ? info.output_bytes : 0);
  Bytes mask = allocate(table.max_blocks);
  Bytes channels = allocate(table.max_channels);
  Bytes tie_masks = allocate(table.blocks_per_frame);
  StatsBuffers frame_stats(info);
  StatsBuffers dense_stats(dense ? dense->info : dynrt_session_info{});  // same bookkeeping cost for both
  const uint64_t steps = frame_count * options.repeat;
  std::vector<uint64_t> frame_times(steps), wall_times(steps), dense_times(dense ? steps : 0);
  uint64_t segments_total = 0;

  const uint32_t passes = options.warmup + options.repeat;
  for (uint32_t pass = 0; pass < passes; ++pass) {
    const bool timed = pass >= options.warmup;
    const uint32_t timed_pass = timed ? pass - options.warmup : 0;
    const bool last_pass = pass + 1 == passes;
    char pass_name[48];
    std::snprintf(pass_name, sizeof pass_name, timed ? "pass %u" : "warmup pass %u", timed ? timed_pass : pass);
    if (pass > 0) {
      reset_session(*dynamic, pass_name);
      if (dense) reset_session(*dense, pass_name);
      if (std::fseek(frames.get(), 0, SEEK_SET) != 0 || (ties && std::fseek(ties.get(), 0, SEEK_SET) != 0))
        throw fail(kExitUsage, "cannot rewind the input files");
    }
    size_t next_reset = 0;
    for (uint64_t t = 0; t < frame_count; ++t) {
      read_exact(frames.get(), frame.get(), info.input_bytes, options.frames);
      if (next_reset < options.reset_frames.size() && options.reset_frames[next_reset] == t) {
        while (next_reset < options.reset_frames.size() && options.reset_frames[next_reset] == t) ++next_reset;
        char where[48];
        std::snprintf(where, sizeof where, "frame %" PRIu64, t);
        reset_session(*dynamic, where);
        if (dense) reset_session(*dense, where);
      }
      if (ties) {
        read_exact(ties.get(), tie_masks.get(), table.blocks_per_frame, options.ties);
        apply_tie_decisions(*dynamic, table, tie_masks.get(), t);
      }
      // Interleaved, alternating who goes first, so caches and clock changes hit both alike.
      const bool dense_first = t % 2 == 0;
      uint64_t dense_ns = 0;
      auto step_dense = [&] {
        return timed_step(*dense, frame.get(), dense_result.get(), &dense_stats.stats, t, pass_name);
      };
      if (dense && dense_first) dense_ns = step_dense();
      const uint64_t wall_ns = timed_step(*dynamic, frame.get(), result.get(), &frame_stats.stats, t, pass_name);
      if (dense && !dense_first) dense_ns = step_dense();
      if (!timed) continue;

      const uint64_t slot = timed_pass * frame_count + t;
      frame_times[slot] = frame_stats.stats.frame_ns;
      wall_times[slot] = wall_ns;
      if (dense) dense_times[slot] = dense_ns;
      segments_total += frame_stats.stats.segments_ns;
      if (last_pass) {
        write_exact(outputs.get(), result.get(), info.output_bytes, options.outputs);
        if (dense_outputs)
          write_exact(dense_outputs.get(), dense_result.get(), info.output_bytes, options.dense_outputs);
        if (decisions)
          write_decisions(*dynamic, table, mask.get(), channels.get(), decisions.get(), options.decisions, t);
      }
      if (stats)
        write_stats_line(stats.get(), options.stats, timed_pass, t, frame_stats.stats, wall_ns,
                         dense ? &dense_ns : nullptr);
    }
  }
  for (File* file : {&outputs, &decisions, &stats, &dense_outputs}) {
    if (*file && std::fclose(file->release()) != 0) throw fail(kExitUsage, "cannot finish writing an output file");
  }

  uint64_t total = 0;
  for (uint64_t ns : frame_times) total += ns;
  const uint32_t threads = backend.thread_count ? backend.thread_count(dynamic->rt.backend) : options.threads;
  std::printf("{\"backend\": \"%s\", \"frames\": %" PRIu64 ", \"passes\": %u, \"warmup\": %u, \"threads\": %u, "
              "\"mean_frame_ns\": %" PRIu64
              ", \"median_frame_ns\": %" PRIu64 ", \"mean_segments_ns\": %" PRIu64 ", \"arena_bytes\": %zu"
              ", \"state_bytes\": %zu",
              backend.name, frame_count, options.repeat, options.warmup, threads,
              total / steps, median(frame_times), segments_total / steps, info.arena_bytes, info.state_bytes);
  if (dense)
    std::printf(", \"median_dense_ns\": %" PRIu64 ", \"median_dynamic_ns\": %" PRIu64 ", \"dense_arena_bytes\": %zu",
                median_of_frame_medians(dense_times, frame_count, options.repeat),
                median_of_frame_medians(wall_times, frame_count, options.repeat), dense->info.arena_bytes);
  std::puts("}");
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_arguments(argc, argv));
  } catch (const Failure& failure) {
    std::fprintf(stderr, "dynrt_driver: %s\n", failure.message.c_str());
    return failure.code;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "dynrt_driver: %s\n", error.what());
    return kExitUsage;
  }
}
