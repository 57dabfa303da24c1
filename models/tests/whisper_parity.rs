//! Whisper base on its real weights against faster-whisper 1.2.1 (CTranslate2 4.8.5, f32, CPU) on
//! the same weights: mel features, encoder output and language probabilities within tolerances,
//! greedy tokens exactly, and the word error rate of the transcripts
//! (fixtures/whisper-base/README.md).

mod common;

use std::path::Path;

use common::{assert_close, assert_same, case_names, whisper_dir, whisper_weights, Case};
use models::whisper::{mel, to_mono_16k, Whisper};
use tch::{Device, Kind, Tensor};

fn model() -> Whisper {
    Whisper::load(&whisper_weights(), Device::Cpu).expect("Whisper loads")
}

fn cases() -> Vec<(String, Case)> {
    let dir = whisper_dir();
    let names = case_names(&dir, "");
    assert!(names.len() >= 5, "fixture cases in {}", dir.display());
    names.into_iter().map(|n| (n.clone(), Case::load(&dir, &n))).collect()
}

/// A case's WAV as interleaved float samples (`s16 / 32768`), its rate and channel count.
fn read_wav(path: &Path) -> (Vec<f32>, u32, u16) {
    let mut reader = hound::WavReader::open(path).expect("fixture WAV");
    let spec = reader.spec();
    assert_eq!(spec.bits_per_sample, 16);
    let pcm = reader.samples::<i16>().map(|s| f32::from(s.unwrap()) / 32768.0).collect();
    (pcm, spec.sample_rate, spec.channels)
}

fn wav_of(case: &Case) -> (Vec<f32>, u32, u16) {
    read_wav(&whisper_dir().join(case.meta["wav"].as_str().unwrap()))
}

/// The 16 kHz mono samples faster-whisper transcribed: the file itself, or for the 44.1 kHz
/// stereo clip PyAV's decode of it, recorded in the fixture (see `resampling_…` for ours).
fn reference_16k(case: &Case) -> Vec<f32> {
    if case.has("audio_16k") {
        Vec::<f32>::try_from(case.get("audio_16k")).unwrap()
    } else {
        let (pcm, rate, channels) = wav_of(case);
        assert_eq!((rate, channels), (16_000, 1));
        pcm
    }
}

// Tolerances, `|ours − ref| ≤ atol + rtol·|ref|`, about three times the largest difference
// measured over the clips (libtorch 2.11 CPU): mel 3.6e-5 (log10 units / 4; f32 FFTs differ in
// the quietest bins), encoder 3.6e-4 (six f32 layers on values of up to tens), language
// probabilities 2.0e-6.
const MEL_TOL: (f64, f64) = (1e-4, 0.0);
const ENCODER_TOL: (f64, f64) = (1e-3, 0.0);
const LANGUAGE_TOL: (f64, f64) = (1e-5, 0.0);

#[test]
fn mel_features_match_faster_whisper() {
    let model = model();
    for (name, case) in cases() {
        let mel = model.log_mel(&reference_16k(&case)).unwrap();
        let expected = case.get("mel");
        let content = case.meta["content_frames"].as_i64().unwrap();
        assert_eq!(mel.size(), [80, content + 1], "{name}: frames");
        let (atol, rtol) = MEL_TOL;
        assert_close(&format!("{name} mel"), &mel.narrow(1, 0, content), expected, atol, rtol);
    }
}

#[test]
fn encoder_output_matches_faster_whisper() {
    let model = model();
    for (name, case) in cases() {
        // The reference's own features, zero-padded to the window, so only the encoder differs.
        let encoded = model.encode(&mel::window(case.get("mel"), 0));
        assert_eq!(encoded.size(), [1500, 512]);
        let rows = encoded.index_select(0, case.get("encoder_index"));
        let (atol, rtol) = ENCODER_TOL;
        assert_close(&format!("{name} encoder"), &rows, case.get("encoder_rows"), atol, rtol);
    }
}

