// dynrt ExecuTorch backend adapter: one ExecuTorch method per plan segment.
//
// create:   Program::load over a BufferDataLoader on the caller's pte bytes (no copy). The
//           backend object (Adapter) holds only the program and the thread setting and is
//           not changed after create, so any number of sessions share it.
// prepare:  per session a SessionState (its own scratch allocator and loaded methods); per
//           segment, check the method's signature against the plan's, allocate its planned
//           memory and load it into that state (XNNPACK compiles its subgraphs here).
// run:      bind the session's buffers as tensors in their stated layout (NHWC dim order,
//           or row-major; resized to the batch for tile segments), execute, hand back the
//           outputs.
// release:  the session's methods and memory go with its state; other sessions' stay.
// Errors never escape as exceptions: every vtable entry catches and returns a status.

#include "dynrt_executorch.h"

#include <algorithm>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/extension/threadpool/threadpool_guard.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/core/memory_allocator.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/runtime.h>

#include "dynrt_backend_impl.h"

#if DYNRT_EXECUTORCH_HAS_THREADPOOL
#include <executorch/runtime/core/function_ref.h>
// The wheel ships libexecutorch_threadpool (which XNNPACK runs on) but not its header
// threadpool.h (it would need pthreadpool.h, also not shipped). These are the calls the
// adapter makes, declared as the library exports them (extension/threadpool/threadpool.h).
namespace executorch::extension::threadpool {
class ThreadPool final {
 public:
  ThreadPool() = delete;
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
  // fn(i) for i < range on the pool's threads and the caller's (pthreadpool_parallelize_1d)
  void run(::executorch::runtime::FunctionRef<void(size_t)> fn, size_t range);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

namespace {

namespace et = ::executorch::runtime;
using ::executorch::aten::DimOrderType;
using ::executorch::aten::ScalarType;
using ::executorch::aten::SizesType;
using ::executorch::aten::StridesType;
using ::executorch::aten::Tensor;
using ::executorch::aten::TensorImpl;
using ::executorch::extension::BufferDataLoader;
using ::executorch::extension::MallocMemoryAllocator;
using ::executorch::extension::threadpool::NoThreadPoolGuard;

constexpr const char* kBackendName = "executorch";
constexpr size_t kBufferAlignment = 64;  // planned buffers: a cache line, enough for XNNPACK
constexpr size_t kXnnpackExtraBytes = 16;  // XNN_EXTRA_BYTES: what XNNPACK may read past a buffer
constexpr uint32_t kMaxRank = 4;

// --- small helpers ------------------------------------------------------------------------

void set_message(char* message, size_t capacity, const char* format, ...) __attribute__((format(printf, 3, 4)));

void set_message(char* message, size_t capacity, const char* format, ...) {
  if (message == nullptr || capacity == 0) return;
  va_list args;
  va_start(args, format);
  std::vsnprintf(message, capacity, format, args);
  va_end(args);
}

const char* error_name(et::Error error) {
  const char* name = et::to_string(error);
  return std::strncmp(name, "Error::", 7) == 0 ? name + 7 : name;
}

// dynrt_format_dims (the runtime's formatter) over int64 dims, as a string.
std::string format_dims(const int64_t* dims, uint32_t rank) {
  uint64_t values[16];
  rank = std::min<uint32_t>(rank, 16);
  for (uint32_t i = 0; i < rank; ++i) values[i] = dims[i] < 0 ? 0 : static_cast<uint64_t>(dims[i]);
  char text[16 * 24];
  return dynrt_format_dims(text, sizeof text, rank, values, 0);
}

const char* dtype_name(uint32_t dtype) { return dtype == 0 ? "float32" : dtype == 1 ? "int32" : "unknown dtype"; }

const char* scalar_name(ScalarType type) {
  switch (type) {
    case ScalarType::Float: return "float32";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Half: return "float16";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    case ScalarType::Bool: return "bool";
    default: return "another dtype";
  }
}

// Aligned, owned heap block (planned memory, scratch).
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Block = std::unique_ptr<uint8_t, FreeDeleter>;

Block allocate_block(size_t bytes) {
  size_t rounded = (std::max<size_t>(bytes, 1) + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
  return Block(static_cast<uint8_t*>(std::aligned_alloc(kBufferAlignment, rounded)));
}

// ExecuTorch's temp allocator, shared by the segments of a session (they run one at a time).
// ExecuTorch resets it after every kernel / delegate call. It starts empty; a request that
// does not fit is served from malloc, and the next reset() grows the arena to what that call
// needed, so a segment call allocates at most while a kernel needs more scratch than ever
// before. XNNPACK-delegated segments measured here never ask for any.
class ScratchAllocator final : public et::MemoryAllocator {
 public:
  ScratchAllocator() : et::MemoryAllocator(0, nullptr) {}
  ~ScratchAllocator() override { release_spills(); }

  void* allocate(size_t size, size_t alignment = kDefaultAlignment) override {
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) return nullptr;
    requested_ += size + alignment;
    uintptr_t base = reinterpret_cast<uintptr_t>(arena_.get());
    uintptr_t start = (base + used_ + alignment - 1) & ~(uintptr_t)(alignment - 1);
    if (arena_ && start + size <= base + capacity_) {
      used_ = start + size - base;
      return reinterpret_cast<void*>(start);
    }
    if (spill_count_ == kMaxSpills) return nullptr;
    void* raw = std::malloc(size + alignment);
    if (raw == nullptr) return nullptr;
    spills_[spill_count_++] = raw;
    uintptr_t aligned = (reinterpret_cast<uintptr_t>(raw) + alignment - 1) & ~(uintptr_t)(alignment - 1);
    return reinterpret_cast<void*>(aligned);
  }

  void reset() override {
    if (spill_count_ > 0) {
      release_spills();
      size_t wanted = (requested_ + 4095) / 4096 * 4096;
      if (wanted > capacity_) {
        arena_ = allocate_block(wanted);
        capacity_ = arena_ ? wanted : 0;
      }
    }
    used_ = 0;
    requested_ = 0;
  }

  size_t used_size() const override { return used_; }
  size_t free_size() const override { return capacity_ - used_; }

 private:
  void release_spills() {
    for (uint32_t i = 0; i < spill_count_; ++i) std::free(spills_[i]);
    spill_count_ = 0;
  }

  static constexpr uint32_t kMaxSpills = 64;
  Block arena_;
  size_t capacity_ = 0, used_ = 0, requested_ = 0;
  void* spills_[kMaxSpills] = {};
  uint32_t spill_count_ = 0;
};

// --- the process-wide thread pool -------------------------------------------------------

std::mutex g_pool_mutex;
uint32_t g_pool_users = 0;  // live backends that run on the shared pool (threads != 1)

uint32_t pool_thread_count() {
#if DYNRT_EXECUTORCH_HAS_THREADPOOL
  auto* pool = ::executorch::extension::threadpool::get_threadpool();
  return pool ? static_cast<uint32_t>(pool->get_thread_count()) : 1;
#else
  return 1;
#endif
}

// --- segments -----------------------------------------------------------------------------

// One operand as the method sees it: logical sizes (NCHW for 4-D) at the maximum batch, the
// NHWC dim order and strides of the runtime's buffer.
struct Operand {
  uint32_t rank = 0;
  ScalarType type = ScalarType::Float;
  SizesType sizes[kMaxRank] = {};
  DimOrderType dim_order[kMaxRank] = {};
  StridesType strides[kMaxRank] = {};
  size_t bytes = 0;      // at the maximum batch
  size_t row_bytes = 0;  // per index of dim 0
  bool planned = true;   // the method's memory plan owns this tensor (so data is copied)
  // The method's dim order when it lays the tensor out differently (e.g. a contiguous NCHW
  // output where the plan keeps NHWC): the data is then permuted through `staging`.
  bool convert = false;
  DimOrderType method_order[kMaxRank] = {};
  Block staging;  // inputs, and unplanned outputs: max-batch bytes in the method's layout
  // An unplanned tensor keeps pointing at the buffer it was last given (set_input aliases an
  // input, set_output_data_ptr points an output), with the sizes set_input gave it; the
  // runtime passes the same buffers on every call of a segment (dynrt_backend_impl.h). So
  // the call is repeated only for a planned input (copied in), a new buffer or a new batch:
  // set_input and set_output_data_ptr each look the method up by name in the program
  // (Program::method_meta, a strcmp search over its methods), about 1 K instructions a call
  // with 17 methods and 2.5 K with 116.
  const void* bound = nullptr;
  uint32_t bound_batch = 0;
};

struct Segment {
  std::string name;
  uint32_t max_batch = 0;  // > 0: tile segment
  std::vector<Operand> inputs, outputs;
  std::vector<Block> planned_blocks;
  std::vector<et::Span<uint8_t>> planned_spans;
  std::unique_ptr<et::HierarchicalAllocator> planned_memory;
  MallocMemoryAllocator method_allocator;  // used while loading only
  std::unique_ptr<et::MemoryManager> memory;
  std::unique_ptr<et::Method> method;  // destroyed first (declared last)

