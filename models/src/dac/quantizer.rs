//! Residual vector quantiser: nearest codebook entry by cosine similarity on the encode side,
//! raw codebook rows on the decode side (docs/dia-reference.md §11.4–11.5).

use tch::nn::{self, Conv1D};
use tch::{Kind, Tensor};

use super::config::DacConfig;

#[derive(Debug)]
struct VectorQuantizer {
    in_proj: Conv1D,
    out_proj: Conv1D,
    codebook_kxd: Tensor,
}

impl VectorQuantizer {
    fn new(vs: nn::Path, cfg: &DacConfig) -> Self {
        let (latent, dim) = (cfg.latent_dim, cfg.codebook_dim);
        Self {
            in_proj: nn::conv1d(&vs / "in_proj", latent, dim, 1, Default::default()),
            out_proj: nn::conv1d(&vs / "out_proj", dim, latent, 1, Default::default()),
            codebook_kxd: (&vs / "codebook").var(
                "weight",
                &[cfg.codebook_size, dim],
                nn::Init::Const(0.),
            ),
        }
    }

    /// Codes `[B, N]` of the projected latent `[B, d, N]`: the reference's nearest neighbour
    /// between L2-normalised vectors, written as its argmax of the negated squared distance.
    fn nearest(&self, projected_bxdxn: &Tensor) -> Tensor {
        let normalise =
            |x: &Tensor| x / x.norm_scalaropt_dim(2, [-1].as_slice(), true).clamp_min(1e-12);
        let e_bxnxd = normalise(&projected_bxdxn.transpose(1, 2));
        let c_kxd = normalise(&self.codebook_kxd);
        let dist_bxnxk = e_bxnxd.square().sum_dim_intlist(-1, true, Kind::Float)
            - e_bxnxd.matmul(&c_kxd.tr()) * 2.0
            + c_kxd.square().sum_dim_intlist(-1, true, Kind::Float).tr();
        dist_bxnxk.neg().argmax(-1, false)
    }

    /// Raw codebook rows `[B, d, N]` for codes `[B, N]`.
    fn codebook_rows(&self, codes_bxn: &Tensor) -> Tensor {
        Tensor::embedding(&self.codebook_kxd, codes_bxn, -1, false, false).transpose(1, 2)
    }
}

/// The quantiser stack.
#[derive(Debug)]
pub struct ResidualVectorQuantizer {
    quantizers: Vec<VectorQuantizer>,
}

/// Result of quantising a latent.
#[derive(Debug)]
pub struct Quantized {
    /// `[B, n_codebooks, N]`
    pub codes: Tensor,
    /// The `in_proj` outputs of every level, concatenated: `[B, n_codebooks·d, N]`.
    pub projected: Tensor,
    /// The quantised latent as the encode path sums it.
    pub z_q: Tensor,
}

impl ResidualVectorQuantizer {
    pub fn new(vs: nn::Path, cfg: &DacConfig) -> Self {
        let quantizers = (0..cfg.n_codebooks)
            .map(|q| VectorQuantizer::new(&vs / "quantizers" / q, cfg))
            .collect();
        Self { quantizers }
    }

    /// Quantises `z_e [B, latent, N]` level by level, subtracting each level's reconstruction.
    pub fn encode(&self, z_e: &Tensor) -> Quantized {
        let mut residual = z_e.shallow_clone();
        let mut z_q: Option<Tensor> = None;
        let mut codes = Vec::with_capacity(self.quantizers.len());
        let mut projected = Vec::with_capacity(self.quantizers.len());
        for q in &self.quantizers {
            let p = residual.apply(&q.in_proj);
            let code = q.nearest(&p);
            // The reference's straight-through form, `p + (rows − p)`, rounds like it does.
            let z_q_i = (&p + (q.codebook_rows(&code) - &p)).apply(&q.out_proj);
            residual -= &z_q_i;
            z_q = Some(z_q.map_or_else(|| z_q_i.shallow_clone(), |acc: Tensor| acc + &z_q_i));
            codes.push(code);
            projected.push(p);
        }
        Quantized {
            codes: Tensor::stack(&codes, 1),
            projected: Tensor::cat(&projected, 1),
            z_q: z_q.expect("at least one codebook"),
        }
    }

    /// The latent the decoder reads, `Σ_q out_proj_q(codebook_q[codes_q])`, for `[B, Q, N]`.
    pub fn latent_from_codes(&self, codes_bxqxn: &Tensor) -> Tensor {
        self.quantizers
            .iter()
            .enumerate()
            .map(|(i, q)| q.codebook_rows(&codes_bxqxn.select(1, i as i64)).apply(&q.out_proj))
            .reduce(|a, b| a + b)
            .expect("at least one codebook")
    }

    /// Raw codebook rows of every level, concatenated: `[B, Q·d, N]`.
    pub fn codebook_rows(&self, codes_bxqxn: &Tensor) -> Tensor {
        let rows: Vec<Tensor> = self
            .quantizers
            .iter()
            .enumerate()
            .map(|(i, q)| q.codebook_rows(&codes_bxqxn.select(1, i as i64)))
            .collect();
        Tensor::cat(&rows, 1)
    }
}
