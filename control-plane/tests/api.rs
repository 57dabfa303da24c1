//! The public API end to end: a real server, real HTTP, a scripted node over the real WebSocket.
//! Every test runs on SQLite and on PostgreSQL.

mod common;

use common::node::{cloning_model, tone, ScriptedNode, MODEL};
use common::{expect_error, read_wav, Backend, Server, TestDb};
use proto::{ControlToNode, ModelInfo, Task};
use serde_json::{json, Value};

fn speech(job: &proto::Job) -> &proto::SpeechTask {
    let Task::Speech(task) = &job.task else { panic!("not a speech job: {job:?}") };
    task
}

async fn the_spec_curl_example_returns_a_valid_wav(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let s1 = server.voice(&key, 1.0, Some("I am the host.")).await;
    let s2 = server.voice(&key, 1.5, Some("I am the guest.")).await;
    let mut jobs = ScriptedNode::connect(&server.ws_url(), "n1", 4).await.serve(44_100);
    let body = json!({
        "input": "[S1] Hello! Welcome to the show.\n[S2] Thanks for having me.",
        "speakers": {"S1": s1, "S2": s2}
    })
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dialogue.wav");
    let mut command = std::process::Command::new("curl");
    command
        .args(["-sS", "-D", "-", &server.url("/v1/voice/generations")])
        .args([
            "-H",
            &format!("Authorization: Bearer {key}"),
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", &body, "--output"])
        .arg(&out);
    let curl = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the curl binary runs");
    let headers = String::from_utf8_lossy(&curl.stdout).to_lowercase();
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(headers.contains("content-type: audio/wav"));
    assert!(headers.contains("x-seed: "));
    let (rate, channels, bits, samples) = read_wav(&std::fs::read(&out).unwrap());
    assert_eq!((rate, channels, bits), (44_100, 1, 16));
    assert_eq!(samples, tone(44_100));

    let received = jobs.recv().await.unwrap();
    let task = speech(&received.job);
    assert_eq!(task.text, "[S1] I am the host. [S2] I am the guest. [S1] Hello! Welcome to the show. [S2] Thanks for having me.");
    let prompt = received.prompt.expect("a voice prompt frame");
    let gap = (proto::speech::VOICE_GAP_SECONDS * 44_100.0) as u64;
    let announced = task.voice_prompt.as_ref().unwrap();
    assert_eq!(announced.samples, 44_100 + gap + 66_150);
    assert_eq!(prompt.payload.len() as u64, (44_100 + gap + 66_150) * 4);
    assert_eq!(prompt.header.request_id, received.job.request_id);
    assert_eq!(announced.sha256, proto::sha256_hex(&prompt.payload));
}

async fn voice_prompts_travel_by_reference_and_only_when_a_node_asks(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let s1 = server.voice(&key, 1.0, Some("I am the host.")).await;
    let mut node = ScriptedNode::connect(&server.ws_url(), "cached", 4).await;
    let body = json!({"input": "[S1] Hi.", "speakers": {"S1": s1}});

    // Asked for: one frame, whose hash is the one announced; asking twice gets nothing more.
    let first = server.spawn_generate(&key, body.clone());
    let got = node.next_job().await;
    let hash = speech(&got.job).voice_prompt.as_ref().unwrap().sha256.clone();
    assert_eq!(proto::sha256_hex(&got.prompt.unwrap().payload), hash);
    node.need_voice_prompt(&got.job).await;
    node.complete(&got.job, &tone(10)).await;
    assert_eq!(first.await.unwrap().status(), 200);
    // The same sample again, to a node holding its codes: same hash, no frame; and no request row
    // holds a copy of the sample's audio.
    let second = server.spawn_generate(&key, body.clone());
    let job = node.next_submit().await;
    assert_eq!(speech(&job).voice_prompt.as_ref().unwrap().sha256, hash);
    node.complete(&job, &tone(10)).await;
    assert_eq!(second.await.unwrap().status(), 200);
    let sql = "SELECT COUNT(*) FROM requests WHERE prompt_audio IS NOT NULL";
    let copies: i64 = match &server.state.db {
        control_plane::db::Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        control_plane::db::Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
    };
    assert_eq!(copies, 0);

    // A sample deleted before a node asks for it fails the request as the client's doing.
    let third = server.spawn_generate(&key, body);
    let job = node.next_submit().await;
    let res = server.http.delete(server.url(&format!("/v1/voices/{s1}"))).bearer_auth(&key).send();
    assert_eq!(res.await.unwrap().status(), 204);
    node.need_voice_prompt(&job).await;
    let msg = expect_error(third.await.unwrap(), 400, "invalid_voice_sample").await;
    assert!(msg.contains("deleted"), "{msg}");
    assert_eq!(
        node.next_control().await,
        Some(ControlToNode::Cancel { request_id: job.request_id })
    );
}

async fn parameters_reach_the_node_with_defaults_filled_in_and_the_seed_returned(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut jobs = ScriptedNode::connect(&server.ws_url(), "n1", 4).await.serve(100);

    let res =
        server.generate(&key, json!({"input": "Just me.", "temperature": 1.0, "seed": 1234})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-seed"], "1234");
    let task = speech(&jobs.recv().await.unwrap().job).clone();
    assert_eq!(task.text, "[S1] Just me.");
    assert_eq!((task.seed, task.sampling.temperature, task.sampling.cfg_scale), (1234, 1.0, 3.0));
    assert_eq!(
        (
            task.sampling.top_p,
            task.sampling.cfg_filter_top_k,
            task.max_new_tokens,
            task.speed_factor
        ),
        (0.95, 45, 3072, 1.0)
    );
    assert!(task.voice_prompt.is_none());

    let res = server.generate(&key, json!({"input": "Again.", "seed": -1})).await;
    let seed: u64 = res.headers()["x-seed"].to_str().unwrap().parse().unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(speech(&jobs.recv().await.unwrap().job).seed, seed);
    let (_, item) = server.get_json(&key, &format!("/v1/history/{id}")).await;
    assert_eq!(item["seed"].as_u64(), Some(seed));
    assert_eq!(item["params"]["seed"].as_u64(), Some(seed));
}

async fn integral_json_numbers_are_accepted_where_an_integer_is_expected(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let voice = server.voice(&key, 1.0, Some("I am the host.")).await;
    let mut jobs = ScriptedNode::connect(&server.ws_url(), "n1", 4).await.serve(100);

    let body = json!({"input": "Hi", "max_new_tokens": 3072.0, "cfg_filter_top_k": 45.0,
        "seed": 7.0, "speakers": {"S1": voice as f64}});
    let res = server.generate(&key, body).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let received = jobs.recv().await.unwrap();
    let task = speech(&received.job);
    assert_eq!((task.max_new_tokens, task.sampling.cfg_filter_top_k, task.seed), (3072, 45, 7));
    assert!(received.prompt.is_some(), "the voice sample is cloned");

    let msg = expect_error(
        server.generate(&key, json!({"input": "Hi", "max_new_tokens": 3072.5})).await,
        400,
        "invalid_parameter",
    )
    .await;
    assert!(msg.contains("3072.5"), "{msg}");
}

async fn every_validation_error_has_its_type_status_and_a_precise_message(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let _jobs = ScriptedNode::connect(&server.ws_url(), "n1", 4).await.serve(100);

    expect_error(server.generate(&key, json!({"speakers": {}})).await, 400, "missing_input").await;
    let msg = expect_error(
        server.generate(&key, json!({"input": "[S2] Hi.\n[S1] Hey."})).await,
        400,
        "invalid_script",
    )
    .await;
    assert!(msg.contains("line 1"), "{msg}");
    let msg = expect_error(
        server.generate(&key, json!({"input": "[S1] A.\n[S2] B.\n[S3] C."})).await,
        400,
        "invalid_script",
    )
    .await;
    assert!(msg.contains("line 3") && msg.contains("[S3]"), "{msg}");
    let msg = expect_error(
        server.generate(&key, json!({"input": "Hi", "top_p": 0.01})).await,
        400,
        "invalid_parameter",
    )
    .await;
    assert_eq!(msg, "`top_p` must be a number from 0.1 to 1; got 0.01");
    let msg = expect_error(
        server.generate(&key, json!({"input": "Hi", "speed_factor": "fast"})).await,
        400,
        "invalid_parameter",
    )
    .await;
    assert!(
        msg.contains("`speed_factor`") && msg.contains("0.5 to 2") && msg.contains("\"fast\""),
        "{msg}"
    );
    expect_error(
        server.generate(&key, json!({"input": "x".repeat(1025)})).await,
        413,
        "request_too_large",
    )
    .await;
    let msg = expect_error(
        server.generate(&key, json!({"input": "Hi", "model": "nope"})).await,
        400,
        "unknown_model",
    )
    .await;
    assert!(msg.contains(MODEL), "{msg}");

    let bad_json = server
        .http
        .post(server.url("/v1/voice/generations"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"input\": ")
        .send()
        .await
        .unwrap();
    expect_error(bad_json, 400, "invalid_json").await;
    let no_key = server
        .http
        .post(server.url("/v1/voice/generations"))
        .json(&json!({"input": "Hi"}))
        .send()
        .await
        .unwrap();
    expect_error(no_key, 401, "missing_api_key").await;
    expect_error(
        server.generate("dia_wrong", json!({"input": "Hi"})).await,
        401,
        "invalid_api_key",
    )
    .await;
}

async fn malformed_queries_forms_paths_and_methods_get_the_json_envelope_too(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let http = &server.http;
    let get = |path: &str| http.get(server.url(path)).bearer_auth(&key).send();

    let msg =
        expect_error(get("/v1/history?limit=ten").await.unwrap(), 400, "invalid_parameter").await;
    assert!(msg.contains("limit"), "{msg}");
    expect_error(get("/v1/history?cursor=1&cursor=2").await.unwrap(), 400, "invalid_parameter")
        .await;
    // An API key is no node credential; a join token without a WebSocket handshake is no node.
    expect_error(get("/v1/nodes/connect").await.unwrap(), 401, "invalid_api_key").await;
    let join = http.get(server.url("/v1/nodes/connect")).bearer_auth(common::JOIN_TOKEN).send();
    expect_error(join.await.unwrap(), 400, "invalid_parameter").await;

    let upload = |content_type: &'static str, body: &'static str| {
        http.post(server.url("/v1/voices"))
            .bearer_auth(&key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let msg =
        expect_error(upload("multipart/form-data", "x").await.unwrap(), 400, "invalid_parameter")
            .await;
    assert!(msg.contains("boundary"), "{msg}");
    expect_error(upload("application/json", "{}").await.unwrap(), 400, "invalid_parameter").await;
    expect_error(
        upload("multipart/form-data; boundary=b", "--b\r\nbroken").await.unwrap(),
        400,
        "invalid_parameter",
    )
    .await;

    let msg = expect_error(get("/v1/nothing-here").await.unwrap(), 404, "not_found").await;
    assert!(msg.contains("/v1/nothing-here"), "{msg}");
    let res = http.delete(server.url("/v1/models")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.headers()["allow"], "GET,HEAD");
    expect_error(res, 405, "method_not_allowed").await;
}

async fn voice_sample_errors_are_reported_at_generation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let other_key = server.api_key().await;
    let _jobs = ScriptedNode::connect(&server.ws_url(), "n1", 4).await.serve(100);
    let mine_without_transcript = server.voice(&key, 1.0, None).await;
    let theirs = server.voice(&other_key, 1.0, Some("Not yours.")).await;
    let corrupt = server.voice(&key, 1.0, Some("Broken.")).await;
    sqlx_exec(
        &server,
        &format!("UPDATE voices SET pcm = {} WHERE id = {corrupt}", blob_literal(&server)),
    )
    .await;

    let gen = |s: Value| server.generate(&key, json!({"input": "[S1] Hi.", "speakers": {"S1": s}}));
    // Anything but the id of one of the caller's samples.
    for bad in
        [json!(999_999), json!(theirs), json!(-3), json!(0), json!(1.5), json!("12"), json!([1])]
    {
        let msg = expect_error(gen(bad.clone()).await, 400, "invalid_voice_sample").await;
        assert!(msg.contains("`speakers.S1`"), "{bad}: {msg}");
    }
    let gen = |s: i64| gen(json!(s));
    expect_error(gen(mine_without_transcript).await, 400, "missing_transcript").await;
    expect_error(gen(corrupt).await, 400, "audio_decode_failed").await;

    // Script and transcript fit the character limit alone, not the model's window together.
    let wordy = server.voice(&key, 1.0, Some(&"la ".repeat(300))).await;
    let script = format!("[S1] {}", "é".repeat(100));
    let res = server.generate(&key, json!({"input": script, "speakers": {"S1": wordy}})).await;
    let msg = expect_error(res, 413, "request_too_large").await;
    assert!(msg.contains("text tokens") && msg.contains("at most 1024"), "{msg}");
}

async fn a_voice_samples_transcript_obeys_the_script_rules(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut jobs = ScriptedNode::connect(&server.ws_url(), "n1", 4).await.serve(100);

    let res = server.upload(&key, common::wav(1.0), "Ann", Some("[S1] Hello [S3] there.")).await;
    let msg = expect_error(res, 400, "invalid_script").await;
    assert!(msg.starts_with("`transcript`: line 1") && msg.contains("[S3]"), "{msg}");
    let res = server.upload(&key, common::wav(1.0), "Ann", Some("[S2] Me first.")).await;
    expect_error(res, 400, "invalid_script").await;
    let (_, list) = server.get_json(&key, "/v1/voices").await;
    assert_eq!(list["data"], json!([]));

    let voice = server.voice(&key, 1.0, Some("[S1] A prompt.")).await;
    let patch = server
        .http
        .patch(server.url(&format!("/v1/voices/{voice}")))
        .bearer_auth(&key)
        .json(&json!({"transcript": "Fine. [S4] Not fine."}))
        .send()
        .await
        .unwrap();
    expect_error(patch, 400, "invalid_script").await;
    let (_, stored) = server.get_json(&key, &format!("/v1/voices/{voice}")).await;
    assert_eq!(stored["transcript"], "[S1] A prompt.");

    // The transcript's words are the cloned speaker's, under that speaker's tag only.
    let body = json!({"input": "[S1] Hi. [S2] Hello.", "speakers": {"S2": voice}});
    assert_eq!(server.generate(&key, body.clone()).await.status(), 200);
    let text = speech(&jobs.recv().await.unwrap().job).text.clone();
    assert_eq!(text, "[S2] A prompt. [S1] Hi. [S2] Hello.");

    // A transcript stored before the rule existed is refused at generation, before any node.
    sqlx_exec(
        &server,
        &format!("UPDATE voices SET transcript = '[S1] Hi [S3] there' WHERE id = {voice}"),
    )
    .await;
    let msg = expect_error(server.generate(&key, body).await, 400, "invalid_script").await;
    assert!(msg.contains("`speakers.S2`") && msg.contains("[S3]"), "{msg}");
    assert!(jobs.try_recv().is_err(), "a job reached the node");
}

/// Three bytes: not a whole number of f32 samples.
fn blob_literal(server: &Server) -> &'static str {
    match server.state.db {
        control_plane::db::Db::Sqlite(_) => "x'010203'",
        control_plane::db::Db::Postgres(_) => "'\\x010203'::bytea",
    }
}

async fn sqlx_exec(server: &Server, sql: &str) {
    match &server.state.db {
        control_plane::db::Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
        control_plane::db::Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .unwrap();
}

async fn no_provider_when_no_node_offers_voice_cloning(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    expect_error(server.generate(&key, json!({"input": "Hi"})).await, 404, "no_provider").await;
    let stt = ModelInfo {
        id: "whisper".into(),
        features: vec!["transcription".into()],
        max_input_chars: 0,
        max_new_tokens: 0,
        max_frames: 0,
        languages: vec!["en".into()],
    };
    let _stt = ScriptedNode::connect_with(&server.ws_url(), "stt", 4, vec![stt]).await;
    expect_error(server.generate(&key, json!({"input": "Hi"})).await, 404, "no_provider").await;
}

async fn a_known_model_without_an_online_node_is_no_provider_and_an_unknown_one_unknown_model(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let gen = |model: &'static str| server.generate(&key, json!({"input": "Hi", "model": model}));
    expect_error(gen("dia-other").await, 400, "unknown_model").await;

    let stt = ModelInfo {
        id: "whisper".into(),
        features: vec!["transcription".into()],
        max_input_chars: 0,
        max_new_tokens: 0,
        max_frames: 0,
        languages: vec!["en".into()],
    };
    let gone = ScriptedNode::connect_with(
        &server.ws_url(),
        "gone",
        4,
        vec![cloning_model("dia-other"), stt],
    )
    .await;
    drop(gone);
    common::eventually(async || {
        let (_, models) = server.get_json(&key, "/v1/models").await;
        models["data"] == json!([])
    })
    .await;
    let msg = expect_error(gen("dia-other").await, 404, "no_provider").await;
    assert!(msg.contains("dia-other"), "{msg}");

    let _dia = ScriptedNode::connect(&server.ws_url(), "dia", 4).await.serve(10);
    expect_error(gen("dia-other").await, 404, "no_provider").await;
    let msg = expect_error(gen("never-offered").await, 400, "unknown_model").await;
    assert!(msg.contains(MODEL) && msg.contains("never-offered"), "{msg}");
    // Offered, but never with the feature this endpoint needs.
    expect_error(gen("whisper").await, 400, "unknown_model").await;
    assert_eq!(gen(MODEL).await.status(), 200);
}

async fn requests_are_routed_only_to_nodes_with_the_feature_and_model(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let stt = ModelInfo {
        id: "whisper".into(),
        features: vec!["transcription".into()],
        max_input_chars: 0,
        max_new_tokens: 0,
        max_frames: 0,
        languages: vec!["en".into()],
    };
    let _stt_node = ScriptedNode::connect_with(&server.ws_url(), "stt", 8, vec![stt]).await;
    let mut other =
        ScriptedNode::connect_with(&server.ws_url(), "other", 8, vec![cloning_model("dia-other")])
            .await
            .serve(10);
    let mut dia = ScriptedNode::connect(&server.ws_url(), "dia", 1).await.serve(10);

    let (_, models) = server.get_json(&key, "/v1/models").await;
    let ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["dia-other", "dia-test", "whisper"]);
    assert_eq!(models["data"][1]["features"], json!(["voice-cloning"]));

    for _ in 0..3 {
        let res = server.generate(&key, json!({"input": "Hi", "model": MODEL})).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-node-id"], "dia");
        assert_eq!(dia.recv().await.unwrap().job.model, MODEL);
    }
    let res = server.generate(&key, json!({"input": "Hi", "model": "dia-other"})).await;
    assert_eq!(res.headers()["x-node-id"], "other");
    assert_eq!(other.recv().await.unwrap().job.model, "dia-other");
}

async fn the_voice_library_is_per_account_with_one_default(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let other = server.api_key().await;
    let a = server.voice(&key, 1.2, Some("One.")).await;
    let b = server.voice(&key, 1.2, None).await;
    let theirs = server.voice(&other, 1.2, None).await;

    let (status, list) = server.get_json(&key, "/v1/voices").await;
    assert_eq!(status, 200);
    let ids: Vec<i64> =
        list["data"].as_array().unwrap().iter().map(|v| v["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [a, b]);
    assert_eq!(list["data"][0]["format"], "wav");
    assert!((list["data"][0]["duration_seconds"].as_f64().unwrap() - 1.2).abs() < 0.01);

    let patch = |id: i64, body: Value| {
        server
            .http
            .patch(server.url(&format!("/v1/voices/{id}")))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let res = patch(a, json!({"is_default": true, "speaker_name": "Host"})).await.unwrap();
    assert_eq!(res.status(), 200);
    patch(b, json!({"is_default": true, "transcript": "Two."})).await.unwrap();
    let (_, list) = server.get_json(&key, "/v1/voices").await;
    let defaults: Vec<bool> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["is_default"].as_bool().unwrap())
        .collect();
    assert_eq!(defaults, [false, true]);
    assert_eq!(list["data"][0]["speaker_name"], "Host");
    assert_eq!(list["data"][1]["transcript"], "Two.");
    let res = patch(b, json!({"transcript": null})).await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["transcript"], Value::Null);

    let audio = server
        .http
        .get(server.url(&format!("/v1/voices/{a}/audio")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(audio.headers()["content-type"], "audio/wav");
    assert_eq!(audio.bytes().await.unwrap().to_vec(), common::wav(1.2));

    // Another account's sample is invisible: not listed, not fetched, not changed, not deleted.
    expect_error(
        server
            .http
            .get(server.url(&format!("/v1/voices/{theirs}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(patch(theirs, json!({"speaker_name": "Mine"})).await.unwrap(), 404, "not_found")
        .await;
    let del = |id: i64| {
        server.http.delete(server.url(&format!("/v1/voices/{id}"))).bearer_auth(&key).send()
    };
    expect_error(del(theirs).await.unwrap(), 404, "not_found").await;
    let (status, body) = server.get_json(&key, "/v1/voices/not-a-number").await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("invalid_parameter")),
        "{body}"
    );
    assert_eq!(del(a).await.unwrap().status(), 204);
    let (_, list) = server.get_json(&key, "/v1/voices").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (_, theirs_list) = server.get_json(&other, "/v1/voices").await;
    assert_eq!(theirs_list["data"][0]["id"].as_i64(), Some(theirs));
}

async fn defaults(server: &Server, key: &str) -> Vec<i64> {
    let (_, list) = server.get_json(key, "/v1/voices").await;
    let voices = list["data"].as_array().unwrap().iter();
    voices.filter(|v| v["is_default"] == true).map(|v| v["id"].as_i64().unwrap()).collect()
}

async fn patching_a_missing_sample_as_default_keeps_the_current_default(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let other = server.api_key().await;
    let mine = server.voice(&key, 1.0, Some("Mine.")).await;
    let theirs = server.voice(&other, 1.0, Some("Theirs.")).await;
    let patch = |id: i64| {
        server
            .http
            .patch(server.url(&format!("/v1/voices/{id}")))
            .bearer_auth(&key)
            .json(&json!({"is_default": true}))
            .send()
    };
    assert_eq!(patch(mine).await.unwrap().status(), 200);
    expect_error(patch(999_999).await.unwrap(), 404, "not_found").await;
    expect_error(patch(theirs).await.unwrap(), 404, "not_found").await;
    assert_eq!(defaults(&server, &key).await, [mine]);
}

async fn is_default_in_an_upload_form_reads_as_clients_write_booleans(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let upload = |flag: &'static str| {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(common::wav(1.0)).file_name("a.wav"))
            .text("speaker_name", "Ann")
            .text("is_default", flag);
        server.http.post(server.url("/v1/voices")).bearer_auth(&key).multipart(form).send()
    };
    for (flag, expected) in [("True", true), ("false", false), ("1", true), (" FALSE ", false)] {
        let res = upload(flag).await.unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(res.json::<Value>().await.unwrap()["is_default"], expected, "{flag}");
    }
    let msg = expect_error(upload("maybe").await.unwrap(), 400, "invalid_parameter").await;
    assert!(msg.contains("`is_default`") && msg.contains("maybe"), "{msg}");
}

async fn simultaneous_default_uploads_and_patches_leave_exactly_one_default(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let uploads = (0..8).map(|i| {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(common::wav(1.0)).file_name("a.wav"))
            .text("speaker_name", format!("Voice {i}"))
            .text("is_default", "true");
        server.http.post(server.url("/v1/voices")).bearer_auth(&key).multipart(form).send()
    });
    let mut ids = Vec::new();
    for res in futures_util::future::join_all(uploads).await {
        let res = res.unwrap();
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        ids.push(res.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
    }
    assert_eq!(defaults(&server, &key).await.len(), 1);

    let patches = ids.iter().map(|id| {
        server
            .http
            .patch(server.url(&format!("/v1/voices/{id}")))
            .bearer_auth(&key)
            .json(&json!({"is_default": true}))
            .send()
    });
    for res in futures_util::future::join_all(patches).await {
        let res = res.unwrap();
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
    }
    assert_eq!(defaults(&server, &key).await.len(), 1);
}

async fn undecodable_or_oversized_uploads_get_clear_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.max_voice_seconds = 1.0;
    config.max_voice_bytes = 200_000;
    let server = Server::start_with(config).await;
    let key = server.api_key().await;
    expect_error(
        server.upload(&key, b"definitely not audio".to_vec(), "x", None).await,
        400,
        "audio_decode_failed",
    )
    .await;
    expect_error(server.upload(&key, common::wav(1.5), "x", None).await, 400, "audio_too_long")
        .await;
    let msg = expect_error(
        server.upload(&key, common::wav(0.5), "x", None).await,
        400,
        "audio_too_short",
    )
    .await;
    assert!(msg.contains("0.50 s") && msg.contains("at least 1 s"), "{msg}");
    expect_error(server.upload(&key, vec![0; 300_000], "x", None).await, 413, "request_too_large")
        .await;
    let (_, list) = server.get_json(&key, "/v1/voices").await;
    assert_eq!(list["data"], json!([]));
}

async fn history_lists_newest_first_pages_filters_and_serves_audio(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let other = server.api_key().await;
    let _jobs = ScriptedNode::connect(&server.ws_url(), "n1", 4).await.serve(441);
    let mut ids = Vec::new();
    for i in 0..3 {
        let res = server.generate(&key, json!({"input": format!("Number {i}."), "visibility": "public", "collection": "c1"})).await;
        ids.push(res.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    server.generate(&other, json!({"input": "Not in your history."})).await;
    let res = server.generate(&key, json!({"input": "Elsewhere.", "collection": "c2"})).await;
    let private = res.headers()["x-request-id"].to_str().unwrap().to_owned();

    // Filters by collection and visibility.
    let listed = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().into()).collect()
    };
    let (_, c1) = server.get_json(&key, "/v1/history?collection=c1").await;
    assert_eq!(listed(&c1), [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    let (_, c2) = server.get_json(&key, "/v1/history?collection=c2").await;
    assert_eq!(listed(&c2), [private.as_str()]);
    let (_, mine) = server.get_json(&key, "/v1/history?visibility=private").await;
    assert_eq!(listed(&mine), [private.as_str()]);
    let (_, both) = server.get_json(&key, "/v1/history?visibility=public&collection=c2").await;
    assert_eq!(both["data"], json!([]));
    let res = server.http.get(server.url("/v1/history?visibility=secret")).bearer_auth(&key);
    expect_error(res.send().await.unwrap(), 400, "invalid_parameter").await;

    let (_, page) = server.get_json(&key, "/v1/history?limit=2&collection=c1").await;
    let got: Vec<&str> =
        page["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = page["next_cursor"].as_i64().unwrap();
    let (_, page2) =
        server.get_json(&key, &format!("/v1/history?limit=2&collection=c1&cursor={cursor}")).await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 1);
    assert_eq!(page2["data"][0]["id"], ids[0].as_str());
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, failed) = server.get_json(&key, "/v1/history?status=failed").await;
    assert_eq!(failed["data"], json!([]));

    let (_, item) = server.get_json(&key, &format!("/v1/history/{}", ids[0])).await;
    assert_eq!(
        (item["status"].as_str(), item["visibility"].as_str(), item["collection"].as_str()),
        (Some("succeeded"), Some("public"), Some("c1"))
    );
    assert_eq!(item["input"], "Number 0.");
    assert_eq!(item["node_id"], "n1");
    assert_eq!(item["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(item["attempts"][0]["outcome"], "succeeded");
    let wav = server
        .http
        .get(server.url(item["audio_url"].as_str().unwrap()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(read_wav(&wav).3.len(), 441);
    let (status, _) = server.get_json(&other, &format!("/v1/history/{}", ids[0])).await;
    assert_eq!(status, 404);
}

async fn the_owner_cancels_a_running_request_and_its_node_is_told(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let (key, other) = (server.api_key().await, server.api_key().await);
    let mut node = ScriptedNode::connect(&server.ws_url(), "n1", 1).await;
    let request = server.spawn_generate(&key, json!({"input": "[S1] Stop me."}));
    let job = node.next_job().await.job;
    let cancel = |who: &str| {
        let url = server.url(&format!("/v1/history/{}/cancel", job.request_id));
        server.http.post(url).bearer_auth(who.to_owned()).send()
    };
    assert_eq!(cancel(&other).await.unwrap().status(), 404, "not another account's request");
    let item: Value = cancel(&key).await.unwrap().json().await.unwrap();
    assert_eq!(
        (item["status"].as_str(), item["error"]["type"].as_str()),
        (Some("failed"), Some("cancelled"))
    );
    match node.next_control().await {
        Some(ControlToNode::Cancel { request_id }) => assert_eq!(request_id, job.request_id),
        other => panic!("expected the node told to cancel, got {other:?}"),
    }
    let res = request.await.unwrap();
    assert!(res.status().is_client_error(), "the waiting client hears of it: {}", res.status());
    // An ended request is returned as it is.
    let again: Value = cancel(&key).await.unwrap().json().await.unwrap();
    assert_eq!(again["status"], "failed");
    assert_eq!(again["attempts"], item["attempts"]);
}

on_both_backends!(
    voice_prompts_travel_by_reference_and_only_when_a_node_asks,
    the_owner_cancels_a_running_request_and_its_node_is_told,
    the_spec_curl_example_returns_a_valid_wav,
    parameters_reach_the_node_with_defaults_filled_in_and_the_seed_returned,
    integral_json_numbers_are_accepted_where_an_integer_is_expected,
    every_validation_error_has_its_type_status_and_a_precise_message,
    malformed_queries_forms_paths_and_methods_get_the_json_envelope_too,
    voice_sample_errors_are_reported_at_generation,
    a_voice_samples_transcript_obeys_the_script_rules,
    no_provider_when_no_node_offers_voice_cloning,
    a_known_model_without_an_online_node_is_no_provider_and_an_unknown_one_unknown_model,
    requests_are_routed_only_to_nodes_with_the_feature_and_model,
    the_voice_library_is_per_account_with_one_default,
    patching_a_missing_sample_as_default_keeps_the_current_default,
    is_default_in_an_upload_form_reads_as_clients_write_booleans,
    simultaneous_default_uploads_and_patches_leave_exactly_one_default,
    undecodable_or_oversized_uploads_get_clear_errors,
    history_lists_newest_first_pages_filters_and_serves_audio,
);
