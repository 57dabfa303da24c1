//! Encodes a known signal in every supported upload format at test time, then checks that
//! `decode_to_mono_44k` returns it downmixed, resampled and of the right length, and that
//! malformed uploads are errors rather than panics.

use std::f32::consts::TAU;
use std::io::Cursor;
use std::num::{NonZeroU32, NonZeroU8};

use control_plane::audio::{decode_to_mono_44k, AudioError, DecodedAudio};
use flacenc::component::BitRepr;
use flacenc::error::Verify;
use proto::SAMPLE_RATE;

/// Left channel: 440 Hz at amplitude 0.5; right channel: 660 Hz at amplitude 0.3. Their mono
/// average has both tones at half amplitude, which tells a correct downmix from taking one channel.
const LEFT: (f32, f32) = (440.0, 0.5);
const RIGHT: (f32, f32) = (660.0, 0.3);
const SECONDS: f32 = 1.5;

/// Planar test signal: one `Vec` per channel (mono is the left channel alone).
fn tone(rate: u32, channels: usize) -> Vec<Vec<f32>> {
    let frames = (SECONDS * rate as f32) as usize;
    [LEFT, RIGHT][..channels]
        .iter()
        .map(|&(freq, amp)| {
            (0..frames).map(|n| amp * (TAU * freq * n as f32 / rate as f32).sin()).collect()
        })
        .collect()
}

fn interleave_i16(planar: &[Vec<f32>]) -> Vec<i16> {
    (0..planar[0].len())
        .flat_map(|n| planar.iter().map(move |channel| (channel[n] * 32_767.0).round() as i16))
        .collect()
}

fn encode_wav(planar: &[Vec<f32>], rate: u32, float: bool) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: planar.len() as u16,
        sample_rate: rate,
        bits_per_sample: if float { 32 } else { 16 },
        sample_format: if float { hound::SampleFormat::Float } else { hound::SampleFormat::Int },
    };
    let mut bytes = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut bytes, spec).unwrap();
    if float {
        for n in 0..planar[0].len() {
            for channel in planar {
                writer.write_sample(channel[n]).unwrap();
            }
        }
    } else {
        for sample in interleave_i16(planar) {
            writer.write_sample(sample).unwrap();
        }
    }
    writer.finalize().unwrap();
    bytes.into_inner()
}

fn encode_flac(planar: &[Vec<f32>], rate: u32) -> Vec<u8> {
    let samples: Vec<i32> = interleave_i16(planar).into_iter().map(i32::from).collect();
    let config = flacenc::config::Encoder::default().into_verified().unwrap();
    let source =
        flacenc::source::MemSource::from_samples(&samples, planar.len(), 16, rate as usize);
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size).unwrap();
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).unwrap();
    let mut bytes = sink.as_slice().to_vec();
    // flacenc writes the short last block's size as STREAMINFO's minimum block size, which the
    // spec excludes and which makes symphonia take the stream for variable-blocking; encoders
    // such as libFLAC write min = max for fixed blocking, as is restored here.
    bytes.copy_within(10..12, 8);
    bytes
}

fn encode_mp3(planar: &[Vec<f32>], rate: u32) -> Vec<u8> {
    let mut encoder = mp3lame_encoder::Builder::new()
        .unwrap()
        .with_num_channels(planar.len() as u8)
        .unwrap()
        .with_sample_rate(rate)
        .unwrap()
        .with_brate(mp3lame_encoder::Bitrate::Kbps128)
        .unwrap()
        .with_quality(mp3lame_encoder::Quality::Good)
        .unwrap()
        .build()
        .unwrap();
    let pcm = interleave_i16(planar);
    let mut bytes = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(pcm.len()));
    if planar.len() == 1 {
        encoder.encode_to_vec(mp3lame_encoder::MonoPcm(&pcm), &mut bytes).unwrap();
    } else {
        encoder.encode_to_vec(mp3lame_encoder::InterleavedPcm(&pcm), &mut bytes).unwrap();
    }
    bytes.reserve(mp3lame_encoder::max_required_buffer_size(0).max(7_200));
    encoder.flush_to_vec::<mp3lame_encoder::FlushNoGap>(&mut bytes).unwrap();
    bytes
}

