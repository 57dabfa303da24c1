//! The voice library: samples per account, at most one default each.

use super::{now_ms, on_pool, text_enum, Db};

/// A sample's metadata, as stored and as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Voice)]
pub struct VoiceRow {
    /// Id to use in a generation's `speakers`.
    pub id: i64,
    /// Display name of the voice.
    pub speaker_name: String,
    /// What is said in the clip; needed for cloning. Typed at upload or later, or filled by a
    /// transcription.
    pub transcript: Option<String>,
    /// Where the transcript stands.
    #[sqlx(try_from = "String")]
    pub transcript_status: TranscriptStatus,
    /// Why the transcription failed, when it did.
    pub transcript_error: Option<String>,
    /// Pre-selected in the playground; at most one per account.
    pub is_default: bool,
    /// Upload container format: wav, mp3, flac, ogg, webm.
    pub format: String,
    /// Length after decoding.
    pub duration_seconds: f64,
    /// Upload sample rate.
    pub source_sample_rate: i64,
    /// Upload channels.
    pub source_channels: i64,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
}

text_enum! {
    /// Where a sample's transcript stands.
    pub enum TranscriptStatus {
        /// A transcription is queued or running.
        Pending = "pending",
        /// There is a transcript, typed or transcribed.
        Filled = "filled",
        /// The transcription failed (`transcript_error` says why); type one.
        Failed = "failed",
        /// None, and no transcription node was online when it was uploaded; type one.
        Unavailable = "unavailable",
    }
}

/// A sample read through its transcription request (`r`): a typed transcript wins, then the
/// transcription's text once it succeeded with some.
const COLUMNS: &str = "v.id, v.speaker_name,
    COALESCE(v.transcript, CASE WHEN r.status = 'succeeded' AND TRIM(r.transcript) <> ''
        THEN r.transcript END) AS transcript,
    CASE WHEN v.transcript IS NOT NULL THEN 'filled'
        WHEN r.id IS NULL THEN 'unavailable'
        WHEN r.status IN ('queued', 'running') THEN 'pending'
        WHEN r.status = 'succeeded' AND TRIM(r.transcript) <> '' THEN 'filled'
        ELSE 'failed' END AS transcript_status,
    CASE WHEN v.transcript IS NOT NULL THEN NULL
        WHEN r.status = 'failed' THEN r.error_message
        WHEN r.status = 'succeeded' AND TRIM(COALESCE(r.transcript, '')) = ''
            THEN 'no speech was recognised in the clip' END AS transcript_error,
    v.is_default, v.format, v.duration_seconds, v.source_sample_rate, v.source_channels,
    v.created_at, v.updated_at";
const FROM: &str = "voices v LEFT JOIN requests r ON r.id = v.transcription_id";

/// A new sample, decoded.
pub struct NewVoice<'a> {
    /// Display name.
    pub speaker_name: &'a str,
    /// Optional transcript.
    pub transcript: Option<&'a str>,
    /// Make it the account's default.
    pub is_default: bool,
    /// Upload container format.
    pub format: &'a str,
    /// The bytes as uploaded.
    pub original: &'a [u8],
    /// Normalised mono 44.1 kHz f32 LE samples.
    pub pcm: &'a [u8],
    /// Length in seconds.
    pub duration_seconds: f64,
    /// Upload sample rate.
    pub source_sample_rate: i64,
    /// Upload channels.
    pub source_channels: i64,
}

/// Changes to a sample; `None` leaves a field as it is.
#[derive(Default)]
pub struct VoicePatch {
    /// New name.
    pub speaker_name: Option<String>,
    /// New transcript (`Some(None)` clears it).
    pub transcript: Option<Option<String>>,
    /// Set or clear the default flag.
    pub is_default: Option<bool>,
}

/// What cloning needs of a sample.
#[derive(sqlx::FromRow)]
pub struct CloningSample {
    /// Transcript, if any.
    pub transcript: Option<String>,
    /// Where the transcript stands.
    #[sqlx(try_from = "String")]
    pub transcript_status: TranscriptStatus,
    /// Normalised samples, f32 LE.
    pub pcm: Vec<u8>,
}

