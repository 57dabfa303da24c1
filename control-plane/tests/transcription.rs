//! Transcription as a routed feature: samples uploaded without a transcript are transcribed by a
//! `transcription` node, `POST /v1/audio/transcriptions` answers as OpenAI's does, and what a
//! node sends back must fit the job it was given.

mod common;

use common::node::{cloning_model, heard, stt_model, ScriptedNode, MODEL};
use common::{eventually, expect_error, wav, Backend, Server, TestDb};
use proto::{ControlToNode, PcmEncoding, Stream, Task};
use serde_json::{json, Value};

const STT: &str = "whisper-test";

async fn voice_json(server: &Server, key: &str, id: i64) -> Value {
    let (status, voice) = server.get_json(key, &format!("/v1/voices/{id}")).await;
    assert_eq!(status, 200, "{voice}");
    voice
}

async fn upload_untranscribed(server: &Server, key: &str, seconds: f32) -> Value {
    let res = server.upload(key, wav(seconds), "Ann", None).await;
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

fn clone_s1(id: i64) -> Value {
    json!({"input": "[S1] Hello there.", "speakers": {"S1": id}})
}

/// A transcription POST with the given form fields and a WAV of `seconds`.
async fn transcribe(
    server: &Server,
    key: &str,
    seconds: f32,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(wav(seconds)).file_name("talk.wav"));
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    server
        .http
        .post(server.url("/v1/audio/transcriptions"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn without_a_transcription_node_a_sample_stays_unavailable_and_cannot_clone(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let _dia = ScriptedNode::connect(&server.ws_url(), "dia", 4).await.serve(10);
    let voice = upload_untranscribed(&server, &key, 1.5).await;
    assert_eq!(voice["transcript_status"], "unavailable", "{voice}");
    assert_eq!(voice["transcript"], Value::Null);
    let id = voice["id"].as_i64().unwrap();
    let msg =
        expect_error(server.generate(&key, clone_s1(id)).await, 400, "missing_transcript").await;
    assert!(msg.contains("no transcript") && msg.contains("PATCH"), "{msg}");
    // A typed transcript fills it.
    let res = server
        .http
        .patch(server.url(&format!("/v1/voices/{id}")))
        .bearer_auth(&key)
        .json(&json!({"transcript": "Hi, I am Ann."}))
        .send()
        .await
        .unwrap();
    let voice: Value = res.json().await.unwrap();
    assert_eq!(
        (voice["transcript_status"].as_str(), voice["transcript"].as_str()),
        (Some("filled"), Some("Hi, I am Ann."))
    );
    assert_eq!(server.generate(&key, clone_s1(id)).await.status(), 200);
}

async fn an_upload_without_transcript_is_transcribed_by_the_pool_and_then_clones(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut stt =
        ScriptedNode::connect_with(&server.ws_url(), "stt", 2, vec![stt_model(STT)]).await;
    let mut dia = ScriptedNode::connect(&server.ws_url(), "dia", 4).await.serve(10);

    let voice = upload_untranscribed(&server, &key, 1.5).await;
    let id = voice["id"].as_i64().unwrap();
    assert_eq!(voice["transcript_status"], "pending", "{voice}");
    let msg =
        expect_error(server.generate(&key, clone_s1(id)).await, 400, "missing_transcript").await;
    assert!(msg.contains("being transcribed"), "{msg}");

    // The job: the sample's samples, 16-bit, in a clip frame, no language given.
    let got = stt.next_job().await;
    assert_eq!(got.job.model, STT);
    let Task::Transcription(task) = &got.job.task else { panic!("{:?}", got.job.task) };
    assert_eq!(
        (task.clip.samples, task.clip.encoding, task.language.as_deref()),
        (66_150, PcmEncoding::I16Le, None)
    );
    let frame = got.prompt.expect("the clip follows the submit");
    assert_eq!((frame.header.stream, frame.payload.len()), (Stream::Clip, 66_150 * 2));
    stt.transcript(&got.job, "  Hi, I am Ann.  ", "en").await;

    eventually(async || voice_json(&server, &key, id).await["transcript_status"] == "filled").await;
    let voice = voice_json(&server, &key, id).await;
    assert_eq!(voice["transcript"], "Hi, I am Ann.");
    assert_eq!(voice["transcript_error"], Value::Null);
    // The filled transcript is what cloning puts before the script.
    assert_eq!(server.generate(&key, clone_s1(id)).await.status(), 200);
    let Task::Speech(speech) = dia.recv().await.unwrap().job.task else { panic!("not speech") };
    assert_eq!(speech.text, "[S1] Hi, I am Ann. [S1] Hello there.");

    // The transcription is in the history, with its text and no audio.
    let (_, history) = server.get_json(&key, "/v1/history?limit=5").await;
    let item = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["feature"] == "transcription")
        .unwrap()
        .clone();
    assert_eq!((item["status"].as_str(), item["model"].as_str()), (Some("succeeded"), Some(STT)));
    assert_eq!(
        (item["transcript"].as_str(), item["language"].as_str()),
        (Some("Hi, I am Ann."), Some("en"))
    );
    assert_eq!(item["input"], format!("voice sample {id}"));
    assert_eq!(item["audio_url"], Value::Null);
    assert!((item["audio_seconds"].as_f64().unwrap() - 1.5).abs() < 1e-6, "{item}");

    // Editing wins over the transcription; clearing asks for a new one.
    let patch = |body: Value| {
        server
            .http
            .patch(server.url(&format!("/v1/voices/{id}")))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let voice: Value =
        patch(json!({"transcript": "Hello, Ann here."})).await.unwrap().json().await.unwrap();
    assert_eq!(
        (voice["transcript_status"].as_str(), voice["transcript"].as_str()),
        (Some("filled"), Some("Hello, Ann here."))
    );
    let voice: Value = patch(json!({"transcript": null})).await.unwrap().json().await.unwrap();
    assert_eq!(voice["transcript_status"], "pending", "{voice}");
    let again = stt.next_job().await;
    stt.transcript(&again.job, "Take two.", "en").await;
    eventually(async || voice_json(&server, &key, id).await["transcript"] == "Take two.").await;
}

async fn a_failed_transcription_says_why_and_silence_is_no_transcript(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut stt =
        ScriptedNode::connect_with(&server.ws_url(), "stt", 2, vec![stt_model(STT)]).await;

    let failing = upload_untranscribed(&server, &key, 1.2).await["id"].as_i64().unwrap();
    let got = stt.next_job().await;
    stt.fail_with(
        &got.job,
        proto::WireError::new(proto::ErrorKind::UpstreamError, "the clip is noise"),
        false,
    )
    .await;
    eventually(async || voice_json(&server, &key, failing).await["transcript_status"] == "failed")
        .await;
    let voice = voice_json(&server, &key, failing).await;
    assert!(voice["transcript_error"].as_str().unwrap().contains("the clip is noise"), "{voice}");
    let msg =
        expect_error(server.generate(&key, clone_s1(failing)).await, 400, "missing_transcript")
            .await;
    assert!(msg.contains("no transcript"), "{msg}");

    let silent = upload_untranscribed(&server, &key, 1.2).await["id"].as_i64().unwrap();
    let got = stt.next_job().await;
    stt.transcript(&got.job, " ", "en").await;
    eventually(async || voice_json(&server, &key, silent).await["transcript_status"] == "failed")
        .await;
    let voice = voice_json(&server, &key, silent).await;
    assert_eq!(voice["transcript"], Value::Null);
    assert!(voice["transcript_error"].as_str().unwrap().contains("no speech"), "{voice}");
}

async fn the_openai_endpoint_answers_json_or_text(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut jobs =
        ScriptedNode::connect_with(&server.ws_url(), "stt", 2, vec![stt_model(STT)]).await.serve(0);

    let res = transcribe(&server, &key, 2.0, &[("model", "whisper-1")]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-language"], "en");
    let body: Value = res.json().await.unwrap();
    let job = jobs.recv().await.unwrap().job;
    assert_eq!(body, json!({"text": heard(&job)}));

    let res = transcribe(
        &server,
        &key,
        1.0,
        &[("model", STT), ("language", "DE"), ("response_format", "text"), ("temperature", "0")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = res.text().await.unwrap();
    let job = jobs.recv().await.unwrap().job;
    let Task::Transcription(task) = &job.task else { panic!("not a transcription") };
    assert_eq!(task.language.as_deref(), Some("de"));
    assert_eq!(text, heard(&job));

    let (_, history) = server.get_json(&key, "/v1/history?limit=1").await;
    assert_eq!(history["data"][0]["input"], "audio file talk.wav");
    assert_eq!(history["data"][0]["transcript"], text);
}

async fn the_openai_endpoint_refuses_bad_input_with_the_spec_types(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let msg = expect_error(transcribe(&server, &key, 1.0, &[]).await, 404, "no_provider").await;
    assert!(msg.contains("transcription"), "{msg}");
    let _dia = ScriptedNode::connect(&server.ws_url(), "dia", 4).await.serve(10);
    expect_error(transcribe(&server, &key, 1.0, &[]).await, 404, "no_provider").await;
    let _stt =
        ScriptedNode::connect_with(&server.ws_url(), "stt", 2, vec![stt_model(STT)]).await.serve(0);

    // A speech model is no transcription model.
    expect_error(transcribe(&server, &key, 1.0, &[("model", MODEL)]).await, 400, "unknown_model")
        .await;
    let msg = expect_error(
        transcribe(&server, &key, 1.0, &[("language", "xx")]).await,
        400,
        "invalid_parameter",
    )
    .await;
    assert!(msg.contains("`language`") && msg.contains("en, de"), "{msg}");
    for (field, value) in [
        ("response_format", "srt"),
        ("temperature", "2"),
        ("temperature", "warm"),
        ("prompt", "Hi"),
    ] {
        let msg = expect_error(
            transcribe(&server, &key, 1.0, &[(field, value)]).await,
            400,
            "invalid_parameter",
        )
        .await;
        assert!(msg.contains(field), "{field}: {msg}");
    }
    let no_file = reqwest::multipart::Form::new().text("model", "whisper-1");
    let res = server
        .http
        .post(server.url("/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .multipart(no_file)
        .send()
        .await
        .unwrap();
    assert!(expect_error(res, 400, "invalid_parameter").await.contains("`file`"));
    let garbage = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(vec![7u8; 4000]).file_name("x.wav"));
    let res = server
        .http
        .post(server.url("/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .multipart(garbage)
        .send()
        .await
        .unwrap();
    expect_error(res, 400, "audio_decode_failed").await;
    let res = server
        .http
        .post(server.url("/v1/audio/transcriptions"))
        .multipart(reqwest::multipart::Form::new())
        .send()
        .await
        .unwrap();
    expect_error(res, 401, "missing_api_key").await;
}

async fn answers_that_do_not_fit_the_job_fail_over_to_another_node(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut liar = ScriptedNode::connect_with(
        &server.ws_url(),
        "liar",
        8,
        vec![stt_model(STT), cloning_model(MODEL)],
    )
    .await;

    // A transcription answered with audio, then without its text, then with a huge text: each
    // attempt fails and the request goes back to the queue until its attempts run out.
    let pending = tokio::spawn({
        let (http, url, key) =
            (server.http.clone(), server.url("/v1/audio/transcriptions"), key.clone());
        async move {
            let form = reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(wav(1.0)).file_name("a.wav"));
            http.post(url).bearer_auth(key).multipart(form).send().await.unwrap()
        }
    });
    let first = liar.next_job().await.job;
    liar.audio(&first, 0, &[1, 2, 3]).await;
    let stop = liar.next_control().await;
    assert_eq!(stop, Some(ControlToNode::Cancel { request_id: first.request_id }));
    let second = liar.next_job().await.job;
    assert_eq!(second.attempt, 2);
    let done = proto::NodeToControl::Finished(proto::Finished {
        request_id: second.request_id,
        attempt: 2,
        samples: 0,
        inference_seconds: 0.1,
        transcript: None,
    });
    liar.raw(tokio_tungstenite::tungstenite::Message::text(serde_json::to_string(&done).unwrap()))
        .await;
    let third = liar.next_job().await.job;
    liar.transcript(&third, &"a".repeat(proto::transcription::MAX_TRANSCRIPT_BYTES + 1), "en")
        .await;
    let msg = expect_error(pending.await.unwrap(), 502, "upstream_error").await;
    assert!(msg.contains("all 3 attempts failed"), "{msg}");
    let id = third.request_id.to_string();
    let attempts = server.state.db.attempts(&id).await.unwrap();
    let errors: Vec<String> =
        attempts.iter().map(|a| a.error_message.clone().unwrap_or_default()).collect();
    assert!(errors[0].contains("more audio"), "{errors:?}");
    assert!(errors[1].contains("without its text"), "{errors:?}");
    assert!(errors[2].contains("bytes"), "{errors:?}");

    // A generation answered with a transcript fails over too.
    let gen = server.spawn_generate(&key, json!({"input": "[S1] Hi."}));
    let speech = liar.next_job().await.job;
    liar.transcript(&speech, "I am no audio.", "en").await;
    let retry = liar.next_job().await.job;
    assert_eq!((retry.request_id, retry.attempt), (speech.request_id, 2));
    liar.complete(&retry, &common::node::tone(100)).await;
    assert_eq!(gen.await.unwrap().status(), 200);
    let attempts = server.state.db.attempts(&speech.request_id.to_string()).await.unwrap();
    assert!(attempts[0].error_message.as_deref().unwrap().contains("transcript for a generation"));
}

async fn a_transcription_fails_over_when_its_node_leaves(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut first =
        ScriptedNode::connect_with(&server.ws_url(), "stt-a", 1, vec![stt_model(STT)]).await;
    let voice = upload_untranscribed(&server, &key, 1.0).await["id"].as_i64().unwrap();
    let got = first.next_job().await;
    assert!(matches!(got.job.task, Task::Transcription(_)));
    drop(first);
    let mut second =
        ScriptedNode::connect_with(&server.ws_url(), "stt-b", 1, vec![stt_model(STT)]).await;
    let retry = second.next_job().await;
    assert_eq!((retry.job.request_id, retry.job.attempt), (got.job.request_id, 2));
    second.transcript(&retry.job, "Second time lucky.", "en").await;
    eventually(async || {
        voice_json(&server, &key, voice).await["transcript"] == "Second time lucky."
    })
    .await;
    let attempts = server.state.db.attempts(&got.job.request_id.to_string()).await.unwrap();
    assert_eq!(attempts[0].outcome, control_plane::db::requests::AttemptOutcome::NodeLost);
}

on_both_backends!(
    without_a_transcription_node_a_sample_stays_unavailable_and_cannot_clone,
    an_upload_without_transcript_is_transcribed_by_the_pool_and_then_clones,
    a_failed_transcription_says_why_and_silence_is_no_transcript,
    the_openai_endpoint_answers_json_or_text,
    the_openai_endpoint_refuses_bad_input_with_the_spec_types,
    answers_that_do_not_fit_the_job_fail_over_to_another_node,
    a_transcription_fails_over_when_its_node_leaves,
);
