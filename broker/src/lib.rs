//! The `cemesh` binary's library half: parse the command line, set up logging, and hand
//! each subcommand to the crate that runs it (see ARCHITECTURE.md for the crates).

pub mod cli;
mod otel;

use cemesh_client::{deadletters, display, kubectl, send};
use cemesh_control::config::LogFormat;
use cemesh_control::serve;
use cli::{Cli, Command};

/// Runs the command line; `main` only calls this.
pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    let (log_format, log_level, otlp) = match &cli.command {
        Command::Serve(args) => {
            let s = serve::settings(args)?;
            (s.log_format, s.log_level, args.otlp_endpoint.clone())
        }
        Command::Sidecar(args) => (args.log_format.unwrap_or_default(), None, None),
        _ => (LogFormat::Text, None, None),
    };
    let _otel = init_tracing(log_format, log_level.as_deref(), otlp.as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => Ok(serve::run(serve::settings(&args)?).await?),
            Command::Send(args) => send::run(args).await,
            Command::Display(args) => display::run(args.addr).await,
            Command::Bench(args) => cemesh_bench::run(args).await,
            Command::DeadLetters(args) => deadletters::run(args).await,
            Command::Sidecar(args) => cemesh_sidecar::run(args).await,
            Command::Apply(args) => kubectl::apply(args).await,
            Command::Get(args) => kubectl::get(args).await,
            Command::Describe(args) => kubectl::describe(args).await,
            Command::Delete(args) => kubectl::delete(args).await,
            Command::Validate(args) => kubectl::validate(args),
            Command::Tail(args) => kubectl::tail(args).await,
            Command::Resume(args) => kubectl::resume(args).await,
            Command::Trace(args) => cemesh_client::trace::trace(args).await,
            Command::Replay(args) => cemesh_client::replay::replay(args).await,
            Command::ResetCursor(args) => cemesh_client::replay::reset_cursor(args).await,
        }
    })
}

/// `--log-level` wins over `RUST_LOG`, which wins over `info`. With the `otel`
/// feature and an OTLP endpoint, spans are also exported (the returned guard flushes
/// them when dropped).
fn init_tracing(format: LogFormat, level: Option<&str>, otlp: Option<&str>) -> otel::Guard {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|e| {
            eprintln!("--log-level {l:?} is not a valid filter ({e}); using info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    // Each layer has its own filter: the request and delivery spans are at debug, so
    // at the default level the log formats nothing per event (tracing-subscriber's fmt
    // layer formats a span's fields when the span opens, logged or not), while the
    // OTLP exporter, when configured, still gets every span.
    let (otel_layer, guard) = otel::layer(otlp);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel_layer)
        .try_init();
    guard
}
