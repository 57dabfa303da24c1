//! The GPU worker. Today it runs single generations from the command line (`synth`); joining the
//! control plane's pool (`serve`) builds on the same model loading and generation.

mod device;
pub mod synth;

use clap::{Parser, Subcommand};

/// dia-node: Dia text-to-dialogue on libtorch.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate one dialogue to a WAV file, with a progress bar and the realtime factor.
    Synth(synth::SynthArgs),
}

/// Runs the chosen command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth(args) => synth::run(args),
    }
}
