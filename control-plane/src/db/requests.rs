//! Requests: the queue while they wait, the history for ever after, and their attempts.
//!
//! A request is `queued` → `running` (claimed by the replica holding a suitable node) → `succeeded`
//! or `failed`; a retryable failure puts it back to `queued`. Every transition out of `running`
//! names the attempt it ends, so a late message from an abandoned attempt changes nothing.

use super::{now_ms, on_pool, text_enum, Db};
use proto::{ModelInfo, WireError};

text_enum! {
    /// Where a request stands.
    pub enum RequestStatus {
        /// Waiting for a node (also after a retryable failure).
        Queued = "queued",
        /// An attempt runs on a node.
        Running = "running",
        /// Done; its result is stored.
        Succeeded = "succeeded",
        /// Failed for good; the error is stored.
        Failed = "failed",
    }
}

impl RequestStatus {
    /// Queued or running: not ended yet.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

text_enum! {
    /// How one attempt of a request on a node went.
    pub enum AttemptOutcome {
        /// Still running.
        Running = "running",
        /// Its result was recorded.
        Succeeded = "succeeded",
        /// The node reported a failure, or sent something its job cannot have produced.
        Failed = "failed",
        /// The node or its replica went away.
        NodeLost = "node_lost",
        /// The node did not finish within the job timeout.
        TimedOut = "timed_out",
        /// The client or the owner cancelled the request.
        Cancelled = "cancelled",
    }
}

/// A request as accepted.
pub struct NewRequest<'a> {
    /// Request id.
    pub id: &'a str,
    /// Owner.
    pub account_id: &'a str,
    /// Feature the endpoint needs.
    pub feature: &'a str,
    /// Model to run.
    pub model: &'a str,
    /// What the client sent to be worked on, for the history: the script; for a transcription,
    /// what the clip is.
    pub input: &'a str,
    /// JSON of the validated parameters, for the history.
    pub params: &'a str,
    /// The seed used.
    pub seed: i64,
    /// private, unlisted or public.
    pub visibility: &'a str,
    /// Sharing collection.
    pub collection: Option<&'a str>,
    /// JSON of the [`proto::Task`] sent to nodes.
    pub task: &'a str,
    /// The text window it needs of a node, in the model's text tokens (0: reads no text).
    pub text_tokens: i64,
    /// The decoder frames it takes on a node: its voice prompt's and the new ones (0: none).
    pub frames: i64,
    /// The frames it may generate, `max_new_tokens` (0: none).
    pub new_frames: i64,
    /// JSON of the cloned samples' ids ([`crate::validation::Speakers`]), when cloning.
    pub voice_refs: Option<&'a str>,
    /// The audio that follows the task's `submit`: the clip of a transcription.
    pub prompt_audio: Option<&'a [u8]>,
}

/// What a succeeded attempt brought back.
pub enum JobResult<'a> {
    /// A generation's WAV and its length.
    Audio {
        /// The WAV file.
        wav: &'a [u8],
        /// Its length.
        seconds: f64,
    },
    /// A transcription's text.
    Transcript {
        /// What was said.
        text: &'a str,
        /// The language it was transcribed in.
        language: &'a str,
        /// Length of the clip transcribed.
        clip_seconds: f64,
    },
}

/// A job a replica claimed for one of its nodes.
#[derive(sqlx::FromRow)]
pub struct Claimed {
    /// Request id.
    pub id: String,
    /// The attempt this claim starts.
    pub attempts: i64,
    /// Model.
    pub model: String,
    /// JSON of the [`proto::Task`].
    pub task: String,
    /// The audio that follows the submit (a transcription's clip).
    pub prompt_audio: Option<Vec<u8>>,
    /// Seconds it waited before its first attempt.
    pub queue_seconds: f64,
}

