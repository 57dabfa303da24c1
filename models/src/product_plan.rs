//! How a linear's weight is stored and multiplied on the machine it runs on, chosen by timing.
//!
//! On the CPU the fastest way to multiply a few rows by a weight depends on the library's
//! kernels, the caches and the memory, not only on the shape: on one 2-core machine MKL's `W·xᵀ`
//! ran the 1.6B model's MLP at 2 rows twice as fast as its `x·Wᵀ`, on another (with a far larger
//! L3) `x·Wᵀ` ran it twice as fast as `W·xᵀ`, and `[2, 64] × [64, 9252]` (the small head) took
//! 17 µs as `x·W` from `[in, out]` storage against 65 µs as `W·xᵀ`. oneDNN's matmul, whose
//! kernels are made for the shape at hand, ran the 1.6B MLP at 8 and 32 rows twice as fast as
//! MKL's best form on an AMD EPYC (Zen 4), faster still with the weight packed in its blocked
//! layout, but costs about 10 µs more per call than MKL, so loses on tiny shapes. So each
//! weight shape is timed once per process, in the forms its storage allows, at a few row counts,
//! and keeps the storage whose best forms are fastest over them (as cuDNN's benchmark mode or
//! FFTW's planner choose their algorithms). The timings are of a hot weight; for the shapes
//! timed so far they ranked the forms as they rank with weights streamed from memory.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use torch_shim::onednn;

/// Rows timed: 2 (one request's CFG pair), 8 and 32 (4 and 16 requests).
const ROWS: [i64; 3] = [2, 8, 32];

/// The rows each timed count of [`ROWS`] stands for: those nearest it (geometrically).
const BUCKETS: [(i64, i64); ROWS.len()] = [(1, 4), (5, 16), (17, i64::MAX)];

/// How one product is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// MKL's `x·W` or `x·Wᵀ`, as the weight is stored: `[R, out]`.
    Rows,
    /// MKL's `W·xᵀ` of an `[out, in]` weight: `[out, R]`, seen as rows through a transposed view.
    Columns,
    /// oneDNN's matmul: `[R, out]`.
    OneDnn,
}

/// How one weight is stored and multiplied. The form can follow the row count, so a request's
/// logits can differ in their last bits with the size of its batch, as with any BLAS that picks
/// its kernels by shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `[in, out]` in memory, products `x·W`.
    InOut,
    /// `[out, in]` in memory (the checkpoint's layout), the form of each bucket of rows:
    /// `forms[i]` for the rows nearest `ROWS[i]`, 1–4, 5–16 and 17 on.
    OutIn([Form; ROWS.len()]),
    /// oneDNN's blocked layout for products of `rows` rows, products by oneDNN at every count.
    Packed { rows: i64 },
}

impl Plan {
    /// `[out, in]`, `x·Wᵀ` at every row count.
    pub const BY_ROWS: Plan = Plan::OutIn([Form::Rows; ROWS.len()]);

    /// The form of a product of `rows` rows.
    pub fn form(self, rows: i64) -> Form {
        match self {
            Plan::InOut => Form::Rows,
            Plan::Packed { .. } => Form::OneDnn,
            Plan::OutIn(forms) => {
                let bucket = BUCKETS.iter().position(|&(_, last)| rows <= last);
                forms[bucket.unwrap_or(ROWS.len() - 1)]
            }
        }
    }
}

