//! Turns a generation request body into a [`ValidSpeechRequest`]: every field checked against
//! the spec's range, every default filled in, the seed made concrete. Messages name the field in
//! backticks, its bound, and the value received.

use proto::speech::{
    DEFAULT_CFG_FILTER_TOP_K, DEFAULT_CFG_SCALE, DEFAULT_TEMPERATURE, DEFAULT_TOP_P,
};
use proto::{ErrorKind, Sampling, Script, ScriptError, WireError};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The body of `POST /v1/voice/generations`, as documented in the OpenAPI schema.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct SpeechRequest {
    /// Required. The dialogue script: `[S1]`/`[S2]`-tagged turns; without tags, an S1 monologue.
    pub input: String,
    /// A model id with the voice-cloning feature from GET /v1/models; omitted, one is chosen.
    pub model: Option<String>,
    /// Maps "S1" and/or "S2" to voice-sample ids of your library.
    pub speakers: Option<Speakers>,
    /// 1–5: how strongly the model follows the transcript.
    #[schema(minimum = 1.0, maximum = 5.0, default = json!(DEFAULT_CFG_SCALE))]
    pub cfg_scale: Option<f64>,
    /// 0.1–2.0: higher is more expressive, lower more consistent.
    #[schema(minimum = 0.1, maximum = 2.0, default = json!(DEFAULT_TEMPERATURE))]
    pub temperature: Option<f64>,
    /// 0.1–1.0: nucleus sampling threshold.
    #[schema(minimum = 0.1, maximum = 1.0, default = json!(DEFAULT_TOP_P))]
    pub top_p: Option<f64>,
    /// 1–100.
    #[schema(minimum = 1, maximum = 100, default = json!(DEFAULT_CFG_FILTER_TOP_K))]
    pub cfg_filter_top_k: Option<i64>,
    /// 0.5–2.0, default 1.0.
    #[schema(minimum = 0.5, maximum = 2.0, default = 1.0)]
    pub speed_factor: Option<f64>,
    /// 256–4096, default 3072.
    #[schema(minimum = 256, maximum = 4096, default = 3072)]
    pub max_new_tokens: Option<i64>,
    /// Fixed seed for reproducibility; omitted or -1 for random (returned in `x-seed`).
    #[schema(minimum = -1)]
    pub seed: Option<i64>,
    /// private (default), unlisted or public.
    pub visibility: Option<Visibility>,
    /// Collection the result is shared in.
    pub collection: Option<String>,
}

/// Voice-sample ids by speaker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct Speakers {
    /// Sample cloned for the first speaker.
    #[serde(rename = "S1")]
    pub s1: Option<i64>,
    /// Sample cloned for the second speaker.
    #[serde(rename = "S2")]
    pub s2: Option<i64>,
}

/// Who may see a result.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Only the account.
    #[default]
    Private,
    /// Anyone with the link.
    Unlisted,
    /// Listed publicly.
    Public,
}

/// A request the rest of the system can trust.
#[derive(Debug, Clone, Serialize)]
pub struct ValidSpeechRequest {
    /// The script as sent.
    pub input: String,
    /// The normalised script text for the model.
    pub script: String,
    /// Requested model, if any.
    pub model: Option<String>,
    /// Cloned voices.
    pub speakers: Speakers,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Speaking rate.
    pub speed_factor: f32,
    /// Most frames to generate.
    pub max_new_tokens: u32,
    /// Concrete seed.
    pub seed: u64,
    /// Visibility.
    pub visibility: Visibility,
    /// Collection.
    pub collection: Option<String>,
}

fn invalid(message: String) -> WireError {
    WireError::new(ErrorKind::InvalidParameter, message)
}

/// The value as JSON text for a message, shortened.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// A field, with JSON `null` read as absent.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn number(
    obj: &Map<String, Value>,
    name: &str,
    min: f64,
    max: f64,
    default: f64,
) -> Result<f64, WireError> {
    let Some(v) = field(obj, name) else { return Ok(default) };
    match v.as_f64() {
        Some(x) if (min..=max).contains(&x) => Ok(x),
        _ => {
            Err(invalid(format!("`{name}` must be a number from {min} to {max}; got {}", shown(v))))
        }
    }
}