fn encode_vorbis(planar: &[Vec<f32>], rate: u32) -> Vec<u8> {
    let mut encoder = vorbis_rs::VorbisEncoderBuilder::new_with_serial(
        NonZeroU32::new(rate).unwrap(),
        NonZeroU8::new(planar.len() as u8).unwrap(),
        Vec::new(),
        1,
    )
    .build()
    .unwrap();
    for start in (0..planar[0].len()).step_by(4_096) {
        let block: Vec<&[f32]> = planar
            .iter()
            .map(|channel| &channel[start..(start + 4_096).min(channel.len())])
            .collect();
        encoder.encode_audio_block(&block).unwrap();
    }
    encoder.finish().unwrap()
}

/// WebM/Opus the way browsers' MediaRecorder writes it: a live (unknown-size) segment on a
/// non-seekable sink, 20 ms packets, an OpusHead as the codec private data.
fn encode_webm_opus(planar: &[Vec<f32>]) -> Vec<u8> {
    const RATE: u32 = 48_000;
    const FRAME: usize = 960;
    let channels = planar.len();
    let layout = if channels == 1 { opus::Channels::Mono } else { opus::Channels::Stereo };
    let mut encoder = opus::Encoder::new(RATE, layout, opus::Application::Audio).unwrap();
    let pre_skip = encoder.get_lookahead().unwrap() as u16;

    let mut head = b"OpusHead".to_vec();
    head.extend([1, channels as u8]);
    head.extend(pre_skip.to_le_bytes());
    head.extend(RATE.to_le_bytes());
    head.extend([0, 0, 0]); // output gain, mapping family 0

    let writer = webm::mux::Writer::new_non_seek(Vec::new());
    let builder = webm::mux::SegmentBuilder::new(writer)
        .unwrap()
        .set_mode(webm::mux::SegmentMode::Live)
        .unwrap();
    let (builder, track) = builder
        .add_audio_track(RATE, channels as u32, webm::mux::AudioCodecId::Opus, None)
        .unwrap();
    let mut segment = builder.set_codec_private(track, &head).unwrap().build();

    let mut pcm: Vec<f32> =
        (0..planar[0].len()).flat_map(|n| planar.iter().map(move |channel| channel[n])).collect();
    pcm.resize(pcm.len().div_ceil(FRAME * channels) * FRAME * channels, 0.0);
    for (index, frame) in pcm.chunks(FRAME * channels).enumerate() {
        let packet = encoder.encode_vec_float(frame, 4_000).unwrap();
        let timestamp_ns = (index * FRAME) as u64 * 1_000_000_000 / u64::from(RATE);
        segment.add_frame(track, &packet, timestamp_ns, true).unwrap();
    }
    segment.finalize(None).unwrap_or_else(|_| panic!("webm finalize failed")).into_inner()
}

/// Amplitude and phase (radians, relative to a sine starting at sample 0) of the `freq`
/// component over one second at the output rate, skipping codec start-up and tail.
fn component(samples: &[f32], freq: f32) -> (f32, f32) {
    let start = SAMPLE_RATE as usize / 10;
    let (mut re, mut im) = (0.0f64, 0.0f64);
    for (n, &x) in samples.iter().enumerate().skip(start).take(SAMPLE_RATE as usize) {
        let phase = f64::from(TAU * freq) * n as f64 / f64::from(SAMPLE_RATE);
        re += f64::from(x) * phase.sin();
        im += f64::from(x) * phase.cos();
    }
    let amplitude = 2.0 * re.hypot(im) / f64::from(SAMPLE_RATE);
    (amplitude as f32, im.atan2(re) as f32)
}

