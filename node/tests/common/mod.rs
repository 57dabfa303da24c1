//! The fixture folders (`DIA_FIXTURE_DIR`, `DAC_FIXTURE_DIR`) and the `dia-node` binary on them.

pub mod browser;
pub mod fake_nvml;
pub mod pool;
pub mod scripted;
pub mod whisper;

use std::path::PathBuf;
use std::process::Command;

pub fn fixtures(name: &str, var: &str) -> PathBuf {
    std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
    })
}

/// `dia-node <command>` with the fixture weights, and no Whisper whatever the environment says.
pub fn dia_node(command: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dia-node"));
    cmd.env_remove("WHISPER_WEIGHTS")
        .arg(command)
        .arg("--weights")
        .arg(fixtures("dia-tiny", "DIA_FIXTURE_DIR"))
        .arg("--dac")
        .arg(fixtures("dac-tiny", "DAC_FIXTURE_DIR"));
    cmd
}
