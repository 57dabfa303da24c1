//! libtorch calls that tch does not expose, through `src/shim.cpp`: counting the operators a
//! piece of code dispatches, for the decode-step benchmark, inference mode, a thread's own
//! intra-op thread count, and oneDNN's matmul ([`onednn`]). The one crate with `unsafe`.

pub mod onednn;

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

extern "C" {
    fn torch_shim_op_count_begin(by_name: bool);
    fn torch_shim_op_count_end() -> u64;
    fn torch_shim_op_names_len() -> usize;
    fn torch_shim_op_names_copy(out: *mut u8, len: usize);
    fn torch_shim_inference_mode_enter() -> *mut c_void;
    fn torch_shim_inference_mode_exit(guard: *mut c_void);
    fn torch_shim_set_intra_op_threads(threads: i32);
}

/// Sets the calling thread's intra-op threads (read back by `tch::get_num_threads`). Unlike
/// `tch::set_num_threads`, it leaves the process-wide count alone, which threads copy when
/// they first run parallel work: a thread that narrows its own count for a while does not
/// narrow a thread starting meanwhile for good.
pub fn set_intra_op_threads(threads: i32) {
    assert!(threads > 0, "{threads} intra-op threads");
    // SAFETY: plain setters of the calling thread's counts, called with a positive count.
    unsafe { torch_shim_set_intra_op_threads(threads) }
}

/// Inference mode on this thread while the guard lives: like `no_grad`, and operators also skip
/// autograd's and view tracking's dispatch keys, which is a part of every operator's fixed cost.
/// Tensors made meanwhile are inference tensors: they cannot be changed in place outside it.
#[must_use = "inference mode ends when the guard is dropped"]
pub struct InferenceMode {
    guard: *mut c_void,
    // The mode is thread-local: the guard must end on the thread that began it.
    _not_send: PhantomData<*mut ()>,
}

/// Enters inference mode on the calling thread until the guard is dropped.
pub fn inference_mode() -> InferenceMode {
    // SAFETY: allocates a c10::InferenceMode, released once by Drop on this same thread.
    let guard = unsafe { torch_shim_inference_mode_enter() };
    InferenceMode { guard, _not_send: PhantomData }
}

impl Drop for InferenceMode {
    fn drop(&mut self) {
        // SAFETY: `guard` came from enter, is dropped once, on its thread (the type is !Send).
        unsafe { torch_shim_inference_mode_exit(self.guard) };
    }
}

/// One count at a time: the callback and its counter are process-wide.
static COUNTING: Mutex<()> = Mutex::new(());

/// Runs `f` and returns its result with the number of ATen operator calls dispatched meanwhile
/// (on any thread; nested calls included, as PyTorch's profiler lists them).
pub fn count_ops<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let (result, ops, _) = count(f, false);
    (result, ops)
}

/// Like [`count_ops`], by operator name (`aten::mm`, …): a lock per call, so slower.
pub fn count_ops_by_name<R>(f: impl FnOnce() -> R) -> (R, BTreeMap<String, u64>) {
    let (result, _, names) = count(f, true);
    (result, names)
}

fn count<R>(f: impl FnOnce() -> R, by_name: bool) -> (R, u64, BTreeMap<String, u64>) {
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: a plain flag; shim.cpp's state is guarded by the lock, and end always follows.
    unsafe { torch_shim_op_count_begin(by_name) };
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    // SAFETY: as above; ends the count begun above, also when `f` panicked.
    let ops = unsafe { torch_shim_op_count_end() };
    let names = if by_name { names_of_last_count() } else { BTreeMap::new() };
    match result {
        Ok(r) => (r, ops, names),
        Err(p) => panic::resume_unwind(p),
    }
}

/// The calls by name of the count that just ended.
fn names_of_last_count() -> BTreeMap<String, u64> {
    // SAFETY: the text is not touched until the next count, which the caller's lock keeps out;
    // the copy writes at most `len` bytes into a buffer of `len`.
    let text = unsafe {
        let len = torch_shim_op_names_len();
        let mut bytes = vec![0u8; len];
        torch_shim_op_names_copy(bytes.as_mut_ptr(), len);
        bytes
    };
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|line| {
            let (name, count) = line.split_once('\t')?;
            Some((name.to_owned(), count.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{count_ops, count_ops_by_name, inference_mode, set_intra_op_threads};
    use tch::{Device, Kind, Tensor};

    #[test]
    fn inference_mode_makes_inference_tensors_while_its_guard_lives() {
        let weight = Tensor::ones([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let made = {
            let _mode = inference_mode();
            let made = &weight * 2.0;
            assert!(!made.requires_grad(), "no graph is recorded in inference mode");
            made
        };
        assert!(made.is_inference(), "a tensor made in inference mode is an inference tensor");
        assert!((&weight * 2.0).requires_grad(), "the mode ends with its guard");
        assert!(!(&weight * 2.0).is_inference());
        assert_eq!(made.sum(Kind::Float).double_value(&[]), 8.0);
    }

    #[test]
    fn a_threads_own_count_does_not_become_the_default_of_new_threads() {
        tch::set_num_threads(2);
        set_intra_op_threads(1);
        assert_eq!(tch::get_num_threads(), 1);
        let (a, b) = (
            Tensor::ones([64, 64], (Kind::Float, Device::Cpu)),
            Tensor::ones([64], (Kind::Float, Device::Cpu)),
        );
        assert_eq!(
            a.mv(&b).sum(Kind::Float).double_value(&[]),
            4096.0,
            "products still run on the narrowed thread"
        );
        let fresh = std::thread::spawn(tch::get_num_threads).join().expect("the thread ends");
        assert_eq!(fresh, 2, "a new thread starts from the process-wide count");
        set_intra_op_threads(2);
        assert_eq!(tch::get_num_threads(), 2);
    }

    #[test]
    fn counts_the_operators_a_closure_dispatches() {
        let a = Tensor::ones([4], (Kind::Float, Device::Cpu));
        assert_eq!(count_ops(|| ()).1, 0);
        let (sum, ops) = count_ops(|| (&a + &a).sum(Kind::Float));
        assert_eq!(sum.double_value(&[]), 8.0);
        assert!(ops >= 2, "{ops} operators for an add and a sum");
        assert_eq!(count_ops(|| ()).1, 0, "the callback is gone after a count");
    }

    #[test]
    fn counts_by_operator_name() {
        let a = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let (_, names) = count_ops_by_name(|| (&a + &a) * &a);
        assert_eq!(names.get("aten::add"), Some(&1), "{names:?}");
        assert_eq!(names.get("aten::mul"), Some(&1), "{names:?}");
        let (_, names) = count_ops_by_name(|| ());
        assert!(names.is_empty(), "a new count starts empty: {names:?}");
    }
}
