//! Transcription end to end: the real control plane and a real `dia-node serve` running Whisper
//! base (the CTranslate2 weights `scripts/setup.sh` assembles; `WHISPER_WEIGHTS` overrides) beside
//! Dia, on real speech clips (`fixtures/whisper-base`, spoken by espeak-ng).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::Browser;
use common::pool::{Pool, Store};
use common::{dia_node, fixtures};
use serde_json::{json, Value};

const KEY: &str = "stt-test-key";

fn whisper_weights() -> PathBuf {
    std::env::var("WHISPER_WEIGHTS").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/whisper-base-ct2")
    })
}

/// A clip of the fixtures and the text espeak-ng spoke in it.
fn clip(name: &str) -> (Vec<u8>, String) {
    let dir = fixtures("whisper-base", "WHISPER_FIXTURE_DIR");
    let case: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("cases/{name}.json"))).unwrap(),
    )
    .unwrap();
    let wav = std::fs::read(dir.join(case["wav"].as_str().unwrap())).unwrap();
    (wav, case["text"].as_str().unwrap().to_owned())
}

/// Word error rate, `(S + D + I) / N` by word-level Levenshtein distance, over lower-cased words
/// without punctuation (jiwer's definition, as `models/tests/whisper_parity.rs` computes it).
fn wer(reference: &str, hypothesis: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.to_lowercase()
            .chars()
            .map(|c| if c.is_alphanumeric() || c == '\'' { c } else { ' ' })
            .collect::<String>()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (r, h) = (words(reference), words(hypothesis));
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(rw != hw)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[h.len()] as f64 / r.len() as f64
}

async fn pool(store: Store, with_whisper: bool) -> Pool {
    let mut node = dia_node("serve");
    if with_whisper {
        node.arg("--whisper").arg(whisper_weights());
    }
    let args = [format!("--bootstrap-api-key={KEY}"), "--poll-interval-ms=100".to_owned()];
    Pool::start_with(store, 2, vec![node], &args).await
}

async fn upload(pool: &Pool, wav: Vec<u8>) -> Value {
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(wav).file_name("clip.wav"))
        .text("speaker_name", "Espeak");
    let res = pool
        .http
        .post(pool.url("/v1/voices"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

async fn voice(pool: &Pool, id: i64) -> Value {
    let res = pool.http.get(pool.url(&format!("/v1/voices/{id}"))).bearer_auth(KEY).send().await;
    res.unwrap().json().await.unwrap()
}

async fn uploads_are_transcribed_by_whisper_and_the_openai_endpoint_agrees(store: Store) {
    let pool = pool(store, true).await;
    let res = pool.http.get(pool.url("/v1/models")).send().await.unwrap();
    let models: Value = res.json().await.unwrap();
    let whisper = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["features"] == json!(["transcription"]))
        .unwrap_or_else(|| panic!("no transcription model in {models}"));
    assert!(whisper["languages"].as_array().unwrap().contains(&json!("en")), "{whisper}");

    // 44.1 kHz stereo, as a user's recording might be: faster-whisper hears it word for word.
    let (wav, spoken) = clip("en_us_stereo44k");
    let uploaded = upload(&pool, wav.clone()).await;
    let id = uploaded["id"].as_i64().unwrap();
    assert_eq!(uploaded["transcript_status"], "pending", "{uploaded}");
    let mut filled = Value::Null;
    for _ in 0..600 {
        filled = voice(&pool, id).await;
        if filled["transcript_status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(filled["transcript_status"], "filled", "{filled}");
    let transcript = filled["transcript"].as_str().unwrap().to_owned();
    // faster-whisper's WER on this clip is 0; through the voice library's decoding, 16-bit
    // transport and our resampling it may lose a word at most.
    let error = wer(&spoken, &transcript);
    assert!(error <= 0.15, "WER {error}: {transcript:?} for {spoken:?}");

    // The filled transcript clones.
    let res = pool
        .http
        .post(pool.url("/v1/voice/generations"))
        .bearer_auth(KEY)
        .json(&json!({"input": "[S1] Hi.", "speakers": {"S1": id}, "max_new_tokens": 256}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The OpenAI-compatible endpoint hears the same in the same clip, through OpenAI's client.
    let script = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2])
with open(sys.argv[3], "rb") as f:
    print(client.audio.transcriptions.create(model="whisper-1", file=f).text, end="")
"#;
    let file = pool.dir.path().join("clip.wav");
    std::fs::write(&file, &wav).unwrap();
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let mut command = std::process::Command::new(python);
    command.args(["-c", script, &pool.url("/v1"), KEY, file.to_str().unwrap()]);
    let out = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), transcript);

    // A given language is used: German words heard in German.
    let (german, spoken) = clip("de_150");
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(german).file_name("de.wav"))
        .text("language", "de")
        .text("response_format", "text");
    let res = pool
        .http
        .post(pool.url("/v1/audio/transcriptions"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-language"], "de");
    let text = res.text().await.unwrap();
    // faster-whisper's own WER on this clip is 0.58.
    assert!(wer(&spoken, &text) <= 0.7, "{text:?} for {spoken:?}");
}

async fn without_a_whisper_node_samples_are_unavailable_and_do_not_clone(store: Store) {
    let pool = pool(store, false).await;
    let (wav, _) = clip("en_gb_140");
    let uploaded = upload(&pool, wav).await;
    assert_eq!(uploaded["transcript_status"], "unavailable", "{uploaded}");
    let res = pool
        .http
        .post(pool.url("/v1/voice/generations"))
        .bearer_auth(KEY)
        .json(&json!({"input": "[S1] Hi.", "speakers": {"S1": uploaded["id"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "missing_transcript", "{body}");
}

/// The voice library page: a clip uploaded there without a transcript gets the text heard in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_transcript_filled_in() {
    let pool = pool(Store::Sqlite, true).await;
    let dir = fixtures("whisper-base", "WHISPER_FIXTURE_DIR");
    let shots = pool.dir.path().join("shots");
    let mut b = Browser::launch(shots, &dir.join("en_gb_140.wav")).await;
    b.sign_in(&pool.base, KEY).await;
    // Chromium reads uploads from the temporary folder (as the dashboard tests give them).
    let file = pool.dir.path().join("espeak.wav");
    std::fs::copy(dir.join("en_us_stereo44k.wav"), &file).unwrap();
    b.set_file("#upload-file", &file).await;
    b.fill("#upload-name", "Espeak").await;
    b.click("#upload button[type=submit]").await;
    let card = "document.querySelector('#voice-list .voice')";
    let error = "document.querySelector('#upload-error')";
    let uploaded = b
        .wait_for(&format!("{card} ? 'uploaded' : ({error}.hidden ? '' : {error}.textContent)"))
        .await;
    assert_eq!(uploaded, "uploaded");
    b.wait_for(&format!("{card} && {card}.dataset.transcriptStatus === 'filled'")).await;
    let text = b.eval(&format!("{card}.querySelector('.transcript').textContent")).await;
    let (_, spoken) = clip("en_us_stereo44k");
    let text = text.as_str().unwrap();
    assert!(wer(&spoken, text) <= 0.15, "{text:?} for {spoken:?}");
    let editable =
        b.eval(&format!("{card}.querySelector('textarea[name=transcript]').value")).await;
    assert_eq!(editable, text);
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$name(super::Store::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                super::$name(super::Store::Postgres).await
            }
        }
    )*};
}

on_both_stores!(
    uploads_are_transcribed_by_whisper_and_the_openai_endpoint_agrees,
    without_a_whisper_node_samples_are_unavailable_and_do_not_clone,
);