/// Decodes `bytes` and checks format, source layout, length (within `tolerance_s`) and that the
/// mono result holds both tones at half amplitude (the left tone at full amplitude for mono),
/// in phase unless the codec's priming is unknown (MP3 without a LAME tag).
fn check(bytes: &[u8], format: &str, rate: u32, channels: u16, tolerance_s: f32) -> DecodedAudio {
    let decoded = decode_to_mono_44k(bytes, 60.0).unwrap();
    assert_eq!(decoded.format, format);
    assert_eq!(decoded.source_sample_rate, rate);
    assert_eq!(decoded.source_channels, channels);

    let expected_len = (SECONDS * rate as f32).floor() * SAMPLE_RATE as f32 / rate as f32;
    let error_s = (decoded.samples.len() as f32 - expected_len).abs() / SAMPLE_RATE as f32;
    assert!(
        error_s <= tolerance_s,
        "{format} at {rate} Hz: {} samples, expected {expected_len} (off by {error_s} s)",
        decoded.samples.len()
    );
    assert!(decoded.samples.iter().all(|s| (-1.0..=1.0).contains(s)));

    let scale = if channels == 1 { 1.0 } else { 0.5 };
    let tones: &[(f32, f32)] = if channels == 1 { &[LEFT] } else { &[LEFT, RIGHT] };
    for &(freq, amp) in tones {
        let (measured, phase) = component(&decoded.samples, freq);
        let expected = amp * scale;
        assert!(
            (measured - expected).abs() < 0.1 * expected,
            "{format} at {rate} Hz: {freq} Hz amplitude {measured}, expected {expected}"
        );
        // 0.1 rad at 660 Hz is 1.1 samples at 44.1 kHz.
        assert!(
            format == "mp3" || phase.abs() < 0.1,
            "{format} at {rate} Hz: {freq} Hz is shifted by {phase} rad"
        );
    }
    if channels == 1 {
        assert!(component(&decoded.samples, RIGHT.0).0 < 0.01);
    }
    decoded
}

/// Lossless formats keep the exact length up to the resampler's rounding.
const EXACT: f32 = 2.0 / SAMPLE_RATE as f32;
/// Lossy codecs add encoder delay and pad the last frame.
const LOSSY: f32 = 0.08;

#[test]
fn wav_stereo_at_48k_22k_44k() {
    for rate in [48_000, 22_050, 44_100] {
        check(&encode_wav(&tone(rate, 2), rate, false), "wav", rate, 2, EXACT);
    }
}

#[test]
fn wav_float_and_mono() {
    check(&encode_wav(&tone(48_000, 2), 48_000, true), "wav", 48_000, 2, EXACT);
    check(&encode_wav(&tone(16_000, 1), 16_000, false), "wav", 16_000, 1, EXACT);
}

#[test]
fn wav_at_44k_is_passed_through_unchanged() {
    let planar = tone(44_100, 1);
    let decoded = decode_to_mono_44k(&encode_wav(&planar, 44_100, true), 60.0).unwrap();
    assert_eq!(decoded.samples, planar[0]);
}

#[test]
fn flac_stereo_at_48k_and_22k() {
    for rate in [48_000, 22_050] {
        check(&encode_flac(&tone(rate, 2), rate), "flac", rate, 2, EXACT);
    }
}

#[test]
fn mp3_stereo_at_44k_and_22k_and_mono_at_48k() {
    for rate in [44_100, 22_050] {
        check(&encode_mp3(&tone(rate, 2), rate), "mp3", rate, 2, LOSSY);
    }
    check(&encode_mp3(&tone(48_000, 1), 48_000), "mp3", 48_000, 1, LOSSY);
}

#[test]
fn ogg_vorbis_stereo_at_48k_and_22k() {
    for rate in [48_000, 22_050] {
        check(&encode_vorbis(&tone(rate, 2), rate), "ogg", rate, 2, LOSSY);
    }
}

#[test]
fn webm_opus_stereo_and_mono() {
    check(&encode_webm_opus(&tone(48_000, 2)), "webm", 48_000, 2, LOSSY);
    check(&encode_webm_opus(&tone(48_000, 1)), "webm", 48_000, 1, LOSSY);
}

