//! The hub download path against a local server that answers like huggingface.co
//! (`/{repo}/resolve/{revision}/{file}` with etag, commit and range headers): no hub is
//! reachable from here, so this is how the real download code gets exercised.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::{dac_dir, dia_dir, write_whisper_transformers_folder};
use models::dac::Dac;
use models::dia::DiaModel;
use models::whisper::Whisper;
use models::{hub, ModelError};
use tch::{Device, Kind};

/// A file the server offers: repo, file name, path on disk.
type Served = (&'static str, &'static str, PathBuf);

/// Serves `files` at any revision and records every requested path.
fn serve(files: Vec<Served>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut start = 0usize;
            let mut single_byte = false;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(range) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let range = range.trim();
                    single_byte = range == "0-0";
                    start =
                        range.trim_end_matches('-').split('-').next().unwrap().parse().unwrap_or(0);
                }
            }
            log.lock().unwrap().push(path.clone());
            let body = files
                .iter()
                .find(|(repo, name, _)| {
                    path.starts_with(&format!("/{repo}/resolve/"))
                        && path.ends_with(&format!("/{name}"))
                })
                .map(|(_, _, file)| std::fs::read(file).unwrap());
            let response = match body {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
                Some(bytes) => {
                    let end = if single_byte { 1 } else { bytes.len() };
                    let part = &bytes[start..end];
                    let mut head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\
                         ETag: \"etag-{}\"\r\nX-Repo-Commit: {}\r\nConnection: close\r\n\r\n",
                        part.len(),
                        end.max(1) - 1,
                        bytes.len(),
                        path.replace('/', "-"),
                        hub::DIA_REVISION,
                    )
                    .into_bytes();
                    head.extend_from_slice(part);
                    head
                }
            };
            let _ = stream.write_all(&response);
        }
    });
    (endpoint, seen)
}

fn repo_files(repo: &'static str, dir: PathBuf, names: &[&'static str]) -> Vec<Served> {
    names.iter().map(|&n| (repo, n, dir.join(n))).collect()
}

#[test]
fn pinned_checkpoints_download_from_a_hub_and_load() {
    let mut files = repo_files(
        hub::DIA_REPO,
        dia_dir(),
        &[
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ],
    );
    files.extend(repo_files(hub::DAC_REPO, dac_dir(), &["config.json", "model.safetensors"]));
    let (endpoint, seen) = serve(files);
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", &endpoint);
    std::env::set_var("HF_HOME", cache.path());

    let dia = hub::dia_weights(hub::DIA_REPO).expect("Dia downloads");
    DiaModel::load(&dia, Device::Cpu, Kind::Float).expect("downloaded Dia loads");
    let dac = hub::dac_weights(hub::DAC_REPO).expect("DAC downloads");
    Dac::load(&dac, Device::Cpu).expect("downloaded DAC loads");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|p| p.contains(&format!("/resolve/{}/model-00002-of-00002", hub::DIA_REVISION))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| p.contains(&format!("/resolve/{}/model.safetensors", hub::DAC_REVISION))),
        "{seen:?}"
    );

    // A local folder is used as it is, without the hub.
    assert_eq!(hub::dia_weights(dia_dir().to_str().unwrap()).unwrap(), dia_dir());
    // A repo the hub does not have is a download error naming it.
    match hub::dia_weights("nobody/missing") {
        Err(ModelError::Download { repo, .. }) => assert_eq!(repo, "nobody/missing@main"),
        other => panic!("expected a download error, got {other:?}"),
    }

    // What is in the cache is found without the hub; what is not, with no hub to ask, says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    std::env::set_var("HF_ENDPOINT", format!("http://{closed}"));
    assert_eq!(hub::dia_weights(hub::DIA_REPO).unwrap(), dia);
    match hub::dia_weights(&format!("{}@main", hub::DIA_REPO)) {
        Err(ModelError::HubUnreachable { repo, .. }) => {
            assert_eq!(repo, format!("{}@main", hub::DIA_REPO))
        }
        other => panic!("expected an unreachable hub, got {other:?}"),
    }
}

#[test]
fn whisper_downloads_from_a_hub_at_its_pinned_revision_and_loads() {
    let folder = tempfile::tempdir().unwrap();
    write_whisper_transformers_folder(folder.path());
    let names = ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors"];
    let (endpoint, seen) = serve(repo_files(hub::WHISPER_REPO, folder.path().to_owned(), &names));
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", &endpoint);
    std::env::set_var("HF_HOME", cache.path());

    let dir = hub::whisper_weights(hub::WHISPER_REPO).expect("Whisper downloads");
    Whisper::load(&dir, Device::Cpu).expect("downloaded Whisper loads");
    let seen = seen.lock().unwrap().clone();
    for name in names {
        let path = format!("/{}/resolve/{}/{name}", hub::WHISPER_REPO, hub::WHISPER_REVISION);
        assert!(seen.contains(&path), "{path} not in {seen:?}");
    }
    // A local folder, of either layout, is used as it is.
    assert_eq!(hub::whisper_weights(folder.path().to_str().unwrap()).unwrap(), folder.path());
}

#[test]
fn a_checkpoint_source_names_the_model_it_holds() {
    let parse = |spec: &str| hub::Source::parse(spec, hub::DIA_REPO, hub::DIA_REVISION);
    assert_eq!(parse(hub::DIA_REPO).model_id(), "nari-labs/Dia-1.6B-0626@ef2795fcc29c");
    assert_eq!(parse("someone/dia-ft@v2").model_id(), "someone/dia-ft@v2");
    assert_eq!(parse("someone/dia-ft").model_id(), "someone/dia-ft@main");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("my-dia");
    std::fs::create_dir(&folder).unwrap();
    assert_eq!(parse(folder.to_str().unwrap()).model_id(), "my-dia");
    assert_eq!(parse(&format!("{}/.", folder.display())).model_id(), "my-dia");
}
