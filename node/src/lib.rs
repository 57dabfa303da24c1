//! The GPU worker: `serve` joins the control plane's pool and runs the jobs it routes here
//! (generations, batched, and transcriptions); `synth` runs one generation from the command line.

mod client;
mod device;
mod engine;
mod gpu;
mod health;
mod metrics;
pub mod serve;
pub mod synth;
mod transcriber;
mod weights;
mod workers;

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
    /// Join a control plane's pool and serve its jobs.
    Serve(serve::ServeArgs),
}

/// Runs the chosen command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth(args) => synth::run(args),
        Command::Serve(args) => serve::run(args),
    }
}
