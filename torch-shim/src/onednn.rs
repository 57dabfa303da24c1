//! oneDNN's matmul (`mkldnn::_linear_pointwise`), which PyTorch registers outside ATen's
//! generated API, so tch has no binding for it. On x86 CPUs its kernels multiply a few rows by
//! a large weight at up to twice MKL's speed, with the weight as loaded or packed in a blocked
//! layout ([`pack`]).

use std::fmt;

use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn torch_shim_onednn_linear(
        x: *const C_tensor,
        weight: *const C_tensor,
        other: *const C_tensor,
    ) -> *mut C_tensor;
    fn torch_shim_onednn_pack(weight: *const C_tensor, rows: i64) -> *mut C_tensor;
    fn torch_shim_onednn_error_len() -> usize;
    fn torch_shim_onednn_error_copy(out: *mut u8, len: usize);
}

/// Why a oneDNN call failed: libtorch's message (no oneDNN in this build, a dtype or device it
/// does not take, mismatched shapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneDnnError(pub String);

impl fmt::Display for OneDnnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oneDNN: {}", self.0)
    }
}

impl std::error::Error for OneDnnError {}

/// `x·Wᵀ` for rows `x` `[R, in]` and a weight `[out, in]`, dense or [`pack`]ed: `[R, out]`.
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor, OneDnnError> {
    // SAFETY: both pointers are live tensors borrowed for the call; null means no addend.
    tensor(unsafe { torch_shim_onednn_linear(x.as_ptr(), weight.as_ptr(), std::ptr::null()) })
}

/// `other + x·Wᵀ`, the sum made by the product's kernel: `[R, out]`, a new tensor.
pub fn linear_add(x: &Tensor, weight: &Tensor, other: &Tensor) -> Result<Tensor, OneDnnError> {
    // SAFETY: the three pointers are live tensors borrowed for the call.
    tensor(unsafe { torch_shim_onednn_linear(x.as_ptr(), weight.as_ptr(), other.as_ptr()) })
}

/// A weight `[out, in]` in the blocked layout oneDNN picks for products of `rows` rows: an
/// opaque (`Mkldnn` layout) tensor that only [`linear`] and [`linear_add`] read, at any row
/// count.
pub fn pack(weight: &Tensor, rows: i64) -> Result<Tensor, OneDnnError> {
    // SAFETY: a live tensor borrowed for the call.
    tensor(unsafe { torch_shim_onednn_pack(weight.as_ptr(), rows) })
}

/// The tensor a shim call returned, owned from here on, or the reason it failed.
fn tensor(ptr: *mut C_tensor) -> Result<Tensor, OneDnnError> {
    if ptr.is_null() {
        // SAFETY: the message is this thread's, written by the call that just failed; the copy
        // writes at most `len` bytes into a buffer of `len`.
        let message = unsafe {
            let len = torch_shim_onednn_error_len();
            let mut bytes = vec![0u8; len];
            torch_shim_onednn_error_copy(bytes.as_mut_ptr(), len);
            bytes
        };
        return Err(OneDnnError(String::from_utf8_lossy(&message).into_owned()));
    }
    // SAFETY: a `new at::Tensor` that nothing else owns; tch frees it on drop.
    Ok(unsafe { Tensor::from_ptr(ptr) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn close(got: &Tensor, want: &Tensor) -> f64 {
        assert_eq!(got.size(), want.size());
        (got - want).abs().max().double_value(&[])
    }

    #[test]
    fn products_dense_and_packed_match_libtorchs() {
        tch::manual_seed(1);
        let weight = Tensor::randn([48, 32], (Kind::Float, Device::Cpu));
        let packed = pack(&weight, 8).expect("packs");
        assert!(packed.is_mkldnn());
        for rows in [2, 8, 33] {
            let x = Tensor::randn([rows, 32], (Kind::Float, Device::Cpu));
            // Also rows seen through a transposed view, as a product by columns leaves them.
            let columns = Tensor::randn([32, rows], (Kind::Float, Device::Cpu)).tr();
            let other = Tensor::randn([rows, 48], (Kind::Float, Device::Cpu));
            for x in [&x, &columns] {
                let want = x.mm(&weight.tr());
                for w in [&weight, &packed] {
                    assert!(close(&linear(x, w).unwrap(), &want) < 1e-4, "{rows} rows");
                    let sum = linear_add(x, w, &other).unwrap();
                    assert!(close(&sum, &(&other + &want)) < 1e-4, "{rows} rows, added");
                }
            }
        }
    }

    #[test]
    fn a_failed_call_says_why() {
        let weight = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu));
        let x = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
        let err = linear(&x, &weight).expect_err("mismatched widths fail");
        assert!(!err.0.is_empty(), "the error carries libtorch's message");
        // The thread goes on working after a failure.
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        assert_eq!(linear(&x, &weight).unwrap().size(), [2, 4]);
    }
}
