//! The dashboard in headless Chromium, against a real control plane (SQLite and PostgreSQL) and
//! a real `dia-node serve` on the fixture weights. Screenshots of every page, at 1280 and 360 px,
//! go to `$DASHBOARD_SCREENSHOTS` (default: `dia-dashboard-screenshots` in the temp folder).

mod common;

use common::browser::Browser;
use common::pool::{Pool, Store};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const KEY: &str = "dia_dashboard_key";
const ADMIN: &str = "dashboard-admin";

async fn pool(store: Store) -> Pool {
    let args = [
        format!("--bootstrap-api-key={KEY}"),
        format!("--admin-token={ADMIN}"),
        // Short samples keep the cloning prompt inside the fixture model's window.
        "--min-voice-seconds=0.4".to_owned(),
        "--max-voice-seconds=5".to_owned(),
    ];
    Pool::start(store, 1, 1, &args).await
}

fn shots(test: &str, store: &str) -> PathBuf {
    let root = std::env::var_os("DASHBOARD_SCREENSHOTS")
        .map_or_else(|| std::env::temp_dir().join("dia-dashboard-screenshots"), PathBuf::from);
    root.join(format!("{test}-{store}"))
}

/// A mono 16-bit WAV of a 220 Hz tone.
fn tone(path: &Path, seconds: f32, rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(seconds * rate as f32) as u32 {
        let x = (i as f32 * 220.0 * std::f32::consts::TAU / rate as f32).sin() * 0.4;
        w.write_sample((x * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

async fn launch(pool: &Pool, test: &str, store: &str) -> Browser {
    let microphone = pool.dir.path().join("microphone.wav");
    tone(&microphone, 10.0, 48_000);
    let browser = Browser::launch(shots(test, store), &microphone).await;
    eprintln!("screenshots: {}", browser.shots.display());
    browser
}

/// Every page at desktop and phone width; at 360 px nothing may be wider than the screen.
async fn screenshot_all(b: &mut Browser, pool: &Pool, name: &str, path: &str) {
    b.goto(&pool.url(path)).await;
    b.screenshot(&format!("{name}-1280")).await;
    b.width(360).await;
    b.goto(&pool.url(path)).await;
    b.screenshot(&format!("{name}-360")).await;
    let widest = "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 360)\
                  .map(e => e.tagName + '.' + e.className).join(' ')";
    let wide = b.eval("document.documentElement.scrollWidth").await;
    assert!(
        wide.as_u64().unwrap() <= 360,
        "{path} is {wide} px wide at 360 px: {}",
        b.eval(widest).await
    );
    b.call("Emulation.clearDeviceMetricsOverride", json!({})).await;
}

async fn api(pool: &Pool, key: &str, path: &str) -> (u16, Value) {
    let res = pool.http.get(pool.url(path)).bearer_auth(key).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn other_account(pool: &Pool) -> String {
    let res = pool
        .http
        .post(pool.url("/v1/admin/accounts"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "other"}))
        .send()
        .await
        .unwrap();
    res.json::<Value>().await.unwrap()["api_key"].as_str().unwrap().to_owned()
}

async fn upload_via_api(pool: &Pool, key: &str, name: &str, default: bool) -> i64 {
    let file = pool.dir.path().join("api-upload.wav");
    tone(&file, 1.0, 44_100);
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(&file).unwrap()).file_name("a.wav"),
        )
        .text("speaker_name", name.to_owned())
        .text("transcript", "Hello there.")
        .text("is_default", default.to_string());
    let res = pool
        .http
        .post(pool.url("/v1/voices"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

async fn voice_library(store: Store, name: &str) {
    let pool = pool(store).await;
    let mut b = launch(&pool, "library", name).await;

    // Signed out, every page leads to sign-in; a wrong key is refused there.
    b.goto(&pool.url("/voices")).await;
    assert_eq!(b.path().await, "/sign-in");
    b.screenshot("sign-in").await;
    b.fill("#api_key", "dia_not_a_key").await;
    b.click("#sign-in button").await;
    let error = b.wait_for("document.querySelector('#sign-in-error')?.textContent").await;
    assert_eq!(error, "That API key is not valid.");
    assert_eq!(b.path().await, "/sign-in");
    b.screenshot("sign-in-refused").await;

    b.sign_in(&pool.base, KEY).await;
    let cookies = b.call("Network.getCookies", json!({"urls": [pool.base]})).await;
    let cookie = &cookies["cookies"][0];
    assert_eq!(
        (cookie["httpOnly"].clone(), cookie["sameSite"].clone()),
        (json!(true), json!("Strict"))
    );
    assert!(!cookie["value"].as_str().unwrap().contains(KEY));
    assert_eq!(b.eval("document.cookie + localStorage.length + sessionStorage.length").await, "00");

    // Upload a WAV: listed with its duration, transcript and default badge.
    let wav = pool.dir.path().join("ann.wav");
    tone(&wav, 2.0, 44_100);
    b.set_file("#upload-file", &wav).await;
    b.fill("#upload-name", "Ann").await;
    b.fill("#upload-transcript", "Hello there, this is Ann.").await;
    b.click("#upload-default").await;
    b.click("#upload button[type=submit]").await;
    b.wait_for("document.querySelectorAll('.voice').length === 1").await;
    assert_eq!(b.eval("document.querySelector('.voice .duration').textContent").await, "2.00 s");
    assert_eq!(b.eval("document.querySelector('.voice .badge').textContent").await, "default");
    let (_, listed) = api(&pool, KEY, "/v1/voices").await;
    assert_eq!(listed["data"][0]["speaker_name"], "Ann");
    assert!((listed["data"][0]["duration_seconds"].as_f64().unwrap() - 2.0).abs() < 0.01);

    // A file that is not audio: the API's error, inline.
    let junk = pool.dir.path().join("junk.wav");
    std::fs::write(&junk, b"this is not audio at all").unwrap();
    b.set_file("#upload-file", &junk).await;
    b.fill("#upload-name", "Junk").await;
    b.click("#upload button[type=submit]").await;
    let error = b.wait_for("!document.querySelector('#upload-error').hidden && document.querySelector('#upload-error').textContent").await;
    assert!(error.as_str().unwrap().ends_with("(audio_decode_failed)"), "{error}");
    b.screenshot("upload-error").await;

    // Record from the fake microphone: level meter, time limit, playback, then saved as WebM/Opus.
    assert_eq!(b.eval("document.querySelector('#record-time').textContent").await, "0.0 s / 5 s");
    b.click("#record-start").await;
    b.wait_for("document.querySelector('#record-level').value > 0").await;
    b.wait_for("parseFloat(document.querySelector('#record-time').textContent) >= 2.0").await;
    b.click("#record-stop").await;
    b.wait_for("!document.querySelector('#record-save').disabled").await;
    let playable = "new Promise(ok => { const a = document.querySelector('#record-playback'); \
                    if (a.readyState >= 1) ok(true); else a.onloadedmetadata = () => ok(true); })";
    assert_eq!(b.eval(playable).await, true);
    b.fill("#record-name", "Mic").await;
    b.fill("#record-transcript", "Testing one two three.").await;
    b.screenshot("recorded").await;
    b.click("#record-save").await;
    b.wait_for("document.querySelectorAll('.voice').length === 2").await;
    let (_, listed) = api(&pool, KEY, "/v1/voices").await;
    let mic = &listed["data"][1];
    assert_eq!((mic["speaker_name"].clone(), mic["format"].clone()), (json!("Mic"), json!("webm")));
    let seconds = mic["duration_seconds"].as_f64().unwrap();
    assert!((1.8..3.0).contains(&seconds), "the recording decoded to {seconds} s");
    let mic_id = mic["id"].as_i64().unwrap();
    let original = pool
        .http
        .get(pool.url(&format!("/v1/voices/{mic_id}/audio")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(original.headers()["content-type"], "audio/webm");
    assert_eq!(
        original.bytes().await.unwrap()[..4],
        [0x1A, 0x45, 0xDF, 0xA3],
        "an EBML (WebM) file"
    );
    let missing = "document.querySelector('.voice[data-id=\"{}\"] .transcript').textContent";
    assert_eq!(b.eval(&missing.replace("{}", &mic_id.to_string())).await, "Testing one two three.");

    // Edit the first sample's name; clear the recording's transcript to see why it cannot clone.
    b.eval("document.querySelector('.voice details').open = true").await;
    b.fill(".voice:first-child input[name=speaker_name]", "Ann B").await;
    b.click(".voice:first-child form.edit-voice button[type=submit]").await;
    b.wait_for("document.querySelector('.voice .speaker').textContent === 'Ann B'").await;
    let mic_card = format!(".voice[data-id=\"{mic_id}\"]");
    b.fill(&format!("{mic_card} textarea[name=transcript]"), "").await;
    b.click(&format!("{mic_card} form.edit-voice button[type=submit]")).await;
    b.wait_for(
        &missing
            .replace("{}", &mic_id.to_string())
            .replace(".textContent", ".textContent === 'No transcript, and no transcription node was online to fill it in: type what the clip says, cloning needs it.'"),
    )
    .await;
    screenshot_all(&mut b, &pool, "voices", "/voices").await;

    // Delete with a confirmation.
    b.click(&format!("{mic_card} button.delete")).await;
    b.wait_for("document.querySelectorAll('.voice').length === 1").await;
    assert_eq!(b.dialogs.last().unwrap(), "Delete the sample \"Mic\"? This cannot be undone.");
    assert_eq!(api(&pool, KEY, "/v1/voices").await.1["data"].as_array().unwrap().len(), 1);

    // Another account's samples never show, nor play, through this session.
    let other = other_account(&pool).await;
    let theirs = upload_via_api(&pool, &other, "Their secret voice", true).await;
    b.goto(&pool.url("/voices")).await;
    let text = b.eval("document.body.innerText").await;
    assert!(!text.as_str().unwrap().contains("Their secret voice"));
    let fetch = format!("fetch('/v1/voices/{theirs}/audio').then(r => r.status)");
    assert_eq!(b.eval(&fetch).await, 404);
    b.goto(&pool.url("/playground")).await;
    assert!(!b.eval("document.body.innerHTML").await.as_str().unwrap().contains("Their secret"));

    // A change without the page's CSRF token is refused, by the API and by the forms.
    let forged = "fetch('/v1/voices/1', {method: 'DELETE'}).then(r => r.status)";
    assert_eq!(b.eval(forged).await, 401);
    let forged = "fetch('/keys', {method: 'POST', headers: {'content-type': \
                  'application/x-www-form-urlencoded'}, body: 'csrf=guess'}).then(r => r.status)";
    assert_eq!(b.eval(forged).await, 403);
    assert_eq!(api(&pool, KEY, "/v1/voices").await.1["data"].as_array().unwrap().len(), 1);

    // API keys: create (shown once), use it, revoke it.
    b.goto(&pool.url("/keys")).await;
    assert_eq!(b.eval("document.querySelectorAll('#keys tbody tr').length").await, 1);
    b.click("#create-key").await;
    let key = b.wait_for("document.querySelector('#new-key')?.textContent").await;
    let key = key.as_str().unwrap().to_owned();
    assert!(key.starts_with("dia_") && key.len() > 20, "{key}");
    b.screenshot("key-created").await;
    assert_eq!(api(&pool, &key, "/v1/voices").await.0, 200);
    b.goto(&pool.url("/keys")).await;
    let rows =
        b.eval("[...document.querySelectorAll('#keys tbody tr')].map(r => r.innerText)").await;
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(!b.eval("document.body.innerHTML").await.as_str().unwrap().contains(&key));
    let revoke = format!(
        "[...document.querySelectorAll('#keys tbody tr')].find(r => r.innerText.includes({})).querySelector('button').click()",
        json!(&key[..8])
    );
    b.eval(&revoke).await;
    b.wait_for("document.querySelectorAll('#keys tbody tr').length === 1").await;
    assert!(b.dialogs.last().unwrap().starts_with("Revoke this key?"));
    assert_eq!(api(&pool, &key, "/v1/voices").await.0, 401);
    screenshot_all(&mut b, &pool, "keys", "/keys").await;

    // Pool: the admin token opens it; the node is there with its model and feature, and why it
    // names no GPU.
    b.goto(&pool.url("/pool")).await;
    b.fill("#admin_token", "wrong").await;
    b.click("#unlock button").await;
    b.wait_for("document.querySelector('#unlock-error')").await;
    b.fill("#admin_token", ADMIN).await;
    b.click("#unlock button").await;
    let nodes = b.wait_for("document.querySelector('#nodes')?.innerText").await;
    let nodes = nodes.as_str().unwrap();
    assert!(
        nodes.contains("tiny-0") && nodes.contains("voice-cloning") && nodes.contains("healthy"),
        "{nodes}"
    );
    assert!(nodes.contains("no GPU: "), "{nodes}");
    screenshot_all(&mut b, &pool, "pool", "/pool").await;

    // Sign out: the pages lead to sign-in again.
    b.click("header form button").await;
    b.wait_for("location.pathname === '/sign-in'").await;
    b.goto(&pool.url("/queue")).await;
    assert_eq!(b.path().await, "/sign-in");
}

async fn playground_and_queue(store: Store, name: &str) {
    let pool = pool(store).await;
    let voice = upload_via_api(&pool, KEY, "Default Dan", true).await;
    let mut b = launch(&pool, "playground", name).await;
    b.sign_in(&pool.base, KEY).await;
    b.goto(&pool.url("/playground")).await;
    assert_eq!(b.eval("document.querySelector('#voice-S1').value").await, voice.to_string());
    assert_eq!(b.eval("document.querySelector('#voice-S2').value").await, "");
    let ranges = "['cfg_scale','temperature','top_p','cfg_filter_top_k','speed_factor','max_new_tokens']\
                  .map(n => { const i = document.getElementById(n); return [n, +i.min, +i.max, +i.value]; })";
    assert_eq!(
        b.eval(ranges).await,
        json!([
            ["cfg_scale", 1, 5, 3],
            ["temperature", 0.1, 2, 1.8],
            ["top_p", 0.1, 1, 0.95],
            ["cfg_filter_top_k", 1, 100, 45],
            ["speed_factor", 0.5, 2, 1],
            ["max_new_tokens", 256, 4096, 3072]
        ])
    );

    // Script rules as you type, at their line; Generate sends nothing then.
    b.fill("#script", "[S2] Hi.\n[S1] Hello.").await;
    let error = b.eval("document.querySelector('#script-error').textContent").await;
    assert_eq!(
        error,
        "line 1: the script opens with [S2]; the first speaker must be [S1]: “[S2] Hi.”"
    );
    b.click("#generate").await;
    b.fill("#script", "[S1] Hi.\n[S3] Who am I?").await;
    let error = b.eval("document.querySelector('#script-error').textContent").await;
    assert!(
        error.as_str().unwrap().starts_with("line 2: speaker tag [S3] is not supported"),
        "{error}"
    );
    b.screenshot("script-error").await;
    assert_eq!(api(&pool, KEY, "/v1/history").await.1["data"], json!([]), "no request was sent");

    // Generate with the default voice and a fixed seed: progress, then audio of the right length.
    b.fill("#script", "[S1] Hello from the dashboard.").await;
    b.fill("#max_new_tokens", "256").await;
    b.click("#seed-fixed").await;
    b.fill("#seed", "7").await;
    b.eval("window.seen = []; new MutationObserver(() => seen.push(document.querySelector('#status').textContent))\
            .observe(document.querySelector('#status'), {childList: true, characterData: true, subtree: true})").await;
    b.click("#generate").await;
    b.wait_for("!document.querySelector('#output').hidden").await;
    let seen = b.eval("seen").await;
    assert!(
        seen.as_array().unwrap().iter().any(|s| s
            .as_str()
            .unwrap()
            .starts_with("Generating on tiny-0")
            || s.as_str().unwrap().starts_with("Queued")),
        "{seen}"
    );
    let (_, history) = api(&pool, KEY, "/v1/history").await;
    let item = &history["data"][0];
    assert_eq!((item["status"].clone(), item["seed"].clone()), (json!("succeeded"), json!(7)));
    assert_eq!(item["params"]["speakers"]["S1"], voice);
    let audio_seconds = item["audio_seconds"].as_f64().unwrap();
    let duration = b
        .eval(
            "new Promise(ok => { const a = document.querySelector('#result-audio'); \
               const go = () => a.play().then(() => ok(a.duration)); \
               a.readyState >= 1 ? go() : a.onloadedmetadata = go; })",
        )
        .await;
    assert!(
        (duration.as_f64().unwrap() - audio_seconds).abs() < 0.02,
        "{duration} vs {audio_seconds}"
    );
    b.wait_for("document.querySelector('#result-audio').currentTime > 0").await;
    let link = b.eval("document.querySelector('#download').getAttribute('href')").await;
    assert_eq!(link, format!("/v1/history/{}/audio", item["id"].as_str().unwrap()));
    b.screenshot("generated").await;

    // "Copy as curl" is the exact request: sent with a key, it gives the same audio.
    b.click("#copy-curl").await;
    let curl = b.eval("document.querySelector('#curl').textContent").await;
    let curl = curl.as_str().unwrap();
    let body = &curl[curl.find("-d '").unwrap() + 4..curl.rfind("' \\").unwrap()];
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["seed"], 7);
    let res = pool
        .http
        .post(pool.url("/v1/voice/generations"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let generated = pool
        .http
        .get(pool.url(item["audio_url"].as_str().unwrap()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.bytes().await.unwrap(),
        generated.bytes().await.unwrap(),
        "same seed, same audio"
    );

    // Regenerate with the same seed: a new request, seed 7 again.
    b.fill("#seed", "0").await;
    b.click("#regenerate").await;
    b.wait_for(
        "document.querySelector('#status').textContent.startsWith('Done') && \
                !document.querySelector('#generate').disabled",
    )
    .await;
    let (_, history) = api(&pool, KEY, "/v1/history").await;
    let seeds: Vec<_> =
        history["data"].as_array().unwrap().iter().map(|r| r["seed"].clone()).collect();
    assert_eq!(seeds, [json!(7), json!(7), json!(7)]);
    screenshot_all(&mut b, &pool, "playground", "/playground").await;

    // The queue shows the requests; a long one is cancelled from it while it runs.
    b.goto(&pool.url("/playground")).await;
    b.fill("#script", "[S1] A long one, to be cut short.").await;
    b.eval("document.querySelector('#voice-S1').value = ''").await;
    b.fill("#max_new_tokens", "1024").await;
    b.click("#generate").await;
    b.wait_for("document.querySelector('#status').textContent.startsWith('Generating')").await;
    b.goto(&pool.url("/queue")).await;
    let long =
        b.wait_for("document.querySelector('.request[data-status=running]')?.dataset.id").await;
    let long = long.as_str().unwrap().to_owned();
    b.screenshot("queue-running").await;
    b.click(&format!(".request[data-id=\"{long}\"] button.cancel")).await;
    b.wait_for(&format!(
        "document.querySelector('.request[data-id=\"{long}\"]').dataset.status === 'failed'"
    ))
    .await;
    let (_, item) = api(&pool, KEY, &format!("/v1/history/{long}")).await;
    assert_eq!(item["error"]["type"], "cancelled");
    assert_eq!(item["error"]["message"], "cancelled by its owner");
    let rows = b.eval("document.querySelectorAll('.request').length").await;
    assert_eq!(rows, 4);
    let shown = b
        .eval(
            "document.querySelector('.request[data-status=succeeded] .audio-seconds').textContent",
        )
        .await;
    assert!(shown.as_str().unwrap().ends_with(" s"));
    // Filters: by visibility and collection.
    b.goto(&pool.url("/queue?visibility=public")).await;
    assert_eq!(b.eval("document.querySelectorAll('.request').length").await, 0);
    b.goto(&pool.url("/queue?visibility=private&status=failed")).await;
    assert_eq!(b.eval("document.querySelectorAll('.request').length").await, 1);
    screenshot_all(&mut b, &pool, "queue", "/queue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_library_keys_and_pool_on_sqlite() {
    voice_library(Store::Sqlite, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_library_keys_and_pool_on_postgres() {
    voice_library(Store::Postgres, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_generates_and_the_queue_cancels_on_sqlite() {
    playground_and_queue(Store::Sqlite, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_generates_and_the_queue_cancels_on_postgres() {
    playground_and_queue(Store::Postgres, "postgres").await;
}