/// Seconds per product of each form at the rows of [`ROWS`]; infinite for a form this build
/// or dtype cannot make.
#[derive(Debug, Clone, Copy)]
struct Timings {
    /// `x·W`, `[in, out]` storage.
    in_out: [f64; ROWS.len()],
    /// `x·Wᵀ`, `[out, in]` storage.
    out_in_rows: [f64; ROWS.len()],
    /// `W·xᵀ`, `[out, in]` storage.
    out_in_columns: [f64; ROWS.len()],
    /// oneDNN, `[out, in]` storage.
    out_in_onednn: [f64; ROWS.len()],
    /// oneDNN, packed for `ROWS[j]` rows: `packed[j]`.
    packed: [[f64; ROWS.len()]; ROWS.len()],
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
/// count weighs alike, whatever its absolute time); for `[out, in]` storage, each bucket's
/// fastest form. Ties go to the storage listed first.
fn choose(t: &Timings) -> Plan {
    let score = |times: [f64; ROWS.len()]| times.iter().map(|t| t.ln()).sum::<f64>();
    // Each bucket's fastest `[out, in]` form and its time.
    let out_in: [(Form, f64); ROWS.len()] = std::array::from_fn(|i| {
        [
            (Form::Rows, t.out_in_rows[i]),
            (Form::Columns, t.out_in_columns[i]),
            (Form::OneDnn, t.out_in_onednn[i]),
        ]
        .into_iter()
        .fold((Form::Rows, f64::INFINITY), |best, c| if c.1 < best.1 { c } else { best })
    });
    let (out_in_forms, out_in_best) = (out_in.map(|(form, _)| form), out_in.map(|(_, t)| t));
    let candidates = [(Plan::InOut, t.in_out), (Plan::OutIn(out_in_forms), out_in_best)]
        .into_iter()
        .chain(ROWS.iter().zip(t.packed).map(|(&rows, times)| (Plan::Packed { rows }, times)));
    let (plan, _) = candidates
        .map(|(plan, times)| (plan, score(times)))
        .fold((Plan::InOut, f64::INFINITY), |best, c| if c.1 < best.1 { c } else { best });
    plan
}

fn time_forms(in_dim: i64, out_dim: i64, kind: Kind) -> Timings {
    let _guard = tch::no_grad_guard();
    let w_oxi = Tensor::randn([out_dim, in_dim], (kind, Device::Cpu));
    let w_ixo = w_oxi.tr().contiguous();
    // Packed for each timed count, where oneDNN takes this dtype.
    let packed: Vec<Option<Tensor>> =
        ROWS.iter().map(|&rows| onednn::pack(&w_oxi, rows).ok()).collect();
    let mut t = Timings {
        in_out: [0.0; ROWS.len()],
        out_in_rows: [0.0; ROWS.len()],
        out_in_columns: [0.0; ROWS.len()],
        out_in_onednn: [0.0; ROWS.len()],
        packed: [[f64::INFINITY; ROWS.len()]; ROWS.len()],
    };
    for (i, rows) in ROWS.into_iter().enumerate() {
        let x = Tensor::randn([rows, in_dim], (kind, Device::Cpu));
        t.in_out[i] = seconds_per_call(|| Some(x.mm(&w_ixo)));
        t.out_in_rows[i] = seconds_per_call(|| Some(x.mm(&w_oxi.tr())));
        t.out_in_columns[i] = seconds_per_call(|| Some(w_oxi.mm(&x.tr())));
        t.out_in_onednn[i] = seconds_per_call(|| onednn::linear(&x, &w_oxi).ok());
        for (j, weight) in packed.iter().enumerate() {
            if let Some(weight) = weight {
                t.packed[j][i] = seconds_per_call(|| onednn::linear(&x, weight).ok());
            }
        }
    }
    t
}

/// The fastest of three timed runs of `f` after a warm-up call, each run as many calls as fill
/// about 300 µs, so that the clock's resolution does not decide between tiny products; infinite
/// where the warm-up call makes nothing (a form that fails).
fn seconds_per_call(f: impl Fn() -> Option<Tensor>) -> f64 {
    let start = Instant::now();
    if f().is_none() {
        return f64::INFINITY;
    }
    let once = start.elapsed().as_secs_f64();
    let run = |calls: u32| {
        let start = Instant::now();
        for _ in 0..calls {
            drop(f());
        }
        start.elapsed().as_secs_f64() / f64::from(calls)
    };
    let calls = (Duration::from_micros(300).as_secs_f64() / once).ceil().clamp(1.0, 1000.0);
    (0..3).map(|_| run(calls as u32)).fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;
    use Form::{Columns, OneDnn, Rows};

    /// Timings of the MKL forms, oneDNN's unavailable.
    fn mkl(in_out: [f64; 3], out_in_rows: [f64; 3], out_in_columns: [f64; 3]) -> Timings {
        Timings {
            in_out,
            out_in_rows,
            out_in_columns,
            out_in_onednn: [INF; 3],
            packed: [[INF; 3]; 3],
        }
    }

    #[test]
    fn the_storage_with_the_fastest_forms_over_the_row_counts_wins() {
        // x·W fastest at every count.
        let t = mkl([1.0, 2.0, 4.0], [2.0, 3.0, 5.0], [3.0, 4.0, 5.0]);
        assert_eq!(choose(&t), Plan::InOut);
        // x·Wᵀ at 2 rows, W·xᵀ from 8: [out, in] storage, by columns from 5 rows.
        let plan = choose(&mkl([2.0, 3.0, 5.0], [1.0, 4.0, 6.0], [3.0, 2.5, 4.0]));
        assert_eq!(plan, Plan::OutIn([Rows, Columns, Columns]));
        assert_eq!([4, 5, 1000].map(|rows| plan.form(rows)), [Rows, Columns, Columns]);
        // W·xᵀ wins at 8 rows only: by columns for the rows nearest 8.
        let plan = choose(&mkl([9.0, 9.0, 9.0], [1.0, 4.0, 3.0], [2.0, 3.0, 4.0]));
        assert_eq!(
            [1, 4, 5, 16, 17].map(|rows| plan.form(rows)),
            [Rows, Rows, Columns, Columns, Rows]
        );
        // W·xᵀ at every count: by columns from one row.
        let plan = choose(&mkl([2.0, 3.0, 5.0], [3.0, 4.0, 6.0], [1.0, 2.0, 4.0]));
        assert_eq!(plan, Plan::OutIn([Columns; 3]));
        // W·xᵀ three times as fast at 2 rows, slower from 32 (a machine whose GEMV of the
        // transposed weight is slow): by columns for small batches only.
        let plan = choose(&mkl([5.0, 6.0, 9.0], [6.6, 6.4, 8.0], [1.6, 5.7, 12.0]));
        assert_eq!(plan, Plan::OutIn([Columns, Columns, Rows]));
        assert_eq!([2, 8, 32].map(|rows| plan.form(rows)), [Columns, Columns, Rows]);
        // x·Wᵀ at every count.
        let plan = choose(&mkl([9.0, 9.0, 9.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]));
        assert_eq!(plan, Plan::BY_ROWS);
        assert_eq!([1, i64::MAX - 1].map(|rows| plan.form(rows)), [Rows, Rows]);
        // Twice as fast at 2 rows outweighs 10% slower at 8 and 32: each count weighs alike,
        // where summed times would let the largest decide.
        let t = mkl([1.0, 10.0, 100.0], [2.0, 9.0, 90.0], [5.0, 50.0, 500.0]);
        assert_eq!(choose(&t), Plan::InOut);
    }

    #[test]
    fn onednn_is_taken_where_it_is_fastest_and_never_where_it_fails() {
        // oneDNN on the weight as loaded wins at 8 and 32 rows, W·xᵀ at 2.
        let mut t = mkl([5.0, 9.0, 20.0], [6.0, 8.0, 15.0], [2.0, 9.0, 16.0]);
        t.out_in_onednn = [3.0, 4.0, 8.0];
        assert_eq!(choose(&t), Plan::OutIn([Columns, OneDnn, OneDnn]));
        // Packed for 8 rows beats every [out, in] form over the counts, though not at 2 rows.
        t.packed[1] = [2.5, 3.0, 6.0];
        assert_eq!(choose(&t), Plan::Packed { rows: 8 });
        assert_eq!(Plan::Packed { rows: 8 }.form(2), OneDnn);
        // Packings that fail (infinite) lose to every form that runs.
        t.packed = [[INF; 3]; 3];
        t.out_in_onednn = [INF; 3];
        assert_eq!(choose(&t), Plan::OutIn([Columns, Rows, Rows]));
    }

    #[test]
    fn a_shape_is_timed_once_and_cuda_multiplies_by_rows() {
        let key = (24, 40, Kind::Float);
        let first = plan(24, 40, Kind::Float, Device::Cpu);
        assert_eq!(plans().lock().unwrap().get(&key), Some(&first), "the plan is kept");
        // What is kept is what a later call answers, untimed.
        let kept = Plan::OutIn([Columns, Rows, OneDnn]);
        plans().lock().unwrap().insert(key, kept);
        assert_eq!(plan(24, 40, Kind::Float, Device::Cpu), kept);
        assert_eq!(plan(24, 40, Kind::Float, Device::Cuda(0)), Plan::InOut);
    }

    #[test]
    fn a_form_that_fails_times_infinite() {
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([4, 5], (Kind::Float, Device::Cpu));
        assert_eq!(seconds_per_call(|| onednn::linear(&x, &w).ok()), INF);
        let w = Tensor::ones([4, 3], (Kind::Float, Device::Cpu));
        let t = seconds_per_call(|| onednn::linear(&x, &w).ok());
        assert!(t.is_finite() && t > 0.0, "{t}");
    }
}