impl Db {
    /// How a transaction that moves an account's default starts. Two of them each clearing the
    /// old default and setting theirs would collide on the one-default index (or, on SQLite,
    /// fail to upgrade a stale read to a write), so they take the write lock up front.
    fn begin_write(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "BEGIN IMMEDIATE",
            Self::Postgres(_) => "BEGIN",
        }
    }

    /// The statement that serialises the PostgreSQL transactions moving one account's default;
    /// SQLite's `BEGIN IMMEDIATE` already serialises every writer.
    fn lock_account(&self) -> Option<&'static str> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(_) => Some("SELECT id FROM accounts WHERE id = $1 FOR UPDATE"),
        }
    }

    /// The account's samples, oldest first.
    pub async fn list_voices(&self, account: &str) -> Result<Vec<VoiceRow>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE v.account_id = $1 ORDER BY v.id");
        on_pool!(self, p => sqlx::query_as(&sql).bind(account).fetch_all(p).await)
    }

    /// One sample of the account.
    pub async fn get_voice(&self, account: &str, id: i64) -> Result<Option<VoiceRow>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE v.account_id = $1 AND v.id = $2");
        on_pool!(self, p => sqlx::query_as(&sql).bind(account).bind(id).fetch_optional(p).await)
    }

    /// The uploaded bytes and format of one sample of the account.
    pub async fn voice_original(
        &self,
        account: &str,
        id: i64,
    ) -> Result<Option<(String, Vec<u8>)>, sqlx::Error> {
        let sql = "SELECT format, original FROM voices WHERE account_id = $1 AND id = $2";
        on_pool!(self, p => sqlx::query_as(sql).bind(account).bind(id).fetch_optional(p).await)
    }

    /// Stores a sample; when it is the default, the previous default stops being one.
    pub async fn insert_voice(
        &self,
        account: &str,
        v: &NewVoice<'_>,
    ) -> Result<VoiceRow, sqlx::Error> {
        let now = now_ms();
        let sql =
            "INSERT INTO voices (account_id, speaker_name, transcript, is_default, format, original, pcm,
                duration_seconds, source_sample_rate, source_channels, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id";
        let select = format!("SELECT {COLUMNS} FROM {FROM} WHERE v.id = $1");
        on_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            if v.is_default {
                if let Some(lock) = self.lock_account() {
                    sqlx::query(lock).bind(account).execute(&mut *tx).await?;
                }
                sqlx::query("UPDATE voices SET is_default = FALSE WHERE account_id = $1 AND is_default")
                    .bind(account).execute(&mut *tx).await?;
            }
            let id: i64 = sqlx::query_scalar(sql)
                .bind(account).bind(v.speaker_name).bind(v.transcript).bind(v.is_default).bind(v.format)
                .bind(v.original).bind(v.pcm).bind(v.duration_seconds).bind(v.source_sample_rate)
                .bind(v.source_channels).bind(now)
                .fetch_one(&mut *tx).await?;
            let row = sqlx::query_as(&select).bind(id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Applies a patch to a sample of the account; `None` when it is not there. A new transcript,
    /// or none, replaces whatever a transcription brought.
    pub async fn update_voice(
        &self,
        account: &str,
        id: i64,
        patch: VoicePatch,
    ) -> Result<Option<VoiceRow>, sqlx::Error> {
        let sql = "UPDATE voices SET speaker_name = COALESCE($3, speaker_name),
                transcript = CASE WHEN $4 THEN $5 ELSE transcript END,
                transcription_id = CASE WHEN $4 THEN NULL ELSE transcription_id END,
                is_default = COALESCE($6, is_default), updated_at = $7
             WHERE account_id = $1 AND id = $2 RETURNING id";
        let select = format!("SELECT {COLUMNS} FROM {FROM} WHERE v.id = $1");
        let (set_transcript, transcript) = match patch.transcript {
            Some(t) => (true, t),
            None => (false, None),
        };
        on_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            if patch.is_default == Some(true) {
                if let Some(lock) = self.lock_account() {
                    sqlx::query(lock).bind(account).execute(&mut *tx).await?;
                }
                sqlx::query("UPDATE voices SET is_default = FALSE WHERE account_id = $1 AND is_default AND id <> $2")
                    .bind(account).bind(id).execute(&mut *tx).await?;
            }
            let updated: Option<i64> = sqlx::query_scalar(sql)
                .bind(account).bind(id).bind(patch.speaker_name).bind(set_transcript).bind(transcript)
                .bind(patch.is_default).bind(now_ms())
                .fetch_optional(&mut *tx).await?;
            // No such sample: dropping the transaction rolls back the cleared default.
            let Some(id) = updated else { return Ok(None) };
            let row = sqlx::query_as(&select).bind(id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(Some(row))
        })
    }

    /// Deletes a sample of the account; false when it is not there.
    pub async fn delete_voice(&self, account: &str, id: i64) -> Result<bool, sqlx::Error> {
        let sql = "DELETE FROM voices WHERE account_id = $1 AND id = $2";
        let n = on_pool!(self, p => sqlx::query(sql).bind(account).bind(id).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Transcript and samples of one sample of the account, for a cloning prompt.
    pub async fn cloning_sample(
        &self,
        account: &str,
        id: i64,
    ) -> Result<Option<CloningSample>, sqlx::Error> {
        let sql = format!(
            "SELECT transcript, transcript_status, pcm FROM
                 (SELECT {COLUMNS}, v.pcm FROM {FROM} WHERE v.account_id = $1 AND v.id = $2) s"
        );
        on_pool!(self, p => sqlx::query_as(&sql).bind(account).bind(id).fetch_optional(p).await)
    }

    /// Links a sample that has no transcript to the transcription request filling it.
    pub async fn set_transcription(
        &self,
        account: &str,
        id: i64,
        request: &str,
    ) -> Result<(), sqlx::Error> {
        let sql = "UPDATE voices SET transcription_id = $3
                   WHERE account_id = $1 AND id = $2 AND transcript IS NULL";
        on_pool!(self, p => sqlx::query(sql).bind(account).bind(id).bind(request).execute(p).await.map(drop))
    }

    /// The samples of the account's clip, normalised (f32 LE), for a transcription.
    pub async fn voice_pcm(&self, account: &str, id: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
        let sql = "SELECT pcm FROM voices WHERE account_id = $1 AND id = $2";
        on_pool!(self, p => sqlx::query_scalar(sql).bind(account).bind(id).fetch_optional(p).await)
    }
}
