//! A node's hello, read and checked before the node joins. Its version is read first, so a node
//! of another version hears that rather than which field it spells otherwise.

use proto::{Hello, PROTOCOL_VERSION};
use serde_json::Value;

/// The longest GPU text a hello may carry (a name, version or reason): what an untrusted node
/// has the store keep and the pages show stays small.
pub const MAX_GPU_TEXT_CHARS: usize = 256;

/// What one hello may name, at most: the store keeps it, every dispatch walks its models and
/// features, and every heartbeat writes it again.
const MAX_NODE_ID_CHARS: usize = 128;
const MAX_MODELS: usize = 16;
const MAX_MODEL_ID_CHARS: usize = 256;
const MAX_FEATURES: usize = 8;
const MAX_FEATURE_CHARS: usize = 64;
/// Whisper speaks 100 languages.
const MAX_LANGUAGES: usize = 128;
const MAX_LANGUAGE_CHARS: usize = 8;

/// Why a hello is refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Refused {
    /// Not JSON, or another message.
    #[error("the first message must be a hello")]
    NotHello,
    /// Another protocol version.
    #[error("protocol version {0} is not {PROTOCOL_VERSION}")]
    Version(u64),
    /// A hello of this version that does not parse.
    #[error("the hello does not parse: {0}")]
    Unreadable(String),
    /// Nothing to route to it.
    #[error("a node needs a capacity of at least 1 and a model")]
    Empty,
    /// Neither `gpu` nor `gpu_unavailable`.
    #[error(
        "a hello names its GPU (`gpu`) or says why it reads none (`gpu_unavailable`); this one \
         does neither"
    )]
    NoGpuNorReason,
    /// Both `gpu` and `gpu_unavailable`.
    #[error(
        "a hello names its GPU (`gpu`) or says why it reads none (`gpu_unavailable`), not both"
    )]
    GpuAndReason,
    /// A GPU text that is empty or too long.
    #[error("`{0}` must be 1 to {MAX_GPU_TEXT_CHARS} characters")]
    GpuText(&'static str),
    /// An id or a list past its bound.
    #[error("{0}")]
    TooLarge(String),
}

/// At most `max` items (`what`, for the message), each 1 to `max_chars` characters (`field`).
fn bounded<'a>(
    field: &str,
    what: &str,
    items: impl ExactSizeIterator<Item = &'a String>,
    (max, max_chars): (usize, usize),
) -> Result<(), Refused> {
    if items.len() > max {
        return Err(Refused::TooLarge(format!("a hello names at most {max} {what}")));
    }
    for item in items {
        if item.is_empty() || item.chars().count() > max_chars {
            let shown: String = item.chars().take(40).collect();
            return Err(Refused::TooLarge(format!(
                "`{field}` must be 1 to {max_chars} characters; got \"{shown}\""
            )));
        }
    }
    Ok(())
}

