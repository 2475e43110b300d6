//! The `synclag` command line: parses flags and hands over to the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use synclag::config::Topology;

/// mimalloc instead of the system allocator: glibc's per-thread arenas kept about 100 MiB
/// of freed memory in the load run; with mimalloc its peak RSS fell from 345–364 to
/// 282 MiB and it used fewer CPU-seconds (README, Performance → Memory). It is built
/// without transparent huge pages (`no_thp`): with them, a 2 MiB page of its arena stays
/// resident while any of it is in use (271–277 → 245–261 MiB in the same run).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the service: consume, correlate, emit breaches, lag and metrics.
    Run {
        /// Path to topology.yaml.
        #[arg(long, short, default_value = "topology.yaml")]
        config: PathBuf,
        /// Serve the API on a non-loopback address without authentication (logged loudly).
        #[arg(long)]
        insecure_no_auth: bool,
    },
    /// Dead letters: list them, and redrive them to their source topic (audited).
    Dlq(synclag::dlq::DlqArgs),
    /// Make a new API token: prints the token once, and the line for `api.tokens_file`.
    ApiToken {
        /// Name of the token's holder (shown in the audit trail).
        #[arg(long)]
        name: String,
        /// viewer, operator or metrics.
        #[arg(long)]
        role: String,
    },
    /// Watch the backlog (offset and time lag, status) of the configured consumer groups.
    Backlog(synclag::backlog::BacklogArgs),
    /// The whole product in one command: in-process Kafka, simulated traffic with faults,
    /// the service on top, a live view, and a summary of what was detected.
    Demo(synclag::demo::DemoArgs),
    /// Produce realistic logistics and Odoo outbox traffic with injected faults.
    Simulate(synclag::sim::SimulateArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNCLAG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// First SIGTERM / Ctrl-C: graceful shutdown (stop fetching, flush, commit).
/// Second: exit at once.
fn spawn_signal_handler(shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
            }
            seen += 1;
            if seen == 1 {
                tracing::info!("shutdown requested; a second signal exits at once");
                shutdown.cancel();
            } else {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}

/// The demo owns the terminal: only warnings and errors are logged.
fn init_logging_quiet() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNCLAG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
        Command::Run {
            config,
            insecure_no_auth,
        } => {
            let mut topology = match Topology::load(&config) {
                Ok(t) => t,
                Err(errors) => {
                    eprint!("{errors}");
                    return ExitCode::from(2);
                }
            };
            topology.api.insecure_no_auth |= insecure_no_auth;
            init_logging();
            report(runtime().and_then(|rt| {
                rt.block_on(async {
                    let shutdown = tokio_util::sync::CancellationToken::new();
                    spawn_signal_handler(shutdown.clone());
                    synclag::service::run(topology, shutdown)
                        .await
                        .map_err(anyhow::Error::from)
                })
            }))
        }
        Command::Dlq(args) => {
            let topology = match Topology::load(&args.config) {
                Ok(t) => t,
                Err(errors) => {
                    eprint!("{errors}");
                    return ExitCode::from(2);
                }
            };
            init_logging();
            report(runtime().and_then(|rt| {
                rt.block_on(synclag::dlq::run_cli(topology, args.command))
                    .map_err(anyhow::Error::from)
            }))
        }
        Command::ApiToken { name, role } => {
            if synclag::auth::Role::parse(&role).is_none() || name.split_whitespace().count() != 1 {
                eprintln!(
                    "error: --name must be one word and --role one of {}",
                    synclag::auth::Role::NAMES.join(", ")
                );
                return ExitCode::from(2);
            }
            let token = synclag::auth::new_token();
            println!("token (shown once; give it to {name}): {token}");
            println!(
                "api.tokens_file line: {name} {role} {}",
                synclag::auth::hash_token(&token)
            );
            ExitCode::SUCCESS
        }
        Command::Backlog(args) => {
            init_logging();
            report(runtime().and_then(|rt| rt.block_on(synclag::backlog::run_standalone(args))))
        }
        Command::Demo(args) => {
            init_logging_quiet();
            report(runtime().and_then(|rt| {
                rt.block_on(async {
                    let quit = tokio_util::sync::CancellationToken::new();
                    spawn_signal_handler(quit.clone());
                    synclag::demo::run(args, quit).await.map(|_| ())
                })
            }))
        }
        Command::Simulate(args) => {
            init_logging();
            report(runtime().and_then(|rt| rt.block_on(synclag::sim::simulate(args))))
        }
    }
}