/// An integer, written either way JSON allows: `3072` or `3072.0` (what many clients send for a
/// whole number held in a float).
fn as_integer(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        let x = v.as_f64()?;
        // Beyond ±2^53 a float no longer holds every integer; such a value was not meant exactly.
        (x.fract() == 0.0 && x.abs() <= 9_007_199_254_740_992.0).then_some(x as i64)
    })
}

fn integer(
    obj: &Map<String, Value>,
    name: &str,
    min: i64,
    max: i64,
    default: i64,
) -> Result<i64, WireError> {
    let Some(v) = field(obj, name) else { return Ok(default) };
    match as_integer(v) {
        Some(x) if (min..=max).contains(&x) => Ok(x),
        _ => Err(invalid(format!(
            "`{name}` must be an integer from {min} to {max}; got {}",
            shown(v)
        ))),
    }
}

fn string(
    obj: &Map<String, Value>,
    name: &str,
    max_chars: usize,
) -> Result<Option<String>, WireError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(Some(s.clone())),
        Some(v) => Err(invalid(format!(
            "`{name}` must be a string of at most {max_chars} characters; got {}",
            shown(v)
        ))),
    }
}

impl SpeechRequest {
    /// Reads the typed fields out of a JSON body.
    pub fn from_json(body: &Value) -> Result<Self, WireError> {
        let Some(obj) = body.as_object() else {
            return Err(WireError::new(
                ErrorKind::InvalidJson,
                format!("the body must be a JSON object; got {}", shown(body)),
            ));
        };
        let input = match field(obj, "input") {
            None => {
                return Err(WireError::new(
                    ErrorKind::MissingInput,
                    "`input` is required: the dialogue script",
                ))
            }
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(invalid(format!("`input` must be a string; got {}", shown(v)))),
        };
        let visibility = match field(obj, "visibility").map(|v| (v, v.as_str())) {
            None => None,
            Some((_, Some("private"))) => Some(Visibility::Private),
            Some((_, Some("unlisted"))) => Some(Visibility::Unlisted),
            Some((_, Some("public"))) => Some(Visibility::Public),
            Some((v, _)) => {
                return Err(invalid(format!(
                    "`visibility` must be one of \"private\", \"unlisted\", \"public\"; got {}",
                    shown(v)
                )))
            }
        };
        let collection = match field(obj, "collection") {
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => string(obj, "collection", 200)?,
        };
        Ok(Self {
            input,
            model: string(obj, "model", 200)?,
            speakers: field(obj, "speakers").map(speakers).transpose()?,
            cfg_scale: Some(number(obj, "cfg_scale", 1.0, 5.0, DEFAULT_CFG_SCALE)?),
            temperature: Some(number(obj, "temperature", 0.1, 2.0, DEFAULT_TEMPERATURE)?),
            top_p: Some(number(obj, "top_p", 0.1, 1.0, DEFAULT_TOP_P)?),
            cfg_filter_top_k: Some(integer(
                obj,
                "cfg_filter_top_k",
                1,
                100,
                i64::from(DEFAULT_CFG_FILTER_TOP_K),
            )?),
            speed_factor: Some(number(obj, "speed_factor", 0.5, 2.0, 1.0)?),
            max_new_tokens: Some(integer(obj, "max_new_tokens", 256, 4096, 3072)?),
            seed: Some(integer(obj, "seed", -1, i64::MAX, -1)?),
            visibility,
            collection,
        })
    }

