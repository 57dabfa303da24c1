//! Layers tch lacks (bias-free linear, RMSNorm) and the layout conversions between checkpoint
//! conventions, each in one named helper.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use crate::product_plan::{self, Form, Plan};
use torch_shim::onednn;

/// `y = x Wᵀ` with a transformers-layout `[out, in]` weight and no bias (Dia has none), stored
/// and multiplied as its [`Plan`] says once [`Linear::choose_plan`] has run.
#[derive(Debug)]
pub struct Linear {
    /// The `[out, in]` weight (the VarStore's variable) in the plan's memory layout; empty where
    /// the plan packs it, so that it is not held twice.
    weight: Tensor,
    /// `Wᵀ` as a view, taken once: a 2D input then costs one `mm` and no transpose per call.
    /// Loading copies into the weight in place, so the view stays valid; `set_plan` and
    /// `fuse_linears`, which replace the weight, take it again.
    weight_t: Tensor,
    /// oneDNN's blocked copy where the plan is [`Plan::Packed`].
    packed: Option<Tensor>,
    plan: Plan,
}

impl Linear {
    pub fn new(vs: nn::Path, in_dim: i64, out_dim: i64) -> Self {
        Self::from_weight(vs.var("weight", &[out_dim, in_dim], Init::Const(0.)))
    }

    /// As loaded: `[out, in]`, products by rows.
    fn from_weight(weight: Tensor) -> Self {
        Self { weight_t: weight.tr(), weight, packed: None, plan: Plan::BY_ROWS }
    }

    /// `[R, in] → [R, out]`: `x·W` or `x·Wᵀ` as the weight is stored.
    pub fn mm(&self, xs_rxi: &Tensor) -> Tensor {
        xs_rxi.mm(&self.weight_t)
    }

    /// `[R, in] → [out, R]`: `W xᵀ`, outputs by rows. With BLASes that run it faster than
    /// `x Wᵀ` at some row counts, the plan takes it there ([`crate::product_plan`]). MKL runs
    /// it fast only with x stored by rows (15 GB/s against 6 for x stored `[in, R]`, the 1.6B
    /// model's MLP at 2 rows), so an input that is not is copied to rows first (a few KB).
    fn mm_t(&self, xs_rxi: &Tensor) -> Tensor {
        self.weight.mm(&transposed(&by_rows(xs_rxi)))
    }

    /// The weight oneDNN reads: packed where the plan packs it, else as stored (`[out, in]`).
    fn onednn_weight(&self) -> &Tensor {
        self.packed.as_ref().unwrap_or(&self.weight)
    }

    /// `[R, in] → [R, out]` in the form the plan takes for R rows: by columns a transposed
    /// view of the `[out, R]` product.
    pub fn product(&self, xs_rxi: &Tensor) -> Tensor {
        match self.form(xs_rxi.size()[0]) {
            Form::Rows => self.mm(xs_rxi),
            Form::Columns => transposed(&self.mm_t(xs_rxi)),
            Form::OneDnn => onednn::linear(xs_rxi, self.onednn_weight()).unwrap_or_else(fail),
        }
    }

    /// [`Linear::product`] stored by rows, for consumers that need `[R, out]` contiguous.
    pub fn rows(&self, xs_rxi: &Tensor) -> Tensor {
        by_rows(&self.product(xs_rxi))
    }

    /// `residual + x Wᵀ` for `[R, in]` inputs in the form the plan takes, as rows `[R, out]`.
    /// By rows (MKL) the sum is made in the residual's storage, one operator without a copy, so
    /// the caller hands over a residual it no longer needs; by columns it is made `[out, R]`,
    /// seen as rows through a transposed view; oneDNN adds it in its product's kernel.
    pub fn add_rows(&self, mut residual_rxo: Tensor, xs_rxi: &Tensor) -> Tensor {
        match self.form(xs_rxi.size()[0]) {
            Form::Rows => residual_rxo.addmm_(xs_rxi, &self.weight_t),
            Form::Columns => {
                transposed(&self.addmm_t(&transposed(&residual_rxo), &transposed(&by_rows(xs_rxi))))
            }
            Form::OneDnn => {
                onednn::linear_add(xs_rxi, self.onednn_weight(), &residual_rxo).unwrap_or_else(fail)
            }
        }
    }

    /// How a product of `rows` rows is made ([`Plan::form`]).
    pub fn form(&self, rows: i64) -> Form {
        self.plan.form(rows)
    }

    /// `residual + W x` for inputs `[in, R]` and a residual `[out, R]`, as `[out, R]`.
    fn addmm_t(&self, residual_oxr: &Tensor, xs_ixr: &Tensor) -> Tensor {
        residual_oxr.addmm(&self.weight, xs_ixr)
    }

