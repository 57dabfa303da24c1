//! Health rules on what the node sees of itself: decode steps that keep failing (a sticky CUDA
//! error, memory that never comes back) take the node out of the pool for a while, so that the
//! control plane stops spending requests' attempts on it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed steps in a row that make the node unhealthy.
const FAILURES_IN_A_ROW: u32 = 3;
/// How long after its last failed step the node stays out; then new work tries it again, and
/// one more failure takes it out again at once.
const COOL_DOWN: Duration = Duration::from_secs(60);

/// The engine's decode steps, as the health rule reads them.
#[derive(Debug, Default)]
pub struct StepFailures {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    in_a_row: u32,
    last: Option<(Instant, String)>,
}

impl StepFailures {
    pub fn failed(&self, message: &str) {
        let mut state = self.state.lock().expect("step failures lock");
        state.in_a_row += 1;
        state.last = Some((Instant::now(), message.to_owned()));
    }

    pub fn succeeded(&self) {
        self.state.lock().expect("step failures lock").in_a_row = 0;
    }

    /// Why the node takes no work at `now`, if it takes none.
    pub fn unhealthy(&self, now: Instant) -> Option<String> {
        let state = self.state.lock().expect("step failures lock");
        let (at, message) = state.last.as_ref()?;
        (state.in_a_row >= FAILURES_IN_A_ROW && now.saturating_duration_since(*at) < COOL_DOWN)
            .then(|| {
                format!(
                    "{} decode steps failed in a row (the last: {message}); no work for {} s",
                    state.in_a_row,
                    COOL_DOWN.as_secs()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_failing_in_a_row_take_the_node_out_until_the_cool_down_or_a_success() {
        let steps = StepFailures::default();
        let now = Instant::now();
        assert_eq!(steps.unhealthy(now), None);
        steps.failed("out of memory");
        steps.failed("out of memory");
        assert_eq!(steps.unhealthy(now), None, "two failures are not yet a pattern");
        steps.failed("CUDA error: an illegal memory access");
        let why = steps.unhealthy(Instant::now()).expect("unhealthy after three");
        assert_eq!(
            why,
            "3 decode steps failed in a row (the last: CUDA error: an illegal memory access); \
             no work for 60 s"
        );
        assert_eq!(steps.unhealthy(Instant::now() + COOL_DOWN), None, "back after the cool-down");
        steps.failed("again");
        assert!(steps.unhealthy(Instant::now()).is_some(), "one more failure: out at once");
        steps.succeeded();
        assert_eq!(steps.unhealthy(Instant::now()), None, "a step that works clears it");
    }
}
