//! How a linear's weight is stored and multiplied on the machine it runs on, chosen by timing.
//!
//! On the CPU the fastest way to multiply a few rows by a weight depends on the BLAS's kernels,
//! the caches and the memory, not only on the shape: on one 2-core machine `W·xᵀ` ran the 1.6B
//! model's MLP at 2 rows twice as fast as `x·Wᵀ`, on another (with a far larger L3) `x·Wᵀ` ran it
//! twice as fast as `W·xᵀ`, and `[2, 64] × [64, 9252]` (the small head) took 17 µs as `x·W` from
//! `[in, out]` storage against 65 µs as `W·xᵀ`. So each weight shape is timed once per process,
//! in the forms its storage allows, at a few row counts, and keeps the storage whose best forms
//! are fastest over them (as cuDNN's benchmark mode or FFTW's planner choose their algorithms).
//! The timings are of a hot weight; for the shapes timed so far they ranked the forms as they
//! rank with weights streamed from memory (the 1.6B MLP at 2 rows, cold: `x·Wᵀ` 29 GB/s,
//! `x·W` 16, `W·xᵀ` 15).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

/// Rows timed: 2 (one request's CFG pair), 8 and 32 (4 and 16 requests).
const ROWS: [i64; 3] = [2, 8, 32];

/// How one weight is stored and multiplied. The form can follow the row count, so a request's
/// logits can differ in their last bits with the size of its batch, as with any BLAS that picks
/// its kernels by shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `[in, out]` in memory, products `x·W`.
    InOut,
    /// `[out, in]` in memory (the checkpoint's layout): `W·xᵀ` for `columns_from..=columns_to`
    /// rows, `x·Wᵀ` for the others.
    OutIn { columns_from: i64, columns_to: i64 },
}

impl Plan {
    /// `[out, in]`, `x·Wᵀ` at every row count.
    pub const BY_ROWS: Plan = Plan::OutIn { columns_from: i64::MAX, columns_to: i64::MAX };

    /// `[out, in]`, `W·xᵀ` from `rows` rows on.
    pub const fn by_columns_from(rows: i64) -> Plan {
        Plan::OutIn { columns_from: rows, columns_to: i64::MAX }
    }

    /// Whether a product of `rows` rows is made as `W·xᵀ`, `[out, rows]`.
    pub fn by_columns(self, rows: i64) -> bool {
        matches!(self, Plan::OutIn { columns_from, columns_to }
            if (columns_from..=columns_to).contains(&rows))
    }
}

/// The rows each timed count of [`ROWS`] stands for: those nearest it (geometrically).
const BUCKETS: [(i64, i64); 3] = [(1, 4), (5, 16), (17, i64::MAX)];

/// Seconds per product of each form at the rows of [`ROWS`].
#[derive(Debug, Clone, Copy)]
struct Timings {
    /// `x·W`, `[in, out]` storage.
    in_out: [f64; ROWS.len()],
    /// `x·Wᵀ`, `[out, in]` storage.
    out_in_rows: [f64; ROWS.len()],
    /// `W·xᵀ`, `[out, in]` storage.
    out_in_columns: [f64; ROWS.len()],
}

/// The plan of an `[out, in]` weight of `kind` on `device`: timed on the first call for its
/// shape, the same answer after. On CUDA every product is `x·W` (untimed): a consumer's
/// copies to rows would be kernel launches, which bound a step there.
pub fn plan(in_dim: i64, out_dim: i64, kind: Kind, device: Device) -> Plan {
    if device.is_cuda() {
        return Plan::InOut;
    }
    if let Some(plan) = *PINNED.lock().expect("pin lock") {
        return plan;
    }
    let key = (in_dim, out_dim, kind);
    if let Some(plan) = plans().lock().expect("plans lock").get(&key) {
        return *plan;
    }
    let plan = choose(&time_forms(in_dim, out_dim, kind));
    tracing::debug!(in_dim, out_dim, ?kind, ?plan, "product plan");
    *plans().lock().expect("plans lock").entry(key).or_insert(plan)
}

/// The plan every CPU weight takes while one is pinned ([`pin`]).
static PINNED: Mutex<Option<Plan>> = Mutex::new(None);

/// Pins the plan of every CPU weight prepared from now on, untimed (`None`: timed again), for
/// the same forms on every machine and at every start: results of different forms can differ
/// in their last bits. Weights already prepared keep theirs.
pub fn pin(plan: Option<Plan>) {
    *PINNED.lock().expect("pin lock") = plan;
}

/// A weight's shape and dtype: `(in, out, kind)`.
type Shape = (i64, i64, Kind);

/// The plans of the shapes timed so far.
fn plans() -> &'static Mutex<HashMap<Shape, Plan>> {
    static PLANS: OnceLock<Mutex<HashMap<Shape, Plan>>> = OnceLock::new();
    PLANS.get_or_init(Mutex::default)
}

/// The storage whose best forms have the smallest product of times over [`ROWS`] (each row
/// count weighs alike, whatever its absolute time), and for `[out, in]` the rows for which
/// `W·xᵀ` beats `x·Wᵀ`: the buckets of the first run of timed counts where it does (at 2 rows
/// on some machines, from 8 on others).
fn choose(t: &Timings) -> Plan {
    let log_sum = |times: &mut dyn Iterator<Item = f64>| times.map(f64::ln).sum::<f64>();
    let out_in_best = t.out_in_rows.iter().zip(&t.out_in_columns).map(|(r, c)| r.min(*c));
    if log_sum(&mut t.in_out.iter().copied()) <= log_sum(&mut out_in_best.into_iter()) {
        return Plan::InOut;
    }
    let columns_win = |i: usize| t.out_in_columns[i] < t.out_in_rows[i];
    let Some(first) = (0..ROWS.len()).find(|&i| columns_win(i)) else { return Plan::BY_ROWS };
    let last = (first..ROWS.len()).take_while(|&i| columns_win(i)).last().unwrap_or(first);
    Plan::OutIn { columns_from: BUCKETS[first].0, columns_to: BUCKETS[last].1 }
}

