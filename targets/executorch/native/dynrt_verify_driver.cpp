// dynrt_verify_driver: streams a clip through the native runtime with the ExecuTorch
// backend, for `dynexport verify` / `dynexport bench` (host, qemu-aarch64, adb).
//
//   dynrt_verify_driver --plan plan.dxfp --artifact model.pte --frames frames.bin --outputs outputs.bin
//       [--decisions decisions.bin] [--tie-decisions ties.bin] [--reset-frames 0,17,...]
//       [--stats stats.jsonl] [--threads N] [--repeat R] [--verbose]
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
// --threads N: ExecuTorch threads (dynrt_executorch_backend_create), 0 = its default.
// --verbose: also ExecuTorch's info log lines (by default only its errors reach stderr).
// stdout: one JSON summary line. Exit codes: 0 ok, 2 bad arguments or files, 3 a runtime
// status error (dynrt_status_string and the session's last error on stderr).

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <executorch/runtime/platform/platform.h>

#include "dynrt.h"
#include "dynrt_executorch.h"

namespace {

constexpr int kExitOk = 0, kExitUsage = 2, kExitStatus = 3;

const char* const kUsage =
    "usage: dynrt_verify_driver --plan plan.dxfp --artifact model.pte --frames frames.bin --outputs outputs.bin\n"
    "         [--decisions decisions.bin] [--tie-decisions ties.bin] [--reset-frames 0,17,...]\n"
    "         [--stats stats.jsonl] [--threads N] [--repeat R] [--verbose]\n";

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
  const char *plan = nullptr, *artifact = nullptr, *frames = nullptr, *outputs = nullptr;
  const char *decisions = nullptr, *ties = nullptr, *stats = nullptr;
  std::vector<uint64_t> reset_frames;
  uint32_t threads = 0;
  uint32_t repeat = 1;
  bool verbose = false;
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
    } else if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(kExitOk);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      throw fail(kExitUsage, "%s needs a value\n%s", flag.c_str(), kUsage);
    }
    uint64_t number = 0;
    if (flag == "--plan") options.plan = value;
    else if (flag == "--artifact") options.artifact = value;
    else if (flag == "--frames") options.frames = value;
    else if (flag == "--outputs") options.outputs = value;
    else if (flag == "--decisions") options.decisions = value;
    else if (flag == "--tie-decisions") options.ties = value;
    else if (flag == "--stats") options.stats = value;
    else if (flag == "--threads") {
      if (!parse_u64(value, &number) || number > 1024) throw fail(kExitUsage, "--threads %s: expected 0..1024", value);
      options.threads = static_cast<uint32_t>(number);
    } else if (flag == "--repeat") {
      if (!parse_u64(value, &number) || number < 1 || number > 1000000)
        throw fail(kExitUsage, "--repeat %s: expected a count >= 1", value);
      options.repeat = static_cast<uint32_t>(number);
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
                        : !options.outputs ? "--outputs" : nullptr;
  if (missing) throw fail(kExitUsage, "missing %s\n%s", missing, kUsage);
  std::sort(options.reset_frames.begin(), options.reset_frames.end());
  return options;
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

// The whole file, 64-byte aligned (ExecuTorch needs 16 for a program).
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
  std::string text = "[";
  for (uint32_t i = 0; i < rank && i < 4; ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

// ExecuTorch logs through its platform layer; by default only errors get through (its
// cpuinfo and thread pool report at info level on every start).
bool g_verbose = false;

void emit_executorch_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
                         const char* message, size_t length) {
  if (!g_verbose && (level == kDebug || level == kInfo)) return;
  std::fprintf(stderr, "executorch %c %s:%zu] %.*s\n", static_cast<char>(level), filename ? filename : "?", line,
               static_cast<int>(length), message);
}

int run(const Options& options) {
  g_verbose = options.verbose;
  ::executorch::runtime::register_pal(::executorch::runtime::PalImpl::create(emit_executorch_log, __FILE__));
  size_t plan_bytes = 0, pte_bytes = 0;
  Bytes plan = read_whole(options.plan, "plan", &plan_bytes);
  Bytes pte = read_whole(options.artifact, "artifact", &pte_bytes);  // must outlive the backend

  Runtime rt;
  dynrt_status status = dynrt_executorch_backend_create(pte.get(), pte_bytes, options.threads, &rt.backend);
  if (status != DYNRT_OK)
    throw status_failure(status, nullptr, "cannot create the ExecuTorch backend from artifact %s (threads %u)",
                         options.artifact, options.threads);
  char why[1024] = "";
  status = dynrt_session_create(plan.get(), plan_bytes, rt.backend, why, sizeof why, &rt.session);
  if (status != DYNRT_OK)
    throw fail(kExitStatus, "plan %s with artifact %s rejected: %s (status %d): %s", options.plan, options.artifact,
               dynrt_status_string(status), static_cast<int>(status), why);

  dynrt_session_info info;
  status = dynrt_session_describe(rt.session, &info);
  if (status != DYNRT_OK) throw status_failure(status, rt.session, "dynrt_session_describe");
  std::vector<dynrt_layer_info> layers(info.layer_count);
  size_t blocks_per_frame = 0, decision_bytes_per_frame = 0, max_blocks = 1, max_channels = 1;
  for (uint32_t l = 0; l < info.layer_count; ++l) {
    status = dynrt_session_describe_layer(rt.session, l, &layers[l]);
    if (status != DYNRT_OK) throw status_failure(status, rt.session, "dynrt_session_describe_layer(%u)", l);
    blocks_per_frame += layers[l].blocks;
    decision_bytes_per_frame += layers[l].blocks + layers[l].out_channels;
    max_blocks = std::max<size_t>(max_blocks, layers[l].blocks);
    max_channels = std::max<size_t>(max_channels, layers[l].out_channels);
  }

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
    if (size != frame_count * blocks_per_frame)
      throw fail(kExitUsage,
                 "tie decisions %s: %" PRIu64 " bytes, expected %" PRIu64 " (%" PRIu64 " frames x %zu blocks)",
                 options.ties, size, frame_count * blocks_per_frame, frame_count, blocks_per_frame);
  }
  File outputs = open_file(options.outputs, "wb", "outputs");
  File decisions = options.decisions ? open_file(options.decisions, "wb", "decisions") : File();
  File stats = options.stats ? open_file(options.stats, "wb", "stats") : File();

  // Everything the loop touches, allocated now.
  Bytes frame = allocate(info.input_bytes);
  Bytes result = allocate(info.output_bytes);
  Bytes mask = allocate(max_blocks);
  Bytes channels = allocate(max_channels);
  Bytes tie_masks = allocate(blocks_per_frame);
  std::vector<dynrt_layer_stats> layer_stats(info.layer_count);
  std::vector<uint64_t> segment_ns(info.segment_count);
  std::vector<uint64_t> frame_times(frame_count * options.repeat);
  uint64_t segments_total = 0;
  dynrt_frame_stats frame_stats{};
  frame_stats.layers = layer_stats.data();
  frame_stats.layer_capacity = info.layer_count;
  frame_stats.segment_ns = segment_ns.data();
  frame_stats.segment_capacity = info.segment_count;

  for (uint32_t pass = 0; pass < options.repeat; ++pass) {
    const bool last_pass = pass + 1 == options.repeat;
    if (pass > 0) {
      status = dynrt_session_reset(rt.session);
      if (status != DYNRT_OK) throw status_failure(status, rt.session, "pass %u: dynrt_session_reset", pass);
      if (std::fseek(frames.get(), 0, SEEK_SET) != 0 || (ties && std::fseek(ties.get(), 0, SEEK_SET) != 0))
        throw fail(kExitUsage, "cannot rewind the input files");
    }
    size_t next_reset = 0;
    for (uint64_t t = 0; t < frame_count; ++t) {
      read_exact(frames.get(), frame.get(), info.input_bytes, options.frames);
      if (next_reset < options.reset_frames.size() && options.reset_frames[next_reset] == t) {
        while (next_reset < options.reset_frames.size() && options.reset_frames[next_reset] == t) ++next_reset;
        status = dynrt_session_reset(rt.session);
        if (status != DYNRT_OK)
          throw status_failure(status, rt.session, "frame %" PRIu64 ": dynrt_session_reset", t);
      }
      if (ties) {
        read_exact(ties.get(), tie_masks.get(), blocks_per_frame, options.ties);
        const uint8_t* reference = tie_masks.get();
        for (uint32_t l = 0; l < info.layer_count; ++l) {
          status = dynrt_session_set_tie_decisions(rt.session, l, reference, layers[l].blocks);
          if (status != DYNRT_OK)
            throw status_failure(status, rt.session, "frame %" PRIu64 ": set_tie_decisions(layer %u)", t, l);
          reference += layers[l].blocks;
        }
      }
      status = dynrt_session_step(rt.session, reinterpret_cast<const float*>(frame.get()), info.input_bytes,
                                  reinterpret_cast<float*>(result.get()), info.output_bytes, &frame_stats);
      if (status != DYNRT_OK) throw status_failure(status, rt.session, "frame %" PRIu64 " (pass %u)", t, pass);
      frame_times[pass * frame_count + t] = frame_stats.frame_ns;
      segments_total += frame_stats.segments_ns;

      if (last_pass) {
        write_exact(outputs.get(), result.get(), info.output_bytes, options.outputs);
        for (uint32_t l = 0; decisions && l < info.layer_count; ++l) {
          status = dynrt_session_layer_decisions(rt.session, l, mask.get(), layers[l].blocks, channels.get(),
                                                 layers[l].out_channels);
          if (status != DYNRT_OK)
            throw status_failure(status, rt.session, "frame %" PRIu64 ": layer_decisions(layer %u)", t, l);
          write_exact(decisions.get(), mask.get(), layers[l].blocks, options.decisions);
          write_exact(decisions.get(), channels.get(), layers[l].out_channels, options.decisions);
        }
      }
      if (stats) {
        std::FILE* f = stats.get();
        std::fprintf(f, "{\"pass\": %u, \"frame\": %" PRIu64 ", \"frame_ns\": %" PRIu64 ", \"segments_ns\": %" PRIu64
                        ", \"layers\": [",
                     pass, t, frame_stats.frame_ns, frame_stats.segments_ns);
        for (uint32_t l = 0; l < info.layer_count; ++l) {
          const dynrt_layer_stats& s = layer_stats[l];
          std::fprintf(f,
                       "%s{\"active\": %u, \"total\": %u, \"path\": \"%s\", \"ties\": %u, \"executed_macs\": %" PRIu64
                       ", \"dense_macs\": %" PRIu64 "}",
                       l ? ", " : "", s.active_blocks, s.total_blocks, path_name(s.path), s.ties, s.executed_macs,
                       s.dense_macs);
        }
        std::fputs("], \"segment_ns\": [", f);
        for (uint32_t s = 0; s < info.segment_count; ++s)
          std::fprintf(f, "%s%" PRIu64, s ? ", " : "", segment_ns[s]);
        if (std::fputs("]}\n", f) < 0) throw fail(kExitUsage, "cannot write %s", options.stats);
      }
    }
  }
  for (File* file : {&outputs, &decisions, &stats}) {
    if (*file && std::fclose(file->release()) != 0) throw fail(kExitUsage, "cannot finish writing an output file");
  }

  std::vector<uint64_t> sorted = frame_times;
  std::sort(sorted.begin(), sorted.end());
  uint64_t total = 0;
  for (uint64_t ns : frame_times) total += ns;
  const uint64_t steps = frame_times.size();
  std::printf("{\"frames\": %" PRIu64 ", \"passes\": %u, \"threads\": %u, \"mean_frame_ns\": %" PRIu64
              ", \"median_frame_ns\": %" PRIu64 ", \"mean_segments_ns\": %" PRIu64 ", \"arena_bytes\": %zu"
              ", \"state_bytes\": %zu}\n",
              frame_count, options.repeat, dynrt_executorch_thread_count(rt.backend), total / steps,
              sorted[steps / 2], segments_total / steps, info.arena_bytes, info.state_bytes);
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_arguments(argc, argv));
  } catch (const Failure& failure) {
    std::fprintf(stderr, "dynrt_verify_driver: %s\n", failure.message.c_str());
    return failure.code;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "dynrt_verify_driver: %s\n", error.what());
    return kExitUsage;
  }
}