#[test]
fn language_detection_matches_faster_whisper() {
    let model = model();
    let codes: Vec<&str> = model.tokenizer().languages().iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(codes.len(), 99);
    assert_eq!(&codes[..3], ["en", "zh", "de"]);
    for (name, case) in cases() {
        let mel = model.log_mel(&reference_16k(&case)).unwrap();
        let encoded = model.encode(&mel::window(&mel, 0));
        let probs = model.language_probs(&encoded);
        let (atol, rtol) = LANGUAGE_TOL;
        assert_close(&format!("{name} language"), &probs, case.get("language_probs"), atol, rtol);
        assert_eq!(model.detect_language(&encoded), case.meta["language"].as_str().unwrap());
    }
}

#[test]
fn greedy_tokens_match_faster_whisper_from_the_wav_files() {
    let model = model();
    for (name, case) in cases() {
        let (pcm, rate, channels) = wav_of(&case);
        let transcript = model.transcribe(&pcm, rate, channels, None).unwrap();
        let tokens = Tensor::from_slice(&transcript.tokens);
        assert_same(&format!("{name} tokens"), &tokens, case.get("tokens"));
        assert_eq!(transcript.language, case.meta["language"].as_str().unwrap(), "{name}");
        assert_eq!(transcript.text, case.meta["transcript"].as_str().unwrap().trim(), "{name}");
        eprintln!("{name}: {:?}", transcript.text);
    }
}

#[test]
fn a_clip_longer_than_a_window_is_decoded_window_by_window() {
    let dir = whisper_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("long.json")).unwrap()).unwrap();
    let expected: Vec<(String, Tensor)> =
        Tensor::read_safetensors(dir.join("long.safetensors")).unwrap();
    // Rebuilt as the fixture script builds it: each clip, then silence, the sequence repeated.
    let gap = meta["gap_samples"].as_u64().unwrap() as usize;
    let mut pcm = Vec::new();
    for _ in 0..meta["repeat"].as_u64().unwrap() {
        for clip in meta["clips"].as_array().unwrap() {
            pcm.extend(read_wav(&dir.join(format!("{}.wav", clip.as_str().unwrap()))).0);
            pcm.extend(std::iter::repeat_n(0.0, gap));
        }
    }
    assert_eq!(pcm.len() as u64, meta["samples"].as_u64().unwrap());
    assert!(pcm.len() > 30 * 16_000);

    let model = model();
    let transcript = model.transcribe(&pcm, 16_000, 1, None).unwrap();
    assert_same("long tokens", &Tensor::from_slice(&transcript.tokens), &expected[0].1);
    assert_eq!(transcript.language, meta["language"].as_str().unwrap());
    let windows: Vec<&str> =
        meta["window_texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(windows.len(), 2);
    assert_eq!(transcript.text, windows.concat().trim());
}

#[test]
fn a_given_language_is_used_as_given() {
    let model = model();
    let case = Case::load(&whisper_dir(), "de_150");
    let (pcm, rate, channels) = wav_of(&case);
    let german = model.transcribe(&pcm, rate, channels, Some("de")).unwrap();
    assert_same("de_150 tokens", &Tensor::from_slice(&german.tokens), case.get("tokens"));
    let english = model.transcribe(&pcm, rate, channels, Some("en")).unwrap();
    assert_eq!(english.language, "en");
    assert_ne!(english.tokens, german.tokens, "the language token steers the decoder");
    assert!(model.transcribe(&pcm, rate, channels, Some("xx")).is_err());
}

#[test]
fn very_short_clips_are_transcribed_or_refused_without_panicking() {
    let model = model();
    let short = model.transcribe(&[0.0; 100], 16_000, 1, Some("en")).unwrap();
    assert!(short.tokens.is_empty(), "100 samples hold no whole frame: {short:?}");
    assert!(model.transcribe(&[0.0; 40], 16_000, 1, None).is_err());
    let frames = model.log_mel(&[0.0; mel::MIN_SAMPLES]).unwrap().size()[1];
    assert_eq!(frames, 1);
}