    /// The `[out, in]` weight, for changes made before the plan is chosen.
    pub fn weight(&self) -> &Tensor {
        assert!(self.packed.is_none(), "a packed weight is read only by its products");
        &self.weight
    }

    /// Stores the weight as `plan` wants it (the `[out, in]` weight a strided view where it is
    /// `[in, out]` in memory, or oneDNN's blocked copy with the variable emptied) and
    /// multiplies by it from now on.
    pub fn set_plan(&mut self, plan: Plan) {
        let dense = match self.packed.take() {
            Some(packed) => packed.to_dense(None, false),
            None => self.weight.shallow_clone(),
        };
        let stored = match plan {
            Plan::InOut => dense.tr().contiguous().tr(),
            Plan::OutIn(_) => dense.contiguous(),
            Plan::Packed { rows } => {
                let packed = onednn::pack(&dense.contiguous(), rows).unwrap_or_else(fail);
                self.packed = Some(packed);
                emptied(&dense)
            }
        };
        self.weight.set_data(&stored);
        self.weight_t = self.weight.tr();
        self.plan = plan;
    }

    /// Sets the plan this machine runs the weight's shape fastest with
    /// ([`product_plan::plan`]). For after loading, once the weight is final.
    pub fn choose_plan(&mut self) {
        let (out_dim, in_dim) = self.weight().size2().expect("a linear weight is [out, in]");
        self.set_plan(product_plan::plan(
            in_dim,
            out_dim,
            self.weight.kind(),
            self.weight.device(),
        ));
    }
}

/// A oneDNN call that failed where its plan was timed working: as any libtorch operator that
/// fails, a panic with libtorch's message.
fn fail(err: onednn::OneDnnError) -> Tensor {
    panic!("{err}")
}

/// An `[0, in]` weight of `weight`'s dtype and device: what a variable holds once another
/// tensor carries its values.
fn emptied(weight: &Tensor) -> Tensor {
    weight.new_empty([0, weight.size()[1]], (weight.kind(), weight.device()))
}

/// `xs` stored by rows: itself where it is, else a contiguous copy.
fn by_rows(xs: &Tensor) -> Tensor {
    if xs.is_contiguous() {
        xs.shallow_clone()
    } else {
        let mut rows = Tensor::empty(xs.size(), (xs.kind(), xs.device()));
        rows.copy_(xs);
        rows
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear::<&Tensor>(self.weight(), None)
    }
}

/// The transpose of a 2-D tensor as one `as_strided` view, where `t()` dispatches three
/// operators (`t`, `transpose`, `as_strided`).
fn transposed(t: &Tensor) -> Tensor {
    let (size, stride) = (t.size(), t.stride());
    t.as_strided([size[1], size[0]], [stride[1], stride[0]], None)
}

/// One linear whose weight stacks the rows of linears that read the same input (`[out_i, in]`),
/// products by rows until its plan is chosen. The parts are emptied: the fused linear takes
/// their place, and the weights are not held twice.
pub fn fuse_linears(parts: &mut [&mut Linear]) -> Linear {
    let stacked = Tensor::cat(&parts.iter().map(|l| l.weight()).collect::<Vec<_>>(), 0);
    for linear in parts.iter_mut() {
        linear.weight.set_data(&emptied(&linear.weight));
        linear.weight_t = linear.weight.tr();
    }
    Linear::from_weight(stacked)
}

/// RMSNorm, `x · (ε + Σx²/D)^−½ · w`, in f32 whatever the dtype as the reference does. On the
/// CPU it is `√D · x / hypot(‖x‖, √(D·ε))`, the same value in 4 operators (5 with `w`)
/// instead of libtorch's composite's ~24, the `√D` going with `w`; on CUDA libtorch's fused
/// kernel. `w` is multiplied in here, or folded into the projections that read the output.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    scale: Scale,
    /// `√(D·ε)` as an f32 tensor on the device: a scalar operand would cost a conversion
    /// (four more operators) in every call.
    floor_1: Tensor,
    dim: i64,
    eps: f64,
}

/// Where an [`RmsNorm`]'s weight goes, decided after loading.
#[derive(Debug)]
enum Scale {
    Unprepared,
    /// Multiplied in by `forward`, in f32.
    Multiply(Tensor),
    /// In the weights of the projections that read the output.
    Folded,
}

