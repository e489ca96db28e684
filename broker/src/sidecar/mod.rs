//! `cemesh sidecar`: placeholder until sidecar mode lands.

/// Options of `cemesh sidecar`.
#[derive(Debug, clap::Args)]
pub struct SidecarArgs {}

pub async fn run(_args: SidecarArgs) -> anyhow::Result<()> {
    anyhow::bail!("cemesh sidecar is being built")
}