#[test]
fn resampling_from_44k_stereo_is_close_to_pyav() {
    let case = Case::load(&whisper_dir(), "en_us_stereo44k");
    let (pcm, rate, channels) = wav_of(&case);
    assert_eq!((rate, channels), (44_100, 2));
    let ours = to_mono_16k(&pcm, rate, channels).unwrap();
    let reference = case.get("audio_16k");
    assert_eq!(ours.len() as i64, reference.size()[0]);
    // Two different anti-aliasing filters (rubato's FFT resampler, PyAV's swresample) and the
    // reference's rounding to 16 bits: close, not equal (both average the channels). Measured:
    // RMS 5.9e-3 (peak 0.6), largest difference 7.7e-2; the greedy tokens still match.
    let diff = Tensor::from_slice(&ours) - reference;
    let rms = diff.square().mean(Kind::Float).sqrt().double_value(&[]);
    let max = diff.abs().max().double_value(&[]);
    eprintln!("resampled vs PyAV: max {max:e}, rms {rms:e}");
    assert!(rms < 1e-2 && max < 0.1, "rms {rms:e}, max {max:e}");
}

/// jiwer's word error rate, `(S + D + I) / N` by word-level Levenshtein distance, over texts
/// normalised as the fixture script does (lower case, punctuation but apostrophes as spaces).
fn wer(reference: &[Vec<String>], hypothesis: &[Vec<String>]) -> f64 {
    let mut errors = 0;
    let mut words = 0;
    for (r, h) in reference.iter().zip(hypothesis) {
        let mut row: Vec<usize> = (0..=h.len()).collect();
        for (i, rw) in r.iter().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, hw) in h.iter().enumerate() {
                let substitution = diagonal + usize::from(rw != hw);
                diagonal = row[j + 1];
                row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
            }
        }
        errors += row[h.len()];
        words += r.len();
    }
    errors as f64 / words as f64
}

fn normalize(text: &str) -> Vec<String> {
    let kept: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '_' || c == '\'' { c } else { ' ' })
        .collect();
    kept.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn word_error_rate_on_the_espeak_clips() {
    let model = model();
    let (mut refs, mut hyps) = (Vec::new(), Vec::new());
    for (name, case) in cases() {
        let (pcm, rate, channels) = wav_of(&case);
        let text = model.transcribe(&pcm, rate, channels, None).unwrap().text;
        let (r, h) = (normalize(case.meta["text"].as_str().unwrap()), normalize(&text));
        let clip = wer(std::slice::from_ref(&r), std::slice::from_ref(&h));
        eprintln!("{name}: WER {clip:.3} {text:?}");
        // jiwer's figure for faster-whisper's transcript, recorded by the fixture script.
        assert!((clip - case.meta["wer"].as_f64().unwrap()).abs() < 1e-9, "{name}: WER {clip}");
        refs.push(r);
        hyps.push(h);
    }
    let corpus = wer(&refs, &hyps);
    eprintln!("corpus WER {corpus:.4}");
    // Whisper base on robotic espeak-ng voices: faster-whisper's own corpus WER is 0.318.
    assert!(corpus <= 0.35, "corpus WER {corpus}");
}

#[test]
fn wer_counts_substitutions_deletions_and_insertions() {
    let w = |s: &str| normalize(s);
    assert_eq!(wer(&[w("a b c d")], &[w("a x c d")]), 0.25);
    assert_eq!(wer(&[w("a b c d")], &[w("a c d")]), 0.25);
    assert_eq!(wer(&[w("a b")], &[w("a b c d")]), 1.0);
    assert_eq!(wer(&[w("Hello, World!"), w("it's")], &[w("hello world"), w("its")]), 1.0 / 3.0);
}