impl RmsNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: vs.var("weight", &[dim], Init::Const(1.)),
            scale: Scale::Unprepared,
            floor_1: Tensor::full([1], (dim as f64 * eps).sqrt(), (Kind::Float, vs.device())),
            dim,
            eps,
        }
    }

    /// `w`, times `√D` where `forward` leaves it out (off CUDA), in f32.
    fn gain(&self) -> Tensor {
        let weight = self.weight.to_kind(Kind::Float);
        if self.weight.device().is_cuda() {
            weight
        } else {
            weight * (self.dim as f64).sqrt()
        }
    }

    /// After loading: the weight is multiplied in by `forward`.
    pub fn prepare(&mut self) {
        self.scale = Scale::Multiply(self.gain());
    }

    /// After loading: the weight multiplied into the input columns of every linear that reads
    /// this norm's output (`[out, D]` weights, in place), so that `forward` skips it, one
    /// operator fewer per call. `W·diag(w)` is rounded once, in the weights' dtype.
    pub fn fold_into(&mut self, linears: &mut [&mut Linear]) {
        let gain = self.gain();
        for linear in linears {
            let weight = linear.weight();
            let _ = weight.shallow_clone().g_mul_(&gain.to_kind(weight.kind()));
        }
        self.scale = Scale::Folded;
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let weight = match &self.scale {
            Scale::Multiply(weight) => Some(weight),
            Scale::Folded => None,
            Scale::Unprepared => panic!("an RmsNorm is prepared or folded after loading"),
        };
        if xs.device().is_cuda() {
            let weight = weight.map(|_| &self.weight);
            return xs.rms_norm(self.weight.size(), weight, self.eps);
        }
        let x = if xs.kind() == Kind::Float { xs.shallow_clone() } else { xs.to_kind(Kind::Float) };
        let norm = x.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
        let normed = x / norm.hypot(&self.floor_1);
        let normed = match weight {
            Some(weight) => normed * weight,
            None => normed,
        };
        if normed.kind() == xs.kind() {
            normed
        } else {
            normed.to_kind(xs.kind())
        }
    }
}

/// The rows of a `[heads·E, in]` projection with each head's halves interleaved
/// (`0, E/2, 1, E/2 + 1, …`): RoPE's rotate-half pairs `(i, i + E/2)` become adjacent, the layout
/// a complex view of the projected heads needs.
pub fn interleave_halves(weight: &Tensor, head_dim: i64) -> Tensor {
    let (rows, cols) = weight.size2().expect("a projection weight is [out, in]");
    weight.view([rows / head_dim, 2, head_dim / 2, cols]).transpose(1, 2).reshape([rows, cols])
}

/// A DenseGeneral kernel `[in…, out…]` (Nari/Flax layout) as an `nn.Linear` weight
/// `[prod(out), prod(in)]`: flatten row-major, then transpose.
pub fn dense_general_to_linear(kernel: &Tensor, in_axes: usize) -> Tensor {
    let dims = kernel.size();
    let fan_in: i64 = dims[..in_axes].iter().product();
    kernel.reshape([fan_in, -1]).tr().contiguous()
}

