//! `cemesh bench`: placeholder until the benchmark harness lands.

/// Options of `cemesh bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("cemesh bench is being built")
}
