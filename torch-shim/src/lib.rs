//! libtorch calls that tch does not expose, through `src/shim.cpp`: counting the operators a
//! piece of code dispatches, for the decode-step benchmark. The one crate with `unsafe`.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

extern "C" {
    fn torch_shim_op_count_begin();
    fn torch_shim_op_count_end() -> u64;
}

/// One count at a time: the callback and its counter are process-wide.
static COUNTING: Mutex<()> = Mutex::new(());

/// Runs `f` and returns its result with the number of ATen operator calls dispatched meanwhile
/// (on any thread; nested calls included, as PyTorch's profiler lists them).
pub fn count_ops<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: no arguments; shim.cpp's state is guarded by the lock, and end always follows.
    unsafe { torch_shim_op_count_begin() };
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    // SAFETY: as above; ends the count begun above, also when `f` panicked.
    let ops = unsafe { torch_shim_op_count_end() };
    match result {
        Ok(r) => (r, ops),
        Err(p) => panic::resume_unwind(p),
    }
}

#[cfg(test)]
mod tests {
    use super::count_ops;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn counts_the_operators_a_closure_dispatches() {
        let a = Tensor::ones([4], (Kind::Float, Device::Cpu));
        assert_eq!(count_ops(|| ()).1, 0);
        let (sum, ops) = count_ops(|| (&a + &a).sum(Kind::Float));
        assert_eq!(sum.double_value(&[]), 8.0);
        assert!(ops >= 2, "{ops} operators for an add and a sum");
        assert_eq!(count_ops(|| ()).1, 0, "the callback is gone after a count");
    }
}
