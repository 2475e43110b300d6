//! The `synclag` command line: parses flags and hands over to the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use synclag::config::Topology;

#[derive(Parser)]
#[command(
    name = "synclag",
    version,
    about = "How late logistics data reaches the ERP, per workflow, with SLA breaches before customers notice."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a topology file and print every problem at once (exit 2), or a summary (exit 0).
    Validate {
        /// Path to topology.yaml.
        #[arg(long, short, default_value = "topology.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match Topology::load(&config) {
            Ok(topology) => {
                println!("{}: valid", config.display());
                print!("{}", topology.summary());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(2)
            }
        },
    }
}