/// Weight normalisation folded once at load: `W = g · v / ‖v‖`, the norm taken over every axis
/// but 0, for each index of axis 0 (the stored layout's axis 0, whatever it means).
pub fn fold_weight_norm(g: &Tensor, v: &Tensor) -> Tensor {
    let v = v.to_kind(Kind::Float);
    let dims: Vec<i64> = (1..v.dim() as i64).collect();
    let norm = v.square().sum_dim_intlist(dims.as_slice(), true, Kind::Float).sqrt();
    g.to_kind(Kind::Float) * v / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn random_linear(vs: &nn::VarStore, name: &str, in_dim: i64, out_dim: i64) -> (Linear, Tensor) {
        let mut linear = Linear::new(&vs.root() / name, in_dim, out_dim);
        let weight = Tensor::randn([out_dim, in_dim], (Kind::Float, Device::Cpu)) * 0.05;
        linear.weight.copy_(&weight);
        (linear, weight)
    }

    fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
        assert_eq!(got.size(), want.size(), "{what}");
        let diff = (got - want).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{what} is off by {diff}");
    }

    #[test]
    fn a_linear_gives_the_same_rows_in_every_plan_from_inputs_in_either_layout() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        use Form::{Columns, OneDnn, Rows};
        let plans = [
            Plan::InOut,
            Plan::BY_ROWS,
            Plan::OutIn([Columns; 3]),
            // One form at 3 rows, another at 5.
            Plan::OutIn([Rows, Columns, Rows]),
            Plan::OutIn([Columns, OneDnn, Rows]),
            Plan::OutIn([OneDnn, Rows, Rows]),
            Plan::Packed { rows: 2 },
            Plan::Packed { rows: 32 },
        ];
        for (in_dim, out_dim) in [(64, 96), (512, 768)] {
            let (mut linear, weight) = random_linear(&vs, &format!("l{in_dim}"), in_dim, out_dim);
            for plan in plans {
                linear.set_plan(plan);
                for n in [3, 5] {
                    let rows = Tensor::randn([n, in_dim], (Kind::Float, Device::Cpu));
                    // The residual stream after a product by columns: a transposed view.
                    let columns_view =
                        transposed(&Tensor::randn([in_dim, n], (Kind::Float, Device::Cpu)));
                    for (layout, xs) in [("rows", rows), ("columns", columns_view)] {
                        let what = format!("{in_dim} × {out_dim}, {plan:?}, {n} {layout}");
                        let expected = xs.mm(&weight.tr());
                        let got = linear.rows(&xs);
                        assert!(got.is_contiguous(), "{what}: rows are contiguous");
                        assert_close(&got, &expected, &what);
                        let residual = Tensor::randn([n, out_dim], (Kind::Float, Device::Cpu));
                        let sum = &residual + &expected;
                        assert_close(&linear.add_rows(residual, &xs), &sum, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn fused_linears_multiply_as_their_parts_which_are_emptied() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(12);
        let vs = nn::VarStore::new(Device::Cpu);
        for (in_dim, outs) in [(32, [32, 16]), (512, [512, 128])] {
            let (mut a, wa) = random_linear(&vs, &format!("a{in_dim}"), in_dim, outs[0]);
            let (mut b, wb) = random_linear(&vs, &format!("b{in_dim}"), in_dim, outs[1]);
            let mut fused = fuse_linears(&mut [&mut a, &mut b]);
            let xs = Tensor::randn([2, in_dim], (Kind::Float, Device::Cpu));
            let expected = Tensor::cat(&[xs.mm(&wa.tr()), xs.mm(&wb.tr())], 1);
            assert_close(&fused.rows(&xs), &expected, &format!("fused {in_dim}"));
            fused.set_plan(Plan::Packed { rows: 2 });
            assert_close(&fused.rows(&xs), &expected, &format!("fused {in_dim}, packed"));
            for part in [&a, &b] {
                assert_eq!(part.weight().numel(), 0, "the parts hold no weight after fusing");
            }
        }
    }

    #[test]
    fn a_packed_weight_is_not_also_held_dense_and_comes_back_unchanged() {
        let _guard = tch::no_grad_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let (mut linear, weight) = random_linear(&vs, "p", 64, 96);
        linear.set_plan(Plan::Packed { rows: 8 });
        assert_eq!(vs.variables()["p.weight"].numel(), 0, "the variable is emptied");
        linear.set_plan(Plan::BY_ROWS);
        assert!(linear.weight().equal(&weight), "unpacked to the weight it was");
        assert_eq!(vs.variables()["p.weight"].size(), [96, 64]);
    }

    #[test]
    fn rms_norm_is_the_formula_with_its_weight_multiplied_or_folded() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(5);
        let (dim, eps, rows) = (48, 1e-5, 3);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut multiplied = RmsNorm::new(&vs.root() / "a", dim, eps);
        let mut folded = RmsNorm::new(&vs.root() / "b", dim, eps);
        let mut linear = Linear::new(&vs.root() / "c", dim, 5);
        let (w, lw) =
            (Tensor::rand([dim], (Kind::Float, Device::Cpu)) + 0.5, linear.weight.randn_like());
        for norm in [&mut multiplied, &mut folded] {
            norm.weight.copy_(&w);
        }
        linear.weight.copy_(&lw);
        multiplied.prepare();
        folded.fold_into(&mut [&mut linear]);
        // Small and large rows, where ε matters and where it does not.
        let xs = Tensor::randn([rows, dim], (Kind::Float, Device::Cpu))
            * Tensor::from_slice(&[1e-3f32, 1.0, 50.0]).view([rows, 1]);
        let expected = &xs * (xs.square().mean_dim(-1, true, Kind::Float) + eps).rsqrt() * &w;
        let close = |got: &Tensor, want: &Tensor, what: &str| {
            let diff = ((got - want).abs() / (want.abs() + 1e-6)).max().double_value(&[]);
            assert!(diff < 1e-5, "{what} is off by {diff} (relative)");
        };
        close(&multiplied.forward(&xs), &expected, "the norm with its weight multiplied");
        close(
            &linear.mm(&folded.forward(&xs)),
            &expected.mm(&lw.tr()),
            "the norm folded into a linear",
        );
    }
}