/// The hello in a session's first text frame, if the node may join with it.
pub fn read(text: &str) -> Result<Hello, Refused> {
    let value: Value = serde_json::from_str(text).map_err(|_| Refused::NotHello)?;
    if value["type"] != "hello" {
        return Err(Refused::NotHello);
    }
    let version = value["protocol_version"].as_u64();
    if let Some(v) = version.filter(|v| *v != u64::from(PROTOCOL_VERSION)) {
        return Err(Refused::Version(v));
    }
    let hello: Hello =
        serde_json::from_value(value).map_err(|e| Refused::Unreadable(e.to_string()))?;
    if hello.capacity == 0 || hello.models.is_empty() {
        return Err(Refused::Empty);
    }
    bounded("node_id", "ids", std::iter::once(&hello.node_id.0), (1, MAX_NODE_ID_CHARS))?;
    let ids = hello.models.iter().map(|m| &m.id);
    bounded("models[].id", "models", ids, (MAX_MODELS, MAX_MODEL_ID_CHARS))?;
    for model in &hello.models {
        let features = (MAX_FEATURES, MAX_FEATURE_CHARS);
        bounded("models[].features[]", "features per model", model.features.iter(), features)?;
        let languages = (MAX_LANGUAGES, MAX_LANGUAGE_CHARS);
        bounded("models[].languages[]", "languages per model", model.languages.iter(), languages)?;
    }
    let texts = match (&hello.gpu, &hello.gpu_unavailable) {
        (None, None) => return Err(Refused::NoGpuNorReason),
        (Some(_), Some(_)) => return Err(Refused::GpuAndReason),
        (Some(gpu), None) => vec![
            ("gpu.name", &gpu.name),
            ("gpu.uuid", &gpu.uuid),
            ("gpu.driver_version", &gpu.driver_version),
            ("gpu.cuda_version", &gpu.cuda_version),
        ],
        (None, Some(reason)) => vec![("gpu_unavailable", reason)],
    };
    for (field, text) in texts {
        if text.trim().is_empty() || text.chars().count() > MAX_GPU_TEXT_CHARS {
            return Err(Refused::GpuText(field));
        }
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hello() -> Value {
        json!({
            "type": "hello",
            "protocol_version": PROTOCOL_VERSION,
            "node_id": "n",
            "models": [{"id": "m", "features": ["voice-cloning"], "max_input_chars": 1,
                        "max_new_tokens": 1, "max_frames": 1}],
            "capacity": 1,
            "gpu_unavailable": "no CUDA device: the node runs on the CPU",
        })
    }

    fn gpu() -> Value {
        json!({"name": "NVIDIA L4", "uuid": "GPU-1", "memory_total_bytes": 24_152_899_584_u64,
               "driver_version": "550.54.15", "cuda_version": "12.4"})
    }

    fn read_value(v: Value) -> Result<Hello, Refused> {
        read(&v.to_string())
    }

    #[test]
    fn a_hello_with_a_gpu_or_a_reason_is_read() {
        let cpu = read_value(hello()).unwrap();
        assert_eq!(
            cpu.gpu_unavailable.as_deref(),
            Some("no CUDA device: the node runs on the CPU")
        );
        let mut v = hello();
        v.as_object_mut().unwrap().remove("gpu_unavailable");
        v["gpu"] = gpu();
        assert_eq!(read_value(v).unwrap().gpu.unwrap().memory_total_bytes, 24_152_899_584);
    }

    #[test]
    fn a_hello_must_say_either_its_gpu_or_why_it_has_none() {
        let mut neither = hello();
        neither.as_object_mut().unwrap().remove("gpu_unavailable");
        assert_eq!(read_value(neither.clone()), Err(Refused::NoGpuNorReason));
        neither["gpu"] = Value::Null;
        assert_eq!(read_value(neither), Err(Refused::NoGpuNorReason));
        let mut both = hello();
        both["gpu"] = gpu();
        assert_eq!(read_value(both), Err(Refused::GpuAndReason));
    }

    #[test]
    fn gpu_texts_are_bounded() {
        let mut blank = hello();
        blank["gpu_unavailable"] = " ".into();
        assert_eq!(read_value(blank), Err(Refused::GpuText("gpu_unavailable")));
        let mut long = hello();
        long.as_object_mut().unwrap().remove("gpu_unavailable");
        long["gpu"] = gpu();
        long["gpu"]["driver_version"] = "9".repeat(MAX_GPU_TEXT_CHARS + 1).into();
        assert_eq!(read_value(long), Err(Refused::GpuText("gpu.driver_version")));
    }

    #[test]
    fn another_version_is_named_before_any_field_it_spells_otherwise() {
        // Version 4's `gpu` was free text.
        let mut old = hello();
        old["protocol_version"] = 4.into();
        old["gpu"] = "NVIDIA H100 80GB".into();
        assert_eq!(read_value(old.clone()), Err(Refused::Version(4)));
        old["protocol_version"] = PROTOCOL_VERSION.into();
        old.as_object_mut().unwrap().remove("gpu_unavailable");
        let Err(Refused::Unreadable(why)) = read_value(old) else { panic!("read") };
        assert!(why.contains("expected struct GpuInfo"), "{why}");
    }

    #[test]
    fn ids_and_lists_are_bounded() {
        let refusal = |v: Value| match read_value(v) {
            Err(Refused::TooLarge(why)) => why,
            other => panic!("read {other:?}"),
        };
        let mut long_id = hello();
        long_id["node_id"] = "n".repeat(MAX_NODE_ID_CHARS + 1).into();
        assert!(refusal(long_id).starts_with("`node_id` must be 1 to 128 characters; got \"nnn"));
        let mut blank_id = hello();
        blank_id["node_id"] = "".into();
        assert!(refusal(blank_id).starts_with("`node_id` must be 1 to"));
        let mut many = hello();
        let model = many["models"][0].clone();
        many["models"] = Value::Array(vec![model; MAX_MODELS + 1]);
        assert_eq!(refusal(many.clone()), "a hello names at most 16 models");
        many["models"].as_array_mut().unwrap().truncate(MAX_MODELS);
        assert!(read_value(many).is_ok(), "16 models are allowed");
        let mut features = hello();
        features["models"][0]["features"] = json!(vec!["voice-cloning"; MAX_FEATURES + 1]);
        assert_eq!(refusal(features), "a hello names at most 8 features per model");
        let mut languages = hello();
        languages["models"][0]["languages"] = json!(["en", "x".repeat(9)]);
        assert!(refusal(languages).starts_with("`models[].languages[]` must be 1 to 8 characters"));
        let mut model_id = hello();
        model_id["models"][0]["id"] = "m".repeat(MAX_MODEL_ID_CHARS + 1).into();
        assert!(refusal(model_id).starts_with("`models[].id` must be 1 to 256 characters"));
    }

    #[test]
    fn anything_but_a_hello_is_not_one() {
        assert_eq!(read("not json"), Err(Refused::NotHello));
        let beat = json!({"type": "heartbeat", "health": {"status": "healthy"}});
        assert_eq!(read_value(beat), Err(Refused::NotHello));
        let mut empty = hello();
        empty["capacity"] = 0.into();
        assert_eq!(read_value(empty), Err(Refused::Empty));
    }
}
