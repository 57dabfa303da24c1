// Operator counting through libtorch's RecordFunction callbacks: a global callback on the
// FUNCTION scope fires once per operator call that goes through the dispatcher (nested calls
// included), which is what PyTorch's profiler lists as `aten::` events.
#include <ATen/record_function.h>

#include <atomic>
#include <cstdint>

namespace {
std::atomic<uint64_t> calls{0};
at::CallbackHandle handle = at::INVALID_CALLBACK_HANDLE;

std::unique_ptr<at::ObserverContext> count_call(const at::RecordFunction&) {
  calls.fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}
}  // namespace

extern "C" {
// Starts counting from zero. The caller pairs it with one end and never overlaps two counts.
void torch_shim_op_count_begin() {
  calls.store(0);
  handle = at::addGlobalCallback(
      at::RecordFunctionCallback(count_call).scopes({at::RecordScope::FUNCTION}));
}

// Stops counting and returns the calls since begin. The callback is removed, so operators
// outside a count pay nothing for it.
uint64_t torch_shim_op_count_end() {
  at::removeCallback(handle);
  handle = at::INVALID_CALLBACK_HANDLE;
  return calls.load();
}
}
