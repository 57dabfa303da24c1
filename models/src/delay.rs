//! The delay pattern: channel `c` of the delayed grid lags the frame grid by `d_c` rows
//! (docs/dia-reference.md §6.1). Both directions are one `gather` on the device.

use tch::{Kind, Tensor};

/// `D[b, t, c] = U[b, t − d_c, c]`, or `bos` where `t < d_c`. Input and output `[B, T, C]`.
pub fn apply_delay(frames_bxtxc: &Tensor, delays: &[i64], bos: i64) -> Tensor {
    let (b, t, c) = frames_bxtxc.size3().expect("frames are [B, T, C]");
    let device = frames_bxtxc.device();
    let rows_tx1 = Tensor::arange(t, (Kind::Int64, device)).view([t, 1]);
    let delays_1xc = Tensor::from_slice(delays).to_device(device).view([1, c]);
    let src_txc = &rows_tx1 - &delays_1xc;
    let before_start = src_txc.lt(0);
    let index = src_txc.clamp_min(0).expand([b, t, c], false);
    frames_bxtxc.gather(1, &index, false).masked_fill(&before_start, bos)
}

/// `U[b, t, c] = D[b, min(t + d_c, T − 1), c]`: the frame grid back from a delayed window.
/// Its last `max(d)` rows are incomplete; callers cut them.
pub fn revert_delay(delayed_bxtxc: &Tensor, delays: &[i64]) -> Tensor {
    let (b, t, c) = delayed_bxtxc.size3().expect("delayed tokens are [B, T, C]");
    let device = delayed_bxtxc.device();
    let rows_tx1 = Tensor::arange(t, (Kind::Int64, device)).view([t, 1]);
    let delays_1xc = Tensor::from_slice(delays).to_device(device).view([1, c]);
    let index = (rows_tx1 + delays_1xc).clamp_max(t - 1).expand([b, t, c], false);
    delayed_bxtxc.gather(1, &index, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[[i64; 3]]) -> Tensor {
        Tensor::from_slice(rows.concat().as_slice()).view([1, rows.len() as i64, 3])
    }

    #[test]
    fn delay_shifts_each_channel_and_fills_bos() {
        let u = grid(&[[1, 2, 3], [4, 5, 6], [7, 8, 9]]);
        let d = apply_delay(&u, &[0, 1, 2], 99);
        assert_eq!(d, grid(&[[1, 99, 99], [4, 2, 99], [7, 5, 3]]));
    }

    #[test]
    fn revert_undoes_delay_except_the_tail() {
        let u = grid(&[[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]);
        let back = revert_delay(&apply_delay(&u, &[0, 1, 2], 99), &[0, 1, 2]);
        assert_eq!(back.narrow(1, 0, 2), u.narrow(1, 0, 2));
    }
}