    /// Checks the script and its length and fills in the seed.
    pub fn validate(self, max_input_chars: usize) -> Result<ValidSpeechRequest, WireError> {
        let input = self.input;
        let chars = input.chars().count();
        if chars > max_input_chars {
            let msg = format!("`input` has {chars} characters; the limit is {max_input_chars}");
            return Err(WireError::new(ErrorKind::RequestTooLarge, msg));
        }
        let script = match Script::parse(&input) {
            Ok(script) => script,
            Err(ScriptError::Empty) => {
                return Err(WireError::new(ErrorKind::MissingInput, "`input` is empty"))
            }
            Err(e) => return Err(WireError::new(ErrorKind::InvalidScript, e.to_string())),
        };
        let seed = match self.seed {
            Some(seed) if seed >= 0 => seed as u64,
            // Random seeds stay below 2^32 so they survive any JSON client unchanged.
            _ => u64::from(rand::random::<u32>()),
        };
        let defaults = Sampling::default();
        Ok(ValidSpeechRequest {
            input,
            script: script.to_model_text(),
            model: self.model,
            speakers: self.speakers.unwrap_or_default(),
            sampling: Sampling {
                cfg_scale: self.cfg_scale.map_or(defaults.cfg_scale, |x| x as f32),
                temperature: self.temperature.map_or(defaults.temperature, |x| x as f32),
                top_p: self.top_p.map_or(defaults.top_p, |x| x as f32),
                cfg_filter_top_k: self
                    .cfg_filter_top_k
                    .map_or(defaults.cfg_filter_top_k, |x| x as u32),
            },
            speed_factor: self.speed_factor.unwrap_or(1.0) as f32,
            max_new_tokens: self.max_new_tokens.unwrap_or(3072) as u32,
            seed,
            visibility: self.visibility.unwrap_or_default(),
            collection: self.collection,
        })
    }
}

/// What a voice sample's speaker says, held to the script rules (no `[S3]` or above, no opening
/// `[S2]`, no empty turn): the turns' text joined, for the tag of the speaker it clones to lead.
pub fn transcript_words(transcript: &str) -> Result<String, ScriptError> {
    let script = Script::parse(transcript)?;
    let words: Vec<&str> = script.turns.iter().map(|t| t.text.as_str()).collect();
    Ok(words.join(" "))
}

/// Checks the `transcript` sent with a voice sample.
pub fn check_transcript(transcript: &str) -> Result<(), WireError> {
    transcript_words(transcript)
        .map(drop)
        .map_err(|e| WireError::new(ErrorKind::InvalidScript, format!("`transcript`: {e}")))
}