/// Where a request stands, as its waiting handler reads it.
#[derive(sqlx::FromRow)]
pub struct Outcome {
    /// Where it stands.
    #[sqlx(try_from = "String")]
    pub status: RequestStatus,
    /// Error type when failed.
    pub error_type: Option<String>,
    /// Error message when failed.
    pub error_message: Option<String>,
    /// WAV when a generation succeeded.
    pub audio: Option<Vec<u8>>,
    /// Text when a transcription succeeded.
    pub transcript: Option<String>,
    /// The language of the transcript.
    pub language: Option<String>,
    /// Node of the last attempt.
    pub node_id: Option<String>,
    /// Seconds waited for a node.
    pub queue_seconds: Option<f64>,
    /// Seconds the node generated.
    pub inference_seconds: Option<f64>,
    /// Length of the audio generated or transcribed.
    pub audio_seconds: Option<f64>,
}

/// A request in the history.
#[derive(Debug, sqlx::FromRow)]
pub struct HistoryRow {
    /// Order of acceptance; the pagination cursor.
    pub seq: i64,
    /// Request id.
    pub id: String,
    /// Where it stands.
    #[sqlx(try_from = "String")]
    pub status: RequestStatus,
    /// Error type when failed.
    pub error_type: Option<String>,
    /// Error message when failed.
    pub error_message: Option<String>,
    /// The feature it needs (`voice-cloning`, `transcription`).
    pub feature: String,
    /// Model.
    pub model: String,
    /// The script; for a transcription, what the clip is.
    pub input: String,
    /// JSON of the validated parameters.
    pub params: String,
    /// Seed used.
    pub seed: i64,
    /// Visibility.
    pub visibility: String,
    /// Collection.
    pub collection: Option<String>,
    /// Attempts so far.
    pub attempts: i64,
    /// Node of the last attempt.
    pub node_id: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms of the first attempt.
    pub started_at: Option<i64>,
    /// Epoch ms.
    pub finished_at: Option<i64>,
    /// Seconds waited.
    pub queue_seconds: Option<f64>,
    /// Seconds generating.
    pub inference_seconds: Option<f64>,
    /// Audio length.
    pub audio_seconds: Option<f64>,
    /// A transcription's text.
    pub transcript: Option<String>,
    /// A transcription's language.
    pub language: Option<String>,
    /// 1-based place among the queued requests for the same model, while queued.
    pub queue_position: Option<i64>,
    /// Audio generated so far by the running attempt, as its node reports it.
    pub generated_seconds: Option<f64>,
}

/// One try of a request on a node, as stored and as the history shows it.
#[derive(Debug, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptRow {
    /// 1-based.
    pub attempt: i64,
    /// Node it ran on.
    pub node_id: String,
    /// Epoch ms.
    pub started_at: i64,
    /// Epoch ms.
    pub finished_at: Option<i64>,
    /// How it went.
    #[sqlx(try_from = "String")]
    pub outcome: AttemptOutcome,
    /// Error type.
    pub error_type: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
}

/// Which of an account's requests a history page lists; `None` fields do not filter.
#[derive(Default)]
pub struct HistoryFilter<'a> {
    /// Only requests in this status.
    pub status: Option<RequestStatus>,
    /// Sharing collection.
    pub collection: Option<&'a str>,
    /// private, unlisted or public.
    pub visibility: Option<&'a str>,
}

/// How an attempt ended without audio.
pub struct AttemptFailure<'a> {
    /// How the attempt ended.
    pub outcome: AttemptOutcome,
    /// What went wrong in this attempt.
    pub error: &'a WireError,
    /// Back to the queue (`None`) or the request's final error.
    pub final_error: Option<&'a WireError>,
}

const HISTORY_COLUMNS: &str =
    "seq, id, status, error_type, error_message, feature, model, input, params, seed,
    visibility, collection, attempts, node_id, created_at, started_at, finished_at, queue_seconds,
    inference_seconds, audio_seconds, transcript, language, generated_seconds,
    CASE WHEN status = 'queued' THEN (SELECT COUNT(*) FROM requests q
        WHERE q.status = 'queued' AND q.model = r.model AND q.seq <= r.seq) END AS queue_position";

