//! How an API handler waits for the request it queued: cancelled if its client goes away, and
//! answered with the request's own error when it failed.

use crate::db::requests::{Outcome, RequestStatus};
use crate::error::ApiError;
use crate::queue::{Queue, Waiter};
use crate::state::AppState;
use proto::{ErrorKind, RequestId, WireError};
use std::sync::Arc;

/// Waits until request `id` ends: its outcome when it succeeded, its error otherwise.
pub(crate) async fn until_done(
    state: &AppState,
    waiter: &Waiter<'_>,
    id: RequestId,
) -> Result<Outcome, ApiError> {
    let mut guard = CancelOnDrop(Some((state.queue.clone(), id)));
    let outcome = state.queue.wait(waiter).await?;
    guard.0 = None;
    if outcome.status == RequestStatus::Succeeded {
        return Ok(outcome);
    }
    let kind = outcome
        .error_type
        .as_deref()
        .and_then(ErrorKind::parse)
        .unwrap_or(ErrorKind::UpstreamError);
    Err(ApiError::Client(WireError::new(kind, outcome.error_message.unwrap_or_default())))
}

/// The 429 for a request the full queue refused, with a wait that grows with the queue.
pub(crate) async fn queue_full(state: &AppState) -> ApiError {
    match state.db.count_queued().await {
        Ok(queued) => ApiError::QueueFull { queued, retry_after_secs: 1 + queued as u64 / 64 },
        Err(e) => e.into(),
    }
}

/// Cancels the request if the handler is dropped before it ends: hyper drops the handler's
/// future when the client disconnects.
struct CancelOnDrop(Option<(Arc<Queue>, RequestId)>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((queue, id)) = self.0.take() {
            tokio::spawn(async move { queue.cancel(id).await });
        }
    }
}
