//! The voice prompt of a cloning request: its samples' clips joined S1, silence, S2, as the f32
//! LE PCM a node receives, identified by that PCM's SHA-256. A request stores only the samples'
//! ids; the prompt is assembled from the library when the request is accepted (for its length and
//! hash) and again when a node that holds no codes for the hash asks for it.

use crate::db::Db;
use crate::validation::Speakers;
use proto::frames::{f32_from_le_bytes, f32_le_bytes};
use proto::speech::VOICE_GAP_SECONDS;
use proto::SAMPLE_RATE;

/// The clips joined S1, gap, S2, as f32 LE bytes; `None` without clips.
pub fn join(s1: Option<Vec<f32>>, s2: Option<Vec<f32>>) -> Option<Vec<u8>> {
    let pcm = match (s1, s2) {
        (None, None) => return None,
        (Some(one), None) | (None, Some(one)) => one,
        (Some(mut s1), Some(s2)) => {
            s1.extend(std::iter::repeat_n(0.0, (VOICE_GAP_SECONDS * SAMPLE_RATE as f32) as usize));
            s1.extend(s2);
            s1
        }
    };
    Some(f32_le_bytes(&pcm))
}

/// Why a prompt could not be assembled again.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// A referenced sample is gone from the library.
    #[error("voice sample {0} was deleted before the request ran")]
    Deleted(i64),
    /// The store failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Assembles the prompt of the account's `speakers` from the library.
pub async fn assemble(
    db: &Db,
    account: &str,
    speakers: Speakers,
) -> Result<Option<Vec<u8>>, PromptError> {
    let mut clips = [None, None];
    for (clip, id) in clips.iter_mut().zip([speakers.s1, speakers.s2]) {
        let Some(id) = id else { continue };
        let pcm = db.voice_pcm(account, id).await?.ok_or(PromptError::Deleted(id))?;
        *clip = Some(f32_from_le_bytes(&pcm));
    }
    let [s1, s2] = clips;
    Ok(join(s1, s2))
}
