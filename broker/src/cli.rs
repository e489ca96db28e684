//! The `cemesh` command line: one subcommand per role, each parsed by the crate that
//! runs it (`serve` by the control plane, `sidecar`, `bench`, and the client commands).

use cemesh_client::args::{
    ApplyArgs, DeadLettersArgs, DeleteArgs, DescribeArgs, DisplayArgs, GetArgs, ResumeArgs,
    SendArgs, TailArgs, ValidateArgs,
};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cemesh",
    version,
    about = "A CloudEvents broker and trigger event mesh"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker: ingress, dispatcher and admin API.
    Serve(cemesh_control::serve::ServeArgs),
    /// Send one CloudEvent (like `kn event send`).
    Send(SendArgs),
    /// Run a subscriber that prints every event it receives (like Knative's
    /// event-display).
    Display(DisplayArgs),
    /// Measure throughput and latency against a bare-forwarder baseline.
    Bench(cemesh_bench::BenchArgs),
    /// Run beside an existing service: a durable outbox for its publishes and a
    /// relay delivering the mesh's events to it.
    Sidecar(cemesh_sidecar::SidecarArgs),
    /// Apply Broker/Trigger manifests through the admin API (like kubectl apply).
    Apply(ApplyArgs),
    /// List brokers or triggers with their readiness.
    Get(GetArgs),
    /// Show one resource: spec, status, counters and lag.
    Describe(DescribeArgs),
    /// Delete a broker or trigger created through the admin API.
    Delete(DeleteArgs),
    /// Check manifests offline, as a load would; exit 1 on any problem.
    Validate(ValidateArgs),
    /// Stream the events entering a broker, live.
    Tail(TailArgs),
    /// Let a trigger paused at its max-lag (`cemesh.dev/max-lag-action: pause`)
    /// deliver again.
    Resume(ResumeArgs),
    /// Show where an event went: accepted, matched or filtered out by each trigger,
    /// every delivery attempt, replies, and how it ended.
    Trace(cemesh_client::args::TraceArgs),
    /// Deliver a trigger's archived events of a range again (without moving its
    /// cursor), or show (`status`) and `cancel` replays.
    Replay(cemesh_client::args::ReplayArgs),
    /// Move a trigger's cursor to a time or offset (refused when it would skip
    /// undelivered events, unless --force).
    ResetCursor(cemesh_client::args::ResetCursorArgs),
    /// List, show, redrive or purge a trigger's dead letters.
    #[command(name = "deadletters", visible_aliases = ["dlq", "dl"])]
    DeadLetters(DeadLettersArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
