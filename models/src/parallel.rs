//! How many intra-op threads a piece of CPU work gets. libtorch splits each product over all
//! of a thread's intra-op threads; for a tiny product the fork and join cost more than the half
//! it hands off (MKL on 2 cores: `[2, 64] × [64, 256]` takes 2.1 µs on one thread, 3.6 µs on
//! two), and every product waits for the second thread, which a busy neighbour may hold.

/// Work whose products are of fewer multiply-adds than this runs on one thread. Measured on
/// 2 cores with the dispatch-bound Dia decode step (`[2, 64] × [64, 256]`: 2¹⁵): one thread is
/// as fast as two while the second core is free (1.24 against 1.28 ms) and up to 1.4× faster
/// while a neighbour uses it (1.26 against 1.82 ms); from 2¹⁶ (4 rows) two threads win.
const SPLIT_FROM: i64 = 1 << 16;

/// Runs `f`, whose products are of about `multiply_adds` each, on one intra-op thread where
/// they are too small to split, else on the calling thread's intra-op threads. Only the calling
/// thread's count changes, and it is restored after.
pub fn sized<R>(multiply_adds: i64, f: impl FnOnce() -> R) -> R {
    let threads = tch::get_num_threads();
    if multiply_adds >= SPLIT_FROM || threads == 1 {
        return f();
    }
    torch_shim::set_intra_op_threads(1);
    let _restore = Restore(threads);
    f()
}

/// Gives the calling thread its count back, also when the work panicked.
struct Restore(i32);

impl Drop for Restore {
    fn drop(&mut self) {
        torch_shim::set_intra_op_threads(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_work_runs_on_one_thread_and_the_count_comes_back() {
        torch_shim::set_intra_op_threads(2);
        assert_eq!(sized(SPLIT_FROM - 1, tch::get_num_threads), 1);
        assert_eq!(tch::get_num_threads(), 2, "the count is restored");
        assert_eq!(sized(SPLIT_FROM, tch::get_num_threads), 2);
        let panicked = std::panic::catch_unwind(|| sized(1, || panic!("work fails")));
        assert!(panicked.is_err());
        assert_eq!(tch::get_num_threads(), 2, "the count is restored after a panic");
    }
}