  ~Segment() { method.reset(); }
};

// The backend object: read-only once created (sessions only read the program).
struct Adapter {
  std::optional<BufferDataLoader> loader;  // over the caller's pte bytes (not copied)
  std::optional<et::Program> program;
  bool serial = false;     // threads == 1: NoThreadPoolGuard around loads and runs
  bool pool_user = false;  // counted in g_pool_users
};

// What one session prepared: its methods with their planned memory, and the scratch their
// kernels share. Released by release_session, before the backend (the program) goes.
struct SessionState {
  ScratchAllocator scratch;
  std::vector<std::unique_ptr<Segment>> segments;  // destroyed before scratch (declared after)
};

// Shapes in the order the runtime's buffer holds them, for messages: a 4-D logical
// [N, C, H, W] in dim order (0, 2, 3, 1) reads NHWC [N, H, W, C].
std::string method_shape(const et::TensorInfo& info) {
  auto sizes = info.sizes();
  auto order = info.dim_order();
  int64_t dims[16];
  uint32_t rank = static_cast<uint32_t>(std::min<size_t>(sizes.size(), 16));
  bool nhwc = rank == 4 && order.size() == 4 && order[0] == 0 && order[1] == 2 && order[2] == 3 && order[3] == 1;
  for (uint32_t i = 0; i < rank; ++i) dims[i] = sizes[i];
  std::string text = std::string(scalar_name(info.scalar_type())) + " " + format_dims(dims, rank);
  if (nhwc) {
    int64_t physical[4] = {sizes[0], sizes[2], sizes[3], sizes[1]};
    text += " channels_last = NHWC " + format_dims(physical, 4);
  } else if (rank == 4) {
    text += " dim order (";
    for (uint32_t i = 0; i < order.size(); ++i) text += (i ? "," : "") + std::to_string(order[i]);
    text += ")";
  }
  return text;
}

std::string plan_shape(const dynrt_operand_info& info) {
  int64_t dims[kMaxRank] = {};
  uint32_t rank = std::min(info.rank, kMaxRank);
  for (uint32_t i = 0; i < rank; ++i) dims[i] = info.dims[i];
  return std::string(dtype_name(info.dtype)) + (info.layout == DYNRT_LAYOUT_NHWC ? " NHWC " : " ") +
         format_dims(dims, rank);
}

// The plan's operand as a tensor over the runtime buffer, in the layout its info states.
bool describe_plan_operand(const dynrt_operand_info& info, Operand* out) {
  if (info.rank > kMaxRank || info.dtype > 1) return false;
  if (info.layout != DYNRT_LAYOUT_ROW_MAJOR && !(info.layout == DYNRT_LAYOUT_NHWC && info.rank == 4)) return false;
  out->rank = info.rank;
  out->type = info.dtype == 0 ? ScalarType::Float : ScalarType::Int;
  size_t elements = 1;
  for (uint32_t i = 0; i < info.rank; ++i) {
    if (info.dims[i] == 0 || info.dims[i] > INT32_MAX) return false;
    elements *= info.dims[i];
  }
  if (info.layout == DYNRT_LAYOUT_NHWC) {
    const uint32_t* d = info.dims;  // physical N, H, W, C
    SizesType logical[4] = {(SizesType)d[0], (SizesType)d[3], (SizesType)d[1], (SizesType)d[2]};
    DimOrderType order[4] = {0, 2, 3, 1};
    std::copy(logical, logical + 4, out->sizes);
    std::copy(order, order + 4, out->dim_order);
  } else {
    for (uint32_t i = 0; i < info.rank; ++i) {
      out->sizes[i] = (SizesType)info.dims[i];
      out->dim_order[i] = (DimOrderType)i;
    }
  }
  StridesType stride = 1;
  for (int k = (int)info.rank - 1; k >= 0; --k) {
    out->strides[out->dim_order[k]] = stride;
    stride *= out->sizes[out->dim_order[k]];
  }
  out->bytes = elements * 4;
  out->row_bytes = info.rank > 0 ? out->bytes / info.dims[0] : out->bytes;
  return true;
}

// Element strides of a tensor of `sizes` laid out in `order` (outermost dim first).
void strides_for(uint32_t rank, const SizesType* sizes, const DimOrderType* order, int64_t* strides) {
  int64_t stride = 1;
  for (int k = (int)rank - 1; k >= 0; --k) {
    strides[order[k]] = stride;
    stride *= sizes[order[k]];
  }
}

bool same_sizes(const Operand& plan, const et::TensorInfo& info) {
  auto sizes = info.sizes();
  auto order = info.dim_order();
  if (sizes.size() != plan.rank || order.size() != plan.rank) return false;
  uint32_t seen = 0;
  for (uint32_t i = 0; i < plan.rank; ++i) {
    if (sizes[i] != plan.sizes[i] || order[i] >= plan.rank || (seen & (1u << order[i]))) return false;
    seen |= 1u << order[i];
  }
  return true;
}

// The same memory layout wherever it matters (a dim of size 1 has no stride that matters, so
// e.g. a channels_last tensor with C == 1 matches a contiguous one). Sizes already match.
bool same_layout(const Operand& plan, const et::TensorInfo& info) {
  DimOrderType order[kMaxRank];
  int64_t strides[kMaxRank];
  for (uint32_t i = 0; i < plan.rank; ++i) order[i] = info.dim_order()[i];
  strides_for(plan.rank, plan.sizes, order, strides);
  for (uint32_t i = 0; i < plan.rank; ++i) {
    if (plan.sizes[i] > 1 && strides[i] != plan.strides[i]) return false;
  }
  return true;
}

// Copies a tensor of `sizes` (4-byte elements) between two layouts given by element strides.
void permute_copy(uint32_t rank, const SizesType* sizes, const void* source, const int64_t* source_strides,
                  void* destination, const int64_t* destination_strides) {
  int64_t n[kMaxRank] = {1, 1, 1, 1}, s[kMaxRank] = {}, d[kMaxRank] = {};
  for (uint32_t i = 0; i < rank; ++i) {  // right-aligned into 4 dims
    n[kMaxRank - rank + i] = sizes[i];
    s[kMaxRank - rank + i] = source_strides[i];
    d[kMaxRank - rank + i] = destination_strides[i];
  }
  const auto* from = static_cast<const uint32_t*>(source);
  auto* to = static_cast<uint32_t*>(destination);
  for (int64_t a = 0; a < n[0]; ++a)
    for (int64_t b = 0; b < n[1]; ++b)
      for (int64_t c = 0; c < n[2]; ++c) {
        const uint32_t* row_from = from + a * s[0] + b * s[1] + c * s[2];
        uint32_t* row_to = to + a * d[0] + b * d[1] + c * d[2];
        for (int64_t e = 0; e < n[3]; ++e) row_to[e * d[3]] = row_from[e * s[3]];
      }
}

dynrt_status check_operands(const Segment& segment, const et::MethodMeta& meta, bool inputs,
                            const dynrt_operand_info* infos, uint32_t count, std::vector<Operand>* out,
                            char* message, size_t capacity) {
  const char* kind = inputs ? "input" : "output";
  size_t method_count = inputs ? meta.num_inputs() : meta.num_outputs();
  if (method_count != count) {
    set_message(message, capacity, "method '%s' has %zu %ss, the plan has %u", segment.name.c_str(), method_count,
                kind, count);
    return DYNRT_SEGMENT_MISMATCH;
  }
  out->clear();
  out->resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    auto tag = inputs ? meta.input_tag(i) : meta.output_tag(i);
    if (!tag.ok() || tag.get() != et::Tag::Tensor) {
      set_message(message, capacity, "%s %u: method '%s' has no tensor there", kind, i, segment.name.c_str());
      return DYNRT_SEGMENT_MISMATCH;
    }
    auto info = inputs ? meta.input_tensor_meta(i) : meta.output_tensor_meta(i);
    if (!info.ok()) {
      set_message(message, capacity, "%s %u: cannot read method '%s' tensor info (%s)", kind, i,
                  segment.name.c_str(), error_name(info.error()));
      return DYNRT_SEGMENT_MISMATCH;
    }
    Operand& operand = (*out)[i];
    if (!describe_plan_operand(infos[i], &operand)) {
      set_message(message, capacity, "%s %u: unsupported plan operand %s", kind, i, plan_shape(infos[i]).c_str());
      return DYNRT_INVALID_ARGUMENT;
    }
    if (segment.max_batch > 0 && i == 0 && infos[i].dims[0] != segment.max_batch) {
      set_message(message, capacity, "%s 0: plan dims %s do not start with the tile bound %u", kind,
                  plan_shape(infos[i]).c_str(), segment.max_batch);
      return DYNRT_INVALID_ARGUMENT;
    }
    if (info->scalar_type() != operand.type || !same_sizes(operand, info.get())) {
      set_message(message, capacity, "%s %u: method '%s' has %s, the plan has %s%s", kind, i, segment.name.c_str(),
                  method_shape(info.get()).c_str(), plan_shape(infos[i]).c_str(),
                  segment.max_batch > 0 && i == 0 ? " (tile methods are exported at the max batch)" : "");
      return DYNRT_SEGMENT_MISMATCH;
    }
    operand.planned = info->is_memory_planned();
    if (!same_layout(operand, info.get())) {
      // Not the runtime's layout: correct, but every call permutes this operand (a copy).
      operand.convert = true;
      for (uint32_t d = 0; d < operand.rank; ++d) operand.method_order[d] = info->dim_order()[d];
      if (inputs || !operand.planned) {  // an unplanned output is written into staging, then permuted
        operand.staging = allocate_block(operand.bytes);
        if (!operand.staging) return DYNRT_OUT_OF_MEMORY;
      }
    }
  }
  return DYNRT_OK;
}

dynrt_status prepare(const Adapter& adapter, SessionState& state, uint32_t index, const dynrt_segment_info& info,
                     char* message, size_t capacity) {
  if (info.name == nullptr || (info.input_count && !info.inputs) || (info.output_count && !info.outputs)) {
    set_message(message, capacity, "segment %u: incomplete segment info", index);
    return DYNRT_INVALID_ARGUMENT;
  }
  auto segment = std::make_unique<Segment>();
  segment->name = info.name;
  segment->max_batch = info.max_batch;

  auto meta = adapter.program->method_meta(info.name);
  if (!meta.ok()) {
    std::string names;
    for (size_t i = 0; i < adapter.program->num_methods(); ++i) {
      auto name = adapter.program->get_method_name(i);
      if (!name.ok()) continue;
      if (i == 8) {
        names += ", ...";
        break;
      }
      names += (i ? ", " : "") + std::string(name.get());
    }
    set_message(message, capacity, "the artifact has no method '%s' (it has %zu: %s)", info.name,
                adapter.program->num_methods(), names.c_str());
    return DYNRT_SEGMENT_MISMATCH;
  }
  dynrt_status status = check_operands(*segment, meta.get(), true, info.inputs, info.input_count, &segment->inputs,
                                       message, capacity);
  if (status != DYNRT_OK) return status;
  status = check_operands(*segment, meta.get(), false, info.outputs, info.output_count, &segment->outputs, message,
                          capacity);
  if (status != DYNRT_OK) return status;

  // A delegate registers itself from a static initializer of its library: name the missing
  // one rather than letting the load fail with NotFound.
  for (size_t i = 0; i < meta->num_backends(); ++i) {
    auto backend = meta->get_backend_name(i);
    if (backend.ok() && et::get_backend_class(backend.get()) == nullptr) {
      set_message(message, capacity,
                  "method '%s' needs ExecuTorch backend '%s', not registered in this process (link its library "
                  "without --as-needed: executorch::backend_xnnpack)",
                  info.name, backend.get());
      return DYNRT_BACKEND_ERROR;
    }
  }

  // Planned memory, allocated once here; the method's tensors live in it from now on.
  size_t buffers = meta->num_memory_planned_buffers();
  segment->planned_blocks.reserve(buffers);
  segment->planned_spans.reserve(buffers);
  for (size_t i = 0; i < buffers; ++i) {
    auto size = meta->memory_planned_buffer_size(i);
    if (!size.ok() || size.get() < 0) {
      set_message(message, capacity, "method '%s': cannot read planned buffer %zu", info.name, i);
      return DYNRT_BACKEND_ERROR;
    }
    segment->planned_blocks.push_back(allocate_block(static_cast<size_t>(size.get())));
    if (!segment->planned_blocks.back()) return DYNRT_OUT_OF_MEMORY;
    segment->planned_spans.emplace_back(segment->planned_blocks.back().get(), static_cast<size_t>(size.get()));
  }
  segment->planned_memory = std::make_unique<et::HierarchicalAllocator>(
      et::Span<et::Span<uint8_t>>(segment->planned_spans.data(), segment->planned_spans.size()));
  segment->memory =
      std::make_unique<et::MemoryManager>(&segment->method_allocator, segment->planned_memory.get(), &state.scratch);

  et::Result<et::Method> method = [&] {
    // XNNPACK binds its thread pool at load: for threads = 1 it gets none.
    std::optional<NoThreadPoolGuard> serial;
    if (adapter.serial) serial.emplace();
    return adapter.program->load_method(info.name, segment->memory.get());
  }();
  if (!method.ok()) {
    const char* hint = method.error() == et::Error::OperatorMissing
                           ? " (a kernel is missing: link executorch::kernels_optimized)"
                           : "";
    set_message(message, capacity, "ExecuTorch could not load method '%s': %s%s", info.name,
                error_name(method.error()), hint);
    return DYNRT_BACKEND_ERROR;
  }
  segment->method = std::make_unique<et::Method>(std::move(method.get()));

  if (index >= state.segments.size()) return DYNRT_INVALID_ARGUMENT;  // prepare_session sized it
  state.segments[index] = std::move(segment);
  return DYNRT_OK;
}

dynrt_status run(const Adapter& adapter, SessionState& state, uint32_t index, uint32_t batch, void* const* inputs,
                 void* const* outputs) {
  if (index >= state.segments.size() || !state.segments[index]) return DYNRT_INVALID_ARGUMENT;
  Segment& segment = *state.segments[index];
  if (segment.max_batch > 0 ? (batch < 1 || batch > segment.max_batch) : batch != 1) return DYNRT_INVALID_ARGUMENT;
  if ((!segment.inputs.empty() && !inputs) || (!segment.outputs.empty() && !outputs)) return DYNRT_INVALID_ARGUMENT;
  et::Method& method = *segment.method;

  for (size_t i = 0; i < segment.inputs.size(); ++i) {
    Operand& operand = segment.inputs[i];
    if (inputs[i] == nullptr) return DYNRT_INVALID_ARGUMENT;
    SizesType sizes[kMaxRank];
    std::copy(operand.sizes, operand.sizes + operand.rank, sizes);
    if (segment.max_batch > 0 && i == 0) sizes[0] = static_cast<SizesType>(batch);
    // A tensor over the runtime's buffer: set_input copies it into a planned input, or makes
    // an unplanned input point at it (until the next set_input: Operand::bound).
    void* data = inputs[i];
    const DimOrderType* order = operand.dim_order;
    StridesType strides[kMaxRank];
    std::copy(operand.strides, operand.strides + operand.rank, strides);
    if (operand.convert) {  // permute into the method's layout first
      int64_t from[kMaxRank], to[kMaxRank];
      strides_for(operand.rank, sizes, operand.dim_order, from);
      strides_for(operand.rank, sizes, operand.method_order, to);
      permute_copy(operand.rank, sizes, inputs[i], from, operand.staging.get(), to);
      for (uint32_t d = 0; d < operand.rank; ++d) strides[d] = static_cast<StridesType>(to[d]);
      data = operand.staging.get();
      order = operand.method_order;
    }
    if (!operand.planned && operand.bound == data && operand.bound_batch == batch) continue;  // still bound
    TensorImpl impl(operand.type, operand.rank, sizes, data, const_cast<DimOrderType*>(order), strides);
    operand.bound = nullptr;
    et::Error error = method.set_input(et::EValue(Tensor(&impl)), i);
    if (error != et::Error::Ok) return DYNRT_BACKEND_ERROR;
    if (!operand.planned) {
      operand.bound = data;
      operand.bound_batch = batch;
    }
  }
  for (size_t i = 0; i < segment.outputs.size(); ++i) {
    if (outputs[i] == nullptr) return DYNRT_INVALID_ARGUMENT;
    Operand& operand = segment.outputs[i];
    void* destination = operand.convert ? operand.staging.get() : outputs[i];
    if (operand.planned || operand.bound == destination) continue;
    operand.bound = nullptr;
    if (method.set_output_data_ptr(destination, operand.bytes, i) != et::Error::Ok) return DYNRT_BACKEND_ERROR;
    operand.bound = destination;
  }
  {
    std::optional<NoThreadPoolGuard> serial;
    if (adapter.serial) serial.emplace();
    if (method.execute() != et::Error::Ok) return DYNRT_BACKEND_ERROR;
  }
  for (size_t i = 0; i < segment.outputs.size(); ++i) {
    const Operand& operand = segment.outputs[i];
    const et::EValue& value = method.get_output(i);
    if (!value.isTensor()) return DYNRT_BACKEND_ERROR;
    const Tensor& tensor = value.toTensor();
    size_t bytes = segment.max_batch > 0 && i == 0 ? operand.row_bytes * batch : operand.bytes;
    if (tensor.nbytes() != bytes) return DYNRT_BACKEND_ERROR;
    const void* data = tensor.const_data_ptr();
    if (operand.convert) {  // the method's layout -> the runtime's
      if (data == nullptr || tensor.dim() != (ssize_t)operand.rank) return DYNRT_BACKEND_ERROR;
      SizesType sizes[kMaxRank];
      int64_t from[kMaxRank], to[kMaxRank];
      for (uint32_t d = 0; d < operand.rank; ++d) {
        sizes[d] = tensor.size(d);
        from[d] = tensor.strides()[d];
      }
      strides_for(operand.rank, sizes, operand.dim_order, to);
      permute_copy(operand.rank, sizes, data, from, outputs[i], to);
    } else if (data != outputs[i]) {
      std::memcpy(outputs[i], data, bytes);
    }
  }
  return DYNRT_OK;
}

// --- vtable --------------------------------------------------------------------------------

// The runtime's own work between segments, on the pool the segments run on (dynrt_backend_impl.h):
// no second set of threads competes with XNNPACK's for the cores, and its workers, awake from
// the last segment, do that work instead of spinning.
void vt_parallel_for(void*, void (*task)(void*, uint32_t), void* argument, uint32_t tasks) {
#if DYNRT_EXECUTORCH_HAS_THREADPOOL
  auto* pool = ::executorch::extension::threadpool::get_threadpool();
  if (pool != nullptr) {
    pool->run([&](size_t t) { task(argument, static_cast<uint32_t>(t)); }, tasks);
    return;
  }
#endif
  for (uint32_t t = 0; t < tasks; ++t) task(argument, t);
}

dynrt_status vt_prepare_session(void* context, const dynrt_plan_info* plan, void** state_out, char* message,
                                size_t message_capacity) {
  if (context == nullptr || plan == nullptr || state_out == nullptr) return DYNRT_INVALID_ARGUMENT;
  *state_out = nullptr;
  try {
    auto state = std::make_unique<SessionState>();
    state->segments.resize(plan->segment_count);
    *state_out = state.release();
    return DYNRT_OK;
  } catch (const std::bad_alloc&) {
    set_message(message, message_capacity, "out of memory for a session of %u segments", plan->segment_count);
    return DYNRT_OUT_OF_MEMORY;
  } catch (...) {
    return DYNRT_BACKEND_ERROR;
  }
}

dynrt_status vt_prepare_segment(void* context, void* session_state, uint32_t segment, const dynrt_segment_info* info,
                                char* message, size_t message_capacity) {
  if (context == nullptr || session_state == nullptr || info == nullptr) return DYNRT_INVALID_ARGUMENT;
  try {
    return prepare(*static_cast<const Adapter*>(context), *static_cast<SessionState*>(session_state), segment, *info,
                   message, message_capacity);
  } catch (const std::bad_alloc&) {
    set_message(message, message_capacity, "segment %u: out of memory while loading", segment);
    return DYNRT_OUT_OF_MEMORY;
  } catch (...) {
    set_message(message, message_capacity, "segment %u: unexpected C++ exception while loading", segment);
    return DYNRT_BACKEND_ERROR;
  }
}

dynrt_status vt_run_segment(void* context, void* session_state, uint32_t segment, uint32_t batch, void* const* inputs,
                            void* const* outputs) {
  if (context == nullptr || session_state == nullptr) return DYNRT_INVALID_ARGUMENT;
  try {
    return run(*static_cast<const Adapter*>(context), *static_cast<SessionState*>(session_state), segment, batch,
               inputs, outputs);
  } catch (...) {
    return DYNRT_BACKEND_ERROR;
  }
}

void vt_release_session(void*, void* session_state) {
  delete static_cast<SessionState*>(session_state);  // its methods, then their memory and scratch
}

void vt_destroy(dynrt_backend* backend) {
  if (backend == nullptr) return;
  auto* adapter = static_cast<Adapter*>(backend->context);
  if (adapter != nullptr && adapter->pool_user) {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    --g_pool_users;
  }
  delete adapter;
  delete backend;
}

// The thread setting, applied to the process-wide pool (see dynrt_executorch.h).
dynrt_status claim_threads(Adapter& adapter, uint32_t threads, char* message, size_t capacity) {
  if (adapter.serial) return DYNRT_OK;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (threads > 1) {
#if DYNRT_EXECUTORCH_HAS_THREADPOOL
    auto* pool = ::executorch::extension::threadpool::get_threadpool();
    if (pool == nullptr) {
      set_message(message, capacity, "threads %u: ExecuTorch has no thread pool in this process", threads);
      return DYNRT_INVALID_ARGUMENT;
    }
    if (pool->get_thread_count() != threads) {
      if (g_pool_users > 0) {  // their methods hold the current pool
        set_message(message, capacity,
                    "threads %u: %u other ExecuTorch backend(s) of this process run on the shared pool of %zu "
                    "threads (destroy them first, or ask for the same count, or 1)",
                    threads, g_pool_users, pool->get_thread_count());
        return DYNRT_INVALID_ARGUMENT;
      }
      pool->_unsafe_reset_threadpool(threads);
      if (pool->get_thread_count() != threads) {
        set_message(message, capacity, "threads %u: ExecuTorch's pool could not be resized (it has %zu)", threads,
                    pool->get_thread_count());
        return DYNRT_INVALID_ARGUMENT;
      }
    }
#else
    set_message(message, capacity, "threads %u: this build has no ExecuTorch thread pool (use 0 or 1)", threads);
    return DYNRT_INVALID_ARGUMENT;
#endif
  }
  ++g_pool_users;
  adapter.pool_user = true;
  return DYNRT_OK;
}

}  // namespace

extern "C" dynrt_status dynrt_executorch_backend_create_v2(const void* pte, size_t pte_bytes,
                                                           const dynrt_backend_options* options, char* message,
                                                           size_t capacity, dynrt_backend_t* backend_out) {
  if (message != nullptr && capacity > 0) message[0] = '\0';
  if (backend_out == nullptr) {
    set_message(message, capacity, "backend_out is NULL");
    return DYNRT_INVALID_ARGUMENT;
  }
  *backend_out = nullptr;
  if (pte == nullptr || pte_bytes == 0) {
    set_message(message, capacity, "the program bytes are %s", pte == nullptr ? "NULL" : "empty");
    return DYNRT_INVALID_ARGUMENT;
  }
  if (reinterpret_cast<uintptr_t>(pte) % 16 != 0) {  // Program::load needs it
    set_message(message, capacity, "the program bytes must be 16-byte aligned (malloc and mmap are); they start at %p",
                pte);
    return DYNRT_INVALID_ARGUMENT;
  }
  // Fields the caller's struct has; the rest keep their defaults (dynrt.h).
  uint32_t threads = 0;
  if (options != nullptr) {
    // every version of the struct has threads: a smaller size is not one of them
    if (options->struct_size < offsetof(dynrt_backend_options, threads) + sizeof options->threads) {
      set_message(message, capacity,
                  "options.struct_size is %zu, not a dynrt_backend_options (start from DYNRT_BACKEND_OPTIONS_INIT)",
                  options->struct_size);
      return DYNRT_INVALID_ARGUMENT;
    }
    threads = options->threads;
  }
  try {
    et::runtime_init();
    auto adapter = std::make_unique<Adapter>();
    adapter->serial = threads == 1;
    adapter->loader.emplace(pte, pte_bytes);
    auto program = et::Program::load(&*adapter->loader, et::Program::Verification::InternalConsistency);
    if (!program.ok()) {
      set_message(message, capacity, "the %zu bytes are not an ExecuTorch program this runtime loads: %s", pte_bytes,
                  error_name(program.error()));
      return DYNRT_BACKEND_ERROR;
    }
    adapter->program.emplace(std::move(program.get()));

    auto backend = std::make_unique<dynrt_backend>();
    dynrt_status status = claim_threads(*adapter, threads, message, capacity);
    if (status != DYNRT_OK) return status;
    *backend = dynrt_backend{};
    backend->api_version = DYNRT_BACKEND_API_VERSION;
    backend->name = kBackendName;
    backend->artifact = pte;
    backend->artifact_bytes = pte_bytes;
    backend->buffer_alignment = kBufferAlignment;
    // XNNPACK may read up to XNN_EXTRA_BYTES (16) past a tensor it is given in place (an
    // input the method's memory plan does not own)
    backend->buffer_tail_bytes = kXnnpackExtraBytes;
    backend->prepare_session = vt_prepare_session;
    backend->prepare_segment = vt_prepare_segment;
    backend->run_segment = vt_run_segment;
    backend->release_session = vt_release_session;
    backend->destroy = vt_destroy;
    if (!adapter->serial) {
      backend->parallel_threads = pool_thread_count();
      if (backend->parallel_threads > 1) backend->parallel_for = vt_parallel_for;
    }
    backend->context = adapter.release();
    *backend_out = backend.release();
    return DYNRT_OK;
  } catch (const std::bad_alloc&) {
    set_message(message, capacity, "out of memory loading the program");
    return DYNRT_OUT_OF_MEMORY;
  } catch (...) {
    set_message(message, capacity, "unexpected C++ exception loading the program");
    return DYNRT_BACKEND_ERROR;
  }
}

extern "C" dynrt_status dynrt_executorch_backend_create(const void* pte, size_t pte_bytes, uint32_t threads,
                                                        dynrt_backend_t* backend_out) {
  dynrt_backend_options options = DYNRT_BACKEND_OPTIONS_INIT;
  options.threads = threads;
  return dynrt_executorch_backend_create_v2(pte, pte_bytes, &options, nullptr, 0, backend_out);
}

extern "C" uint32_t dynrt_executorch_thread_count(dynrt_backend_t backend) {
  if (backend == nullptr || backend->destroy != vt_destroy || backend->context == nullptr) return 0;
  const auto* adapter = static_cast<const Adapter*>(backend->context);
  if (adapter->serial) return 1;
  try {
    return pool_thread_count();
  } catch (...) {
    return 0;
  }
}
