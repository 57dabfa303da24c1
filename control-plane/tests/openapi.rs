//! The served OpenAPI document, as a validator and a client generator read it, and the reference
//! page a browser renders from it.
//! Every test runs on SQLite and on PostgreSQL.

mod common;

use common::{Backend, Server, TestDb};
use serde_json::{json, Value};
use std::path::PathBuf;

/// A tool installed into the project's virtual environment by `scripts/setup.sh`.
fn venv_tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin").join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

async fn served_document(server: &Server) -> Value {
    let res = server.http.get(server.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn the_served_document_passes_the_openapi_validator(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let doc = served_document(&server).await;
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let mut validator = std::process::Command::new(venv_tool("openapi-spec-validator"));
    validator.args(["--validation-errors", "all"]).arg(&file);
    let run = tokio::task::spawn_blocking(move || validator.output()).await.unwrap().unwrap();
    let report =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && report.contains(": OK"), "{report}");
}

async fn every_operation_is_named_and_every_error_uses_the_envelope(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let doc = served_document(&server).await;
    let envelope = json!({"$ref": "#/components/schemas/ErrorBody"});
    let mut ids = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(id.contains('_'), "{method} {path}: operation id {id:?} is not descriptive");
            ids.push(id.to_owned());
            for name in path.split('{').skip(1).map(|s| s.split('}').next().unwrap()) {
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true);
                assert!(declared, "{method} {path}: path parameter `{name}` is not declared");
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("500"), "{method} {path}: no 500");
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
            for (status, response) in responses.iter().filter(|(s, _)| s.as_str() >= "400") {
                assert_eq!(
                    response["content"]["application/json"]["schema"], envelope,
                    "{method} {path} {status}"
                );
                assert!(!response["description"].as_str().unwrap().is_empty());
            }
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids repeat");
    assert_eq!(count, 19);
    let admin = &doc["paths"]["/v1/admin/accounts"]["post"]["responses"]["401"];
    assert_eq!(admin["description"], "invalid_admin_token");
    let detail = &doc["components"]["schemas"]["ErrorDetail"];
    assert_eq!(detail["required"], json!(["type", "message"]));
}

async fn the_generation_operation_carries_the_specs_example(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let doc = served_document(&server).await;
    let op = &doc["paths"]["/v1/voice/generations"]["post"];
    assert_eq!(op["operationId"], "create_voice_generation");
    let body = &op["requestBody"]["content"]["application/json"];
    assert_eq!(
        body["example"],
        json!({
            "input": "[S1] Hello! Welcome to the show.\n[S2] Thanks for having me.",
            "speakers": {"S1": 12, "S2": 17}
        })
    );
    let schema = &doc["components"]["schemas"]["SpeechRequest"];
    assert_eq!(schema["required"], json!(["input"]));
    assert_eq!(
        (
            &schema["properties"]["max_new_tokens"]["minimum"],
            &schema["properties"]["max_new_tokens"]["maximum"]
        ),
        (&json!(256), &json!(4096))
    );
    let defaults = ["cfg_scale", "temperature", "top_p", "cfg_filter_top_k", "max_new_tokens"]
        .map(|p| schema["properties"][p]["default"].clone());
    assert_eq!(defaults, [json!(3.0), json!(1.8), json!(0.95), json!(45), json!(3072)]);
    assert!(op["responses"]["200"]["content"]["audio/wav"].is_object());
}

async fn the_model_schema_shows_every_routing_bound_and_nothing_internal(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let doc = served_document(&server).await;
    let model = &doc["components"]["schemas"]["Model"];
    for bound in ["max_input_chars", "max_new_tokens", "max_frames"] {
        assert_eq!(model["properties"][bound]["type"], "integer", "{bound}: {model}");
        assert!(model["required"].as_array().unwrap().contains(&json!(bound)), "{bound}: {model}");
    }
    assert!(model["properties"].get("offers").is_none(), "{model}");
}

/// The page as headless Chromium renders it, scripts run.
fn rendered_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        // Without these it waits on the network for updates and sync, which is closed here.
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", "--virtual-time-budget=10000", url])
        .output()
        .expect("chromium runs (scripts/system-packages.txt installs it)");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    String::from_utf8(run.stdout).unwrap()
}

async fn the_reference_page_renders_every_operation_in_a_browser(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let page = server.http.get(server.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    let html = page.text().await.unwrap();
    for link in html.split(['"', '\'']).filter(|s| s.ends_with(".js") || s.ends_with(".css")) {
        assert!(link.starts_with("/docs/"), "{link} is not served by the control plane");
        let res = server.http.get(server.url(link)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{link}");
    }

    let url = server.url("/docs");
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url)).await.unwrap();
    let doc = served_document(&server).await;
    let mut rendered = 0;
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap();
            // Only Swagger UI's rendering of the document writes this element.
            let element = format!("<span class=\"opblock-summary-operation-id\">{id}</span>");
            assert!(dom.contains(&element), "{id} is not on the rendered page:\n{dom}");
            rendered += 1;
        }
    }
    assert_eq!(rendered, 19);
    assert!(dom.contains("Dia text-to-dialogue provider"));
}

on_both_backends!(
    the_served_document_passes_the_openapi_validator,
    every_operation_is_named_and_every_error_uses_the_envelope,
    the_generation_operation_carries_the_specs_example,
    the_model_schema_shows_every_routing_bound_and_nothing_internal,
    the_reference_page_renders_every_operation_in_a_browser,
);
