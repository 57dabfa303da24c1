//! The memory budget: how many requests the caches hold, and how long each may be.
//!
//! A request's slot costs its self-attention keys and values up to its position bound and its
//! cross-attention keys and values over the text window (`Generator::slot_bytes`). Slots are
//! allocated once at start, so admitting only into a free slot keeps every admitted request
//! within the budget; what the node advertises (capacity, frames per job) is what fits.

use anyhow::{bail, Context};

use crate::gpu::Gpu;

/// `--memory-budget`: a size (`48GiB`), or a share of the GPU's free memory once the models are
/// loaded (`80%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryBudget {
    Bytes(u64),
    FreeShare(f64),
}

impl MemoryBudget {
    /// The default: 80% of the GPU's free memory on CUDA where NVML reads it, else 8 GiB.
    pub fn default_for(cuda_with_readings: bool) -> Self {
        if cuda_with_readings {
            Self::FreeShare(0.8)
        } else {
            Self::Bytes(8 << 30)
        }
    }

    /// In bytes: a share is taken of what `gpu` has free now.
    pub fn bytes(self, gpu: Option<&Gpu>) -> anyhow::Result<u64> {
        match (self, gpu) {
            (Self::Bytes(n), _) => Ok(n),
            (Self::FreeShare(share), Some(gpu)) => {
                let free = gpu.free_memory().context("reading the GPU's free memory")?;
                Ok((free as f64 * share) as u64)
            }
            (Self::FreeShare(_), None) => {
                bail!("a share of free memory as --memory-budget needs the GPU's readings (NVML); give a size")
            }
        }
    }
}

impl std::str::FromStr for MemoryBudget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().strip_suffix('%') {
            Some(percent) => match percent.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Self::FreeShare(p / 100.0)),
                _ => Err(format!("`{s}`: a share of free memory is over 0% and at most 100%")),
            },
            None => s.parse::<bytesize::ByteSize>().map(|b| Self::Bytes(b.as_u64())),
        }
    }
}

/// What fits the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Requests decoded together.
    pub slots: usize,
    /// Positions per slot.
    pub max_positions: i64,
    /// Bytes one slot takes.
    pub slot_bytes: i64,
}

impl MemoryPlan {
    /// Bytes the caches take.
    pub fn reserved_bytes(&self) -> i64 {
        self.slots as i64 * self.slot_bytes
    }
}

/// Up to `max_batch` slots of `max_positions` positions within `budget` bytes; where not even one
/// fits, one slot of as many positions as fit, if that is at least `min_positions`.
/// `slot_bytes(positions)` is the cost of one slot and grows with `positions`.
pub fn plan(
    budget: u64,
    max_batch: usize,
    max_positions: i64,
    min_positions: i64,
    slot_bytes: impl Fn(i64) -> i64,
) -> anyhow::Result<MemoryPlan> {
    if max_positions < min_positions {
        bail!(
            "--max-positions {max_positions} holds no request: a second of audio takes \
             {min_positions} positions"
        );
    }
    let budget = i64::try_from(budget).unwrap_or(i64::MAX);
    let full = slot_bytes(max_positions);
    let slots = usize::try_from(budget / full.max(1)).unwrap_or(usize::MAX).min(max_batch);
    if slots > 0 {
        return Ok(MemoryPlan { slots, max_positions, slot_bytes: full });
    }
    // The cost is affine in the positions: solve for the most that fit.
    let per_position = slot_bytes(max_positions + 1) - full;
    let fixed = full - per_position * max_positions;
    let positions = ((budget - fixed) / per_position.max(1)).min(max_positions);
    if positions < min_positions {
        bail!(
            "the memory budget of {} fits no request: one slot of {min_positions} positions (a \
             second of audio) takes {} (raise --memory-budget or lower --max-positions)",
            human(budget),
            human(slot_bytes(min_positions)),
        );
    }
    Ok(MemoryPlan { slots: 1, max_positions: positions, slot_bytes: slot_bytes(positions) })
}

/// Bytes in binary units, for messages.
pub fn human(bytes: i64) -> String {
    bytesize::ByteSize::b(bytes.max(0) as u64).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1000 bytes fixed, 10 per position.
    fn cost(positions: i64) -> i64 {
        1000 + 10 * positions
    }

    #[test]
    fn a_budget_is_a_size_or_a_share_of_free_memory() {
        assert_eq!("6GiB".parse(), Ok(MemoryBudget::Bytes(6 << 30)));
        assert_eq!("512 MiB".parse(), Ok(MemoryBudget::Bytes(512 << 20)));
        assert_eq!("80%".parse(), Ok(MemoryBudget::FreeShare(0.8)));
        assert_eq!(" 100 %".parse(), Ok(MemoryBudget::FreeShare(1.0)));
        for bad in ["0%", "120%", "x%", "lots"] {
            assert!(bad.parse::<MemoryBudget>().is_err(), "{bad}");
        }
        assert_eq!(MemoryBudget::default_for(false), MemoryBudget::Bytes(8 << 30));
        assert_eq!(MemoryBudget::Bytes(5).bytes(None).unwrap(), 5);
        let err = MemoryBudget::FreeShare(0.5).bytes(None).unwrap_err().to_string();
        assert!(err.contains("needs the GPU's readings"), "{err}");
    }

    #[test]
    fn the_slots_are_what_fits_and_at_most_the_batch() {
        // A slot of 100 positions costs 2000: 5 fit in 10 000, 3 in 7 999.
        assert_eq!(plan(10_000, 8, 100, 10, cost).unwrap().slots, 5);
        assert_eq!(plan(7_999, 8, 100, 10, cost).unwrap().slots, 3);
        let roomy = plan(1 << 40, 8, 100, 10, cost).unwrap();
        assert_eq!(roomy, MemoryPlan { slots: 8, max_positions: 100, slot_bytes: 2000 });
        assert_eq!(roomy.reserved_bytes(), 16_000);
    }

    #[test]
    fn a_budget_below_one_full_slot_shortens_the_one_slot() {
        // 1999 bytes: 99 positions (1990 bytes) fit, 100 do not.
        let plan = plan(1_999, 8, 100, 10, cost).unwrap();
        assert_eq!(plan, MemoryPlan { slots: 1, max_positions: 99, slot_bytes: 1990 });
        assert!(plan.slot_bytes <= 1_999);
    }

    #[test]
    fn a_budget_that_fits_no_request_is_refused_saying_why() {
        let err = plan(1_099, 8, 100, 10, cost).unwrap_err().to_string();
        assert!(err.contains("fits no request") && err.contains("1.1 KiB"), "{err}");
        assert!(plan(1_100, 8, 100, 10, cost).is_ok());
    }

    #[test]
    fn a_position_bound_below_a_second_of_audio_is_refused_whatever_the_budget() {
        let err = plan(1 << 40, 8, 9, 10, cost).unwrap_err().to_string();
        assert_eq!(err, "--max-positions 9 holds no request: a second of audio takes 10 positions");
        assert!(plan(1 << 40, 8, 10, 10, cost).is_ok());
    }
}
