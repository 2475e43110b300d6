//! Consumer backlog monitor (offset lag, time lag, status) — not built yet.

/// Flags of `synclag backlog`.
#[derive(Debug, clap::Args)]
pub struct BacklogArgs {
    /// Path to topology.yaml.
    #[arg(long, short, default_value = "topology.yaml")]
    pub config: std::path::PathBuf,
}

/// Runs the backlog monitor alone.
pub async fn run_standalone(_args: BacklogArgs) -> anyhow::Result<()> {
    anyhow::bail!("the backlog monitor is not available yet")
}