fn speakers(v: &Value) -> Result<Speakers, WireError> {
    let Some(obj) = v.as_object() else {
        return Err(invalid(format!(
            "`speakers` must be an object mapping \"S1\"/\"S2\" to voice-sample ids; got {}",
            shown(v)
        )));
    };
    let mut out = Speakers::default();
    for (key, id) in obj {
        let slot = match key.as_str() {
            "S1" => &mut out.s1,
            "S2" => &mut out.s2,
            _ => {
                return Err(invalid(format!(
                    "`speakers` keys must be \"S1\" or \"S2\"; got \"{key}\""
                )))
            }
        };
        // The spec's type for a speaker value that names no sample of the caller, whatever it is.
        *slot = match id {
            Value::Null => None,
            v => match as_integer(v) {
                Some(id) if id > 0 => Some(id),
                _ => {
                    return Err(WireError::new(
                        ErrorKind::InvalidVoiceSample,
                        format!(
                            "`speakers.{key}` must be the id of a voice sample in your library; \
                             got {}",
                            shown(v)
                        ),
                    ))
                }
            },
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validate(body: Value) -> Result<ValidSpeechRequest, WireError> {
        SpeechRequest::from_json(&body)?.validate(100)
    }

    #[test]
    fn defaults_are_the_specs() {
        let v = validate(json!({"input": "Hello"})).unwrap();
        let spec = Sampling { cfg_scale: 3.0, temperature: 1.8, top_p: 0.95, cfg_filter_top_k: 45 };
        assert_eq!(v.sampling, spec);
        assert_eq!((v.speed_factor, v.max_new_tokens), (1.0, 3072));
        assert_eq!(v.visibility, Visibility::Private);
        assert_eq!(v.script, "[S1] Hello");
    }

    #[test]
    fn an_out_of_range_number_names_field_bound_and_value() {
        let e = validate(json!({"input": "Hi", "cfg_scale": 7.5})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParameter);
        assert_eq!(e.message, "`cfg_scale` must be a number from 1 to 5; got 7.5");
    }

    #[test]
    fn a_wrongly_typed_field_is_reported_with_its_value() {
        let e = validate(json!({"input": "Hi", "max_new_tokens": "many"})).unwrap_err();
        assert_eq!(e.message, "`max_new_tokens` must be an integer from 256 to 4096; got \"many\"");
    }

    #[test]
    fn a_fractional_integer_field_is_rejected() {
        assert!(validate(json!({"input": "Hi", "cfg_filter_top_k": 4.5})).is_err());
        assert!(validate(json!({"input": "Hi", "seed": 1e300})).is_err());
    }

    #[test]
    fn an_integral_float_is_an_integer() {
        let v = validate(json!({"input": "Hi", "max_new_tokens": 3072.0, "cfg_filter_top_k": 45.0,
            "seed": 7.0, "speakers": {"S1": 12.0}}))
        .unwrap();
        assert_eq!((v.max_new_tokens, v.sampling.cfg_filter_top_k, v.seed), (3072, 45, 7));
        assert_eq!(v.speakers.s1, Some(12));
    }

    #[test]
    fn bounds_are_inclusive() {
        let v = validate(
            json!({"input": "Hi", "temperature": 0.1, "top_p": 1.0, "max_new_tokens": 4096}),
        )
        .unwrap();
        assert_eq!(v.max_new_tokens, 4096);
    }

    #[test]
    fn a_given_seed_is_kept_and_minus_one_draws_one() {
        assert_eq!(validate(json!({"input": "Hi", "seed": 7})).unwrap().seed, 7);
        assert!(validate(json!({"input": "Hi", "seed": -1})).unwrap().seed <= u64::from(u32::MAX));
        assert!(validate(json!({"input": "Hi", "seed": -2})).is_err());
    }

    #[test]
    fn missing_or_empty_input_is_missing_input() {
        assert_eq!(validate(json!({})).unwrap_err().kind, ErrorKind::MissingInput);
        assert_eq!(validate(json!({"input": null})).unwrap_err().kind, ErrorKind::MissingInput);
        assert_eq!(validate(json!({"input": "  "})).unwrap_err().kind, ErrorKind::MissingInput);
    }

    #[test]
    fn input_over_the_limit_is_too_large() {
        assert_eq!(
            validate(json!({"input": "a".repeat(101)})).unwrap_err().kind,
            ErrorKind::RequestTooLarge
        );
    }

    #[test]
    fn speakers_accept_only_s1_and_s2() {
        let v = validate(json!({"input": "Hi", "speakers": {"S1": 12, "S2": 17}})).unwrap();
        assert_eq!(v.speakers, Speakers { s1: Some(12), s2: Some(17) });
        assert!(validate(json!({"input": "Hi", "speakers": {"S3": 1}})).is_err());
        let e = validate(json!({"input": "Hi", "speakers": {"S1": "x"}})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidVoiceSample);
        assert_eq!(
            e.message,
            "`speakers.S1` must be the id of a voice sample in your library; got \"x\""
        );
    }

    #[test]
    fn a_transcript_obeys_the_script_rules_and_reads_as_one_speaker() {
        assert_eq!(transcript_words(" Hi there.\n").unwrap(), "Hi there.");
        assert_eq!(transcript_words("[S1] A prompt. [S1] More.").unwrap(), "A prompt. More.");
        let e = check_transcript("[S1] Hi\n[S3] there").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidScript);
        assert_eq!(
            e.message,
            "`transcript`: line 2: speaker tag [S3] is not supported; use [S1] or [S2]"
        );
        assert!(check_transcript("Hi [S3] there").is_err());
        assert!(check_transcript("[S2] Me first.").is_err());
    }

    #[test]
    fn visibility_and_collection_are_read() {
        let v = validate(json!({"input": "Hi", "visibility": "unlisted", "collection": "pods"}))
            .unwrap();
        assert_eq!((v.visibility, v.collection.as_deref()), (Visibility::Unlisted, Some("pods")));
        assert!(validate(json!({"input": "Hi", "visibility": "secret"})).is_err());
    }
}