fn time_forms(in_dim: i64, out_dim: i64, kind: Kind) -> Timings {
    let _guard = tch::no_grad_guard();
    let w_oxi = Tensor::randn([out_dim, in_dim], (kind, Device::Cpu));
    let w_ixo = w_oxi.tr().contiguous();
    let mut t = Timings {
        in_out: [0.0; ROWS.len()],
        out_in_rows: [0.0; ROWS.len()],
        out_in_columns: [0.0; ROWS.len()],
    };
    for (i, rows) in ROWS.into_iter().enumerate() {
        let x = Tensor::randn([rows, in_dim], (kind, Device::Cpu));
        t.in_out[i] = seconds_per_call(|| x.mm(&w_ixo));
        t.out_in_rows[i] = seconds_per_call(|| x.mm(&w_oxi.tr()));
        t.out_in_columns[i] = seconds_per_call(|| w_oxi.mm(&x.tr()));
    }
    t
}

/// The fastest of three timed runs of `f` after a warm-up call, each run as many calls as fill
/// about 300 µs, so that the clock's resolution does not decide between tiny products.
fn seconds_per_call(f: impl Fn() -> Tensor) -> f64 {
    let run = |calls: u32| {
        let start = Instant::now();
        for _ in 0..calls {
            drop(f());
        }
        start.elapsed().as_secs_f64() / f64::from(calls)
    };
    let once = run(1);
    let calls = (Duration::from_micros(300).as_secs_f64() / once).ceil().clamp(1.0, 1000.0);
    (0..3).map(|_| run(calls as u32)).fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(in_out: [f64; 3], out_in_rows: [f64; 3], out_in_columns: [f64; 3]) -> Timings {
        Timings { in_out, out_in_rows, out_in_columns }
    }

    #[test]
    fn the_storage_with_the_fastest_forms_over_the_row_counts_wins() {
        // x·W fastest at every count.
        assert_eq!(
            choose(&timings([1.0, 2.0, 4.0], [2.0, 3.0, 5.0], [3.0, 4.0, 5.0])),
            Plan::InOut
        );
        // x·Wᵀ at 2 rows, W·xᵀ from 8: [out, in] storage, by columns from 8 rows.
        let plan = choose(&timings([2.0, 3.0, 5.0], [1.0, 4.0, 6.0], [3.0, 2.5, 4.0]));
        assert_eq!(plan, Plan::by_columns_from(5));
        assert!(!plan.by_columns(4) && plan.by_columns(5) && plan.by_columns(1000));
        // W·xᵀ at every count: by columns from one row.
        let plan = choose(&timings([2.0, 3.0, 5.0], [3.0, 4.0, 6.0], [1.0, 2.0, 4.0]));
        assert_eq!(plan, Plan::by_columns_from(1));
        // W·xᵀ wins at 8 rows only: by columns for the rows nearest 8.
        let plan = choose(&timings([9.0, 9.0, 9.0], [1.0, 4.0, 3.0], [2.0, 3.0, 4.0]));
        assert_eq!(plan, Plan::OutIn { columns_from: 5, columns_to: 16 });
        assert!(!plan.by_columns(4) && plan.by_columns(16) && !plan.by_columns(17));
        // W·xᵀ three times as fast at 2 rows, slower from 32 (a machine whose GEMV of the
        // transposed weight is slow): by columns for small batches only.
        let plan = choose(&timings([5.0, 6.0, 9.0], [6.6, 6.4, 8.0], [1.6, 5.7, 12.0]));
        assert_eq!(plan, Plan::OutIn { columns_from: 1, columns_to: 16 });
        assert!(plan.by_columns(2) && plan.by_columns(8) && !plan.by_columns(32));
        // x·Wᵀ at every count.
        let plan = choose(&timings([9.0, 9.0, 9.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]));
        assert_eq!(plan, Plan::BY_ROWS);
        assert!(!plan.by_columns(1) && !plan.by_columns(i64::MAX - 1));
        // Twice as fast at 2 rows outweighs 10% slower at 8 and 32: each count weighs alike,
        // where summed times would let the largest decide.
        let plan = choose(&timings([1.0, 10.0, 100.0], [2.0, 9.0, 90.0], [5.0, 50.0, 500.0]));
        assert_eq!(plan, Plan::InOut);
    }

    #[test]
    fn a_shape_is_timed_once_and_cuda_multiplies_by_rows() {
        let key = (24, 40, Kind::Float);
        let first = plan(24, 40, Kind::Float, Device::Cpu);
        assert_eq!(plans().lock().unwrap().get(&key), Some(&first), "the plan is kept");
        // What is kept is what a later call answers, untimed.
        let kept = Plan::by_columns_from(3);
        plans().lock().unwrap().insert(key, kept);
        assert_eq!(plan(24, 40, Kind::Float, Device::Cpu), kept);
        assert_eq!(plan(24, 40, Kind::Float, Device::Cuda(0)), Plan::InOut);
    }
}