#[test]
fn longer_than_the_limit_is_too_long_without_decoding_it_all() {
    let rate = 22_050;
    let long: Vec<Vec<f32>> = vec![vec![0.1; rate as usize * 120]];
    for bytes in [encode_wav(&long, rate, false), encode_flac(&long, rate)] {
        match decode_to_mono_44k(&bytes, 1.0) {
            Err(AudioError::TooLong { seconds, max_seconds }) => {
                assert_eq!(max_seconds, 1.0);
                assert!(seconds > 1.0 && seconds < 2.0, "decoded {seconds} s before stopping");
            }
            other => panic!("expected TooLong, got {:?}", other.map(|d| d.samples.len())),
        }
    }
    let vorbis = encode_vorbis(&tone(48_000, 2), 48_000);
    assert!(matches!(decode_to_mono_44k(&vorbis, 1.0), Err(AudioError::TooLong { .. })));
}

fn all_formats() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("wav", encode_wav(&tone(48_000, 2), 48_000, false)),
        ("flac", encode_flac(&tone(48_000, 2), 48_000)),
        ("mp3", encode_mp3(&tone(44_100, 2), 44_100)),
        ("ogg", encode_vorbis(&tone(48_000, 2), 48_000)),
        ("webm", encode_webm_opus(&tone(48_000, 2))),
    ]
}

/// A deterministic pseudo-random sequence (xorshift32) for garbage and corruption.
fn xorshift(mut state: u32) -> impl FnMut() -> u32 {
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }
}

#[test]
fn empty_and_garbage_are_errors() {
    assert!(matches!(decode_to_mono_44k(&[], 60.0), Err(AudioError::Empty)));
    let mut random = xorshift(0x2545_f491);
    let garbage: Vec<u8> = (0..100_000).map(|_| random() as u8).collect();
    assert!(decode_to_mono_44k(&garbage, 60.0).is_err());
    assert!(decode_to_mono_44k(b"RIFF\0\0\0\0WAVEfmt ", 60.0).is_err());
}

#[test]
fn zero_length_audio_is_empty() {
    let empty: Vec<Vec<f32>> = vec![Vec::new(); 2];
    assert!(matches!(
        decode_to_mono_44k(&encode_wav(&empty, 48_000, false), 60.0),
        Err(AudioError::Empty)
    ));
}

#[test]
fn unsupported_codec_is_an_error() {
    let mut wav = encode_wav(&tone(48_000, 2), 48_000, false);
    // The WAVE format tag: 0x0055 is MP3-in-WAV, which is not enabled.
    wav[20..22].copy_from_slice(&0x0055u16.to_le_bytes());
    assert!(matches!(decode_to_mono_44k(&wav, 60.0), Err(AudioError::Decode(_))));
}

#[test]
fn truncated_files_of_every_format_are_errors_or_partial_audio() {
    for (format, bytes) in all_formats() {
        // Cut inside the headers: nothing decodable remains.
        for len in [1, 2, 4, 8, 12, 16, 20, 24, 32, 40] {
            assert!(decode_to_mono_44k(&bytes[..len], 60.0).is_err(), "{format} cut at {len}");
        }
        // Cut anywhere else: an error or the audio before the cut, never a panic.
        for len in (0..bytes.len()).step_by(bytes.len() / 97 + 1) {
            if let Ok(decoded) = decode_to_mono_44k(&bytes[..len], 60.0) {
                assert!(decoded.samples.len() <= (SECONDS * SAMPLE_RATE as f32) as usize + 8_000);
            }
        }
    }
}

#[test]
fn corrupted_files_of_every_format_do_not_panic() {
    let mut next = xorshift(0x9e37_79b9);
    for (format, bytes) in all_formats() {
        for _ in 0..64 {
            let mut corrupt = bytes.clone();
            for _ in 0..8 {
                let at = next() as usize % corrupt.len();
                corrupt[at] = next() as u8;
            }
            if let Ok(decoded) = decode_to_mono_44k(&corrupt, 60.0) {
                assert!(!decoded.samples.is_empty(), "{format}");
                assert!(decoded.samples.iter().all(|s| (-1.0..=1.0).contains(s)), "{format}");
            }
        }
    }
}