impl Db {
    /// Stores an accepted request as `queued`.
    /// Queues the request unless `max_queued` requests already wait (pool-wide); false then.
    /// The bound holds under concurrency: SQLite has one writer, and on PostgreSQL the
    /// insertions take a transaction-scoped advisory lock in turn.
    pub async fn insert_request(
        &self,
        r: &NewRequest<'_>,
        max_queued: i64,
    ) -> Result<bool, sqlx::Error> {
        // Any constant the replicas share.
        const QUEUE_LOCK: i64 = 7_150_700;
        let sql =
            "INSERT INTO requests (id, account_id, feature, model, status, input, params, seed,
                       visibility, collection, task, prompt_audio, created_at, text_tokens, frames,
                       voice_refs, new_frames)
                   SELECT $1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11, $12, $14, $15, $16, $17
                   WHERE (SELECT COUNT(*) FROM requests WHERE status = 'queued') < $13";
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            if matches!(self, Db::Postgres(_)) {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(QUEUE_LOCK).execute(&mut *tx).await?;
            }
            let inserted = sqlx::query(sql)
                .bind(r.id).bind(r.account_id).bind(r.feature).bind(r.model).bind(r.input).bind(r.params)
                .bind(r.seed).bind(r.visibility).bind(r.collection).bind(r.task).bind(r.prompt_audio)
                .bind(now_ms()).bind(max_queued).bind(r.text_tokens).bind(r.frames)
                .bind(r.voice_refs).bind(r.new_frames)
                .execute(&mut *tx).await?.rows_affected() == 1;
            tx.commit().await?;
            Ok(inserted)
        })
    }

    /// Requests waiting for a node, pool-wide.
    pub async fn count_queued(&self) -> Result<i64, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM requests WHERE status = 'queued'";
        on_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await)
    }

    /// Claims the oldest queued request for `model` and `feature` that fits the node's text window,
    /// decoder frames and new frames (the rule of [`crate::routing::Needs::fits`]), for a node of
    /// this replica, and opens its attempt. Requests accepted before `created_after` (epoch ms)
    /// are past their deadline: they are left to fail, not run again. On PostgreSQL `SKIP LOCKED`
    /// lets replicas claim side by side; SQLite serialises writers, so the plain sub-select is
    /// already atomic.
    pub async fn claim(
        &self,
        model: &ModelInfo,
        feature: &str,
        node: &str,
        replica: &str,
        created_after: i64,
    ) -> Result<Option<Claimed>, sqlx::Error> {
        let lock = if matches!(self, Db::Postgres(_)) { "FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE requests SET status = 'running', attempts = attempts + 1, node_id = $1, replica_id = $2,
                 generated_seconds = NULL,
                 started_at = COALESCE(started_at, $3),
                 queue_seconds = COALESCE(queue_seconds, CAST($3 - created_at AS DOUBLE PRECISION) / 1000)
             WHERE seq = (SELECT seq FROM requests WHERE status = 'queued' AND model = $4 AND feature = $5
                              AND text_tokens <= $6 AND frames <= $7 AND new_frames <= $8
                              AND created_at >= $9
                          ORDER BY seq LIMIT 1 {lock})
             RETURNING id, attempts, model, task, prompt_audio, queue_seconds"
        );
        let attempt_sql =
            "INSERT INTO attempts (request_id, attempt, node_id, replica_id, started_at, outcome)
                           VALUES ($1, $2, $3, $4, $5, 'running')";
        let now = now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let claimed: Option<Claimed> = sqlx::query_as(&sql)
                .bind(node).bind(replica).bind(now).bind(&model.id).bind(feature)
                .bind(i64::from(model.max_input_chars)).bind(i64::from(model.max_frames))
                .bind(i64::from(model.max_new_tokens)).bind(created_after)
                .fetch_optional(&mut *tx).await?;
            if let Some(c) = &claimed {
                sqlx::query(attempt_sql).bind(&c.id).bind(c.attempts).bind(node).bind(replica).bind(now)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(claimed)
        })
    }

    /// Records the result of a running attempt; false when the attempt is no longer current.
    pub async fn succeed(
        &self,
        id: &str,
        attempt: i64,
        result: &JobResult<'_>,
        inference_seconds: f64,
    ) -> Result<bool, sqlx::Error> {
        let sql = "UPDATE requests SET status = 'succeeded', audio = $3, audio_seconds = $4,
                       transcript = $5, language = $6, inference_seconds = $7, finished_at = $8
                   WHERE id = $1 AND status = 'running' AND attempts = $2";
        let (wav, seconds, text, language) = match *result {
            JobResult::Audio { wav, seconds } => (Some(wav), seconds, None, None),
            JobResult::Transcript { text, language, clip_seconds } => {
                (None, clip_seconds, Some(text), Some(language))
            }
        };
        let attempt_sql = "UPDATE attempts SET outcome = 'succeeded', finished_at = $3
                           WHERE request_id = $1 AND attempt = $2";
        let now = now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(sql).bind(id).bind(attempt).bind(wav).bind(seconds).bind(text)
                .bind(language).bind(inference_seconds).bind(now)
                .execute(&mut *tx).await?.rows_affected() == 1;
            if done {
                sqlx::query(attempt_sql).bind(id).bind(attempt).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// Ends a running attempt without audio: back to the queue or failed for good. False when
    /// the attempt is no longer current.
    pub async fn fail_attempt(
        &self,
        id: &str,
        attempt: i64,
        f: &AttemptFailure<'_>,
    ) -> Result<bool, sqlx::Error> {
        let sql =
            "UPDATE requests SET status = $3, error_type = $4, error_message = $5, finished_at = $6
                   WHERE id = $1 AND status = 'running' AND attempts = $2";
        let attempt_sql = "UPDATE attempts SET outcome = $3, error_type = $4, error_message = $5, finished_at = $6
                           WHERE request_id = $1 AND attempt = $2";
        let now = now_ms();
        let (status, error_type, message, finished) = match f.final_error {
            Some(e) => {
                (RequestStatus::Failed, Some(e.kind.as_str()), Some(e.message.as_str()), Some(now))
            }
            None => (RequestStatus::Queued, None, None, None),
        };
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(sql).bind(id).bind(attempt).bind(status.as_str()).bind(error_type).bind(message)
                .bind(finished).execute(&mut *tx).await?.rows_affected() == 1;
            if done {
                sqlx::query(attempt_sql).bind(id).bind(attempt).bind(f.outcome.as_str()).bind(f.error.kind.as_str())
                    .bind(&f.error.message).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// Fails a request that is still queued or running (cancelled, or waited too long); false when
    /// it had already ended.
    pub async fn fail_unfinished(
        &self,
        id: &str,
        error: &WireError,
        also_running: bool,
    ) -> Result<bool, sqlx::Error> {
        let statuses = if also_running { "('queued', 'running')" } else { "('queued')" };
        let sql = format!(
            "UPDATE requests SET status = 'failed', error_type = $2, error_message = $3, finished_at = $4
             WHERE id = $1 AND status IN {statuses}"
        );
        let attempt_sql = "UPDATE attempts SET outcome = $2, finished_at = $3
                           WHERE request_id = $1 AND outcome = 'running'";
        let now = now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(&sql).bind(id).bind(error.kind.as_str()).bind(&error.message).bind(now)
                .execute(&mut *tx).await?.rows_affected() == 1;
            if done {
                // Only a cancellation ends a running attempt here; a deadline finds none.
                let outcome = AttemptOutcome::Cancelled.as_str();
                sqlx::query(attempt_sql).bind(id).bind(outcome).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// Fails every request still queued that was accepted before `created_before`; their ids.
    pub async fn fail_overdue_queued(
        &self,
        created_before: i64,
        error: &WireError,
    ) -> Result<Vec<String>, sqlx::Error> {
        let sql = "UPDATE requests SET status = 'failed', error_type = $1, error_message = $2,
                   finished_at = $3 WHERE status = 'queued' AND created_at < $4 RETURNING id";
        on_pool!(self, p => {
            let rows: Vec<(String,)> = sqlx::query_as(sql)
                .bind(error.kind.as_str())
                .bind(&error.message)
                .bind(now_ms())
                .bind(created_before)
                .fetch_all(p)
                .await?;
            Ok(rows.into_iter().map(|(id,)| id).collect())
        })
    }

    /// Running requests whose node is no longer held by the replica that claimed them (the node
    /// or the replica went away): `(id, attempt)` pairs to fail over.
    pub async fn orphaned_running(&self, fresh_ms: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let sql = "SELECT id, attempts FROM requests r WHERE status = 'running' AND NOT EXISTS
                       (SELECT 1 FROM nodes n WHERE n.id = r.node_id AND n.replica_id = r.replica_id
                        AND n.last_seen > $1)";
        on_pool!(self, p => sqlx::query_as(sql).bind(now_ms() - fresh_ms).fetch_all(p).await)
    }

    /// Records a running attempt's progress.
    pub async fn record_progress(
        &self,
        id: &str,
        attempt: i64,
        seconds: f64,
    ) -> Result<(), sqlx::Error> {
        let sql = "UPDATE requests SET generated_seconds = $3
                   WHERE id = $1 AND attempts = $2 AND status = 'running'";
        on_pool!(self, p => sqlx::query(sql).bind(id).bind(attempt).bind(seconds).execute(p).await.map(drop))
    }

    /// Running attempts started before `started_before` (epoch ms): `(id, attempt, node)`.
    pub async fn overdue_running(
        &self,
        started_before: i64,
    ) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
        let sql = "SELECT r.id, r.attempts, a.node_id FROM requests r
                   JOIN attempts a ON a.request_id = r.id AND a.attempt = r.attempts
                   WHERE r.status = 'running' AND a.started_at < $1";
        on_pool!(self, p => sqlx::query_as(sql).bind(started_before).fetch_all(p).await)
    }

    /// Where a request stands.
    pub async fn outcome(&self, id: &str) -> Result<Option<Outcome>, sqlx::Error> {
        let sql = "SELECT status, error_type, error_message, audio, transcript, language, node_id,
                       queue_seconds, inference_seconds, audio_seconds FROM requests WHERE id = $1";
        on_pool!(self, p => sqlx::query_as(sql).bind(id).fetch_optional(p).await)
    }

    /// A page of the account's history, newest first, before the cursor `before` (a `seq`).
    pub async fn history(
        &self,
        account: &str,
        filter: &HistoryFilter<'_>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<HistoryRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {HISTORY_COLUMNS} FROM requests r
             WHERE account_id = $1 AND ($2 IS NULL OR status = $2) AND seq < $3
                 AND ($5 IS NULL OR collection = $5) AND ($6 IS NULL OR visibility = $6)
             ORDER BY seq DESC LIMIT $4"
        );
        on_pool!(self, p => sqlx::query_as(&sql)
            .bind(account).bind(filter.status.map(RequestStatus::as_str)).bind(before.unwrap_or(i64::MAX)).bind(limit)
            .bind(filter.collection).bind(filter.visibility)
            .fetch_all(p).await)
    }

    /// One request of the account.
    pub async fn history_item(
        &self,
        account: &str,
        id: &str,
    ) -> Result<Option<HistoryRow>, sqlx::Error> {
        let sql =
            format!("SELECT {HISTORY_COLUMNS} FROM requests r WHERE account_id = $1 AND id = $2");
        on_pool!(self, p => sqlx::query_as(&sql).bind(account).bind(id).fetch_optional(p).await)
    }

    /// The attempts of a request, in order.
    pub async fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, sqlx::Error> {
        let sql =
            "SELECT attempt, node_id, started_at, finished_at, outcome, error_type, error_message
                   FROM attempts WHERE request_id = $1 ORDER BY attempt";
        on_pool!(self, p => sqlx::query_as(sql).bind(id).fetch_all(p).await)
    }

    /// The WAV of a succeeded request of the account.
    pub async fn history_audio(
        &self,
        account: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>, sqlx::Error> {
        let sql =
            "SELECT audio FROM requests WHERE account_id = $1 AND id = $2 AND audio IS NOT NULL";
        on_pool!(self, p => sqlx::query_scalar(sql).bind(account).bind(id).fetch_optional(p).await)
    }

    /// Owner, cloned samples (JSON of [`crate::validation::Speakers`]) and task of a request.
    pub async fn voice_refs(
        &self,
        id: &str,
    ) -> Result<Option<(String, Option<String>, String)>, sqlx::Error> {
        let sql = "SELECT account_id, voice_refs, task FROM requests WHERE id = $1";
        on_pool!(self, p => sqlx::query_as(sql).bind(id).fetch_optional(p).await)
    }
}
