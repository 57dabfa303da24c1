// Operator counting through libtorch's RecordFunction callbacks: a global callback on the
// FUNCTION scope fires once per operator call that goes through the dispatcher (nested calls
// included), which is what PyTorch's profiler lists as `aten::` events. And inference mode,
// which tch does not expose, a thread's own intra-op thread count, and oneDNN's matmul, which
// PyTorch registers as `mkldnn::` operators outside ATen's generated API.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <c10/core/InferenceMode.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace {
std::atomic<uint64_t> calls{0};
at::CallbackHandle handle = at::INVALID_CALLBACK_HANDLE;
// Calls by operator name, kept only when a count asks for names (a lock per call).
std::atomic<bool> keep_names{false};
std::mutex names_lock;
std::map<std::string, uint64_t> names;
std::string names_text;
// Why the calling thread's last oneDNN call failed.
thread_local std::string onednn_error;

// The dispatcher's handle of one operator, looked up on first use and kept: a lookup hashes the
// name under the dispatcher's lock, which products on the decode step need not pay each time.
// A lookup that throws (a build without the operator) is tried again on the next call.
struct Op {
  const char* name;
  const char* overload;
  std::optional<c10::OperatorHandle> handle;
  std::mutex lock;

  const c10::OperatorHandle& get() {
    std::lock_guard<std::mutex> guard(lock);
    if (!handle) handle = c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
    return *handle;
  }
};
Op linear_op{"mkldnn::_linear_pointwise", ""};
Op linear_add_op{"mkldnn::_linear_pointwise", "binary"};
Op pack_op{"mkldnn::_reorder_linear_weight", ""};

// Calls `op` with `args` through the dispatcher (boxed: the schema's C++ types are not in
// libtorch's headers) and returns its tensor on the heap, as tch owns tensors; null with
// `onednn_error` set where it throws.
at::Tensor* call_boxed(Op& op, std::vector<c10::IValue> args) {
  try {
    torch::jit::Stack stack(std::move(args));
    op.get().callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    onednn_error = e.what();
    return nullptr;
  }
}

std::unique_ptr<at::ObserverContext> count_call(const at::RecordFunction& fn) {
  calls.fetch_add(1, std::memory_order_relaxed);
  if (keep_names) {
    std::lock_guard<std::mutex> guard(names_lock);
    names[fn.name()] += 1;
  }
  return nullptr;
}
}  // namespace

extern "C" {
// Starts counting from zero, by name too where `by_name`. The caller pairs it with one end and
// never overlaps two counts.
void torch_shim_op_count_begin(bool by_name) {
  calls.store(0);
  names.clear();
  keep_names = by_name;
  handle = at::addGlobalCallback(
      at::RecordFunctionCallback(count_call).scopes({at::RecordScope::FUNCTION}));
}

// Stops counting and returns the calls since begin. The callback is removed, so operators
// outside a count pay nothing for it. The counts by name are then readable as text.
uint64_t torch_shim_op_count_end() {
  at::removeCallback(handle);
  handle = at::INVALID_CALLBACK_HANDLE;
  names_text.clear();
  for (const auto& [name, count] : names) {
    names_text += name + "\t" + std::to_string(count) + "\n";
  }
  return calls.load();
}

// The last count's calls by name, one `name\tcount\n` line each: its length in bytes, and a
// copy of at most `len` of them into `out`.
size_t torch_shim_op_names_len() { return names_text.size(); }
void torch_shim_op_names_copy(char* out, size_t len) {
  std::memcpy(out, names_text.data(), std::min(len, names_text.size()));
}

// Enters inference mode on the calling thread until the matching exit, on the same thread.
void* torch_shim_inference_mode_enter() { return new c10::InferenceMode(true); }
void torch_shim_inference_mode_exit(void* guard) { delete static_cast<c10::InferenceMode*>(guard); }

// Sets the calling thread's intra-op threads, OpenMP's and MKL's, as at::set_num_threads does,
// without also setting the process-wide count that other threads copy when they first run
// parallel work. Both setters are looked up in the loaded libraries (libgomp, and MKL inside
// libtorch_cpu: the C name, by value; the lower-case names are Fortran's, by pointer); a
// build without one skips it.
void torch_shim_set_intra_op_threads(int threads) {
  static const auto omp = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  static const auto mkl =
      reinterpret_cast<int (*)(int)>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
  // The thread's lazy first setting, which would overwrite ours, happens here if not yet.
  at::get_num_threads();
  if (omp != nullptr) omp(threads);
  if (mkl != nullptr) mkl(threads);
}

// oneDNN's `x·Wᵀ` for rows `x` [R, in] and a weight [out, in], dense or packed by
// `torch_shim_onednn_pack`; plus `other` [R, out] where it is given (a fused add). Null on
// failure, with the reason in `torch_shim_onednn_error`.
at::Tensor* torch_shim_onednn_linear(const at::Tensor* x, const at::Tensor* weight,
                                     const at::Tensor* other) {
  if (other == nullptr) {
    return call_boxed(linear_op,
                      {*x, *weight, c10::IValue(), "none",
                       c10::List<std::optional<at::Scalar>>(), c10::IValue()});
  }
  return call_boxed(linear_add_op,
                    {*x, *other, *weight, c10::IValue(), "add"});
}

// A weight [out, in] in the blocked layout oneDNN picks for products of `rows` rows.
at::Tensor* torch_shim_onednn_pack(const at::Tensor* weight, int64_t rows) {
  return call_boxed(pack_op, {*weight, rows});
}

// The reason of the calling thread's last failed oneDNN call: its length, and a copy of at
// most `len` bytes into `out`.
size_t torch_shim_onednn_error_len() { return onednn_error.size(); }
void torch_shim_onednn_error_copy(char* out, size_t len) {
  std::memcpy(out, onednn_error.data(), std::min(len, onednn_error.size()));
}
}
