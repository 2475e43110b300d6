//! Simulator — not built yet.

/// Flags of `synclag simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Path to topology.yaml.
    #[arg(long, short, default_value = "topology.yaml")]
    pub config: std::path::PathBuf,
}

/// Runs the simulator.
pub async fn simulate(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not available yet")
}
