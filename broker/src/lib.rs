//! cemesh's control plane and command line: Knative manifests become running brokers
//! (channels behind the ingress) and triggers (delivery loops in the dispatcher).

pub mod admin;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod deadletters;
pub mod display;
pub mod duration;
pub mod manifest;
pub mod mesh;
pub mod send;
pub mod serve;
pub mod sidecar;

use cli::{Cli, Command};
use config::LogFormat;

/// Runs the command line; `main` only calls this.
pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    let log_format = match &cli.command {
        Command::Serve(args) => serve::settings(args)?.log_format,
        _ => LogFormat::Text,
    };
    init_tracing(log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(serve::settings(&args)?).await,
            Command::Send(args) => send::run(args).await,
            Command::Display(args) => display::run(args.addr).await,
            Command::Bench(args) => bench::run(args).await,
            Command::DeadLetters(args) => deadletters::run(args).await,
            Command::Sidecar(args) => sidecar::run(args).await,
        }
    })
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
