// Operator counting through libtorch's RecordFunction callbacks: a global callback on the
// FUNCTION scope fires once per operator call that goes through the dispatcher (nested calls
// included), which is what PyTorch's profiler lists as `aten::` events. And inference mode,
// which tch does not expose, and a thread's own intra-op thread count.
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/core/InferenceMode.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <string>

namespace {
std::atomic<uint64_t> calls{0};
at::CallbackHandle handle = at::INVALID_CALLBACK_HANDLE;
// Calls by operator name, kept only when a count asks for names (a lock per call).
std::atomic<bool> keep_names{false};
std::mutex names_lock;
std::map<std::string, uint64_t> names;
std::string names_text;

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
}
