//! The `vigil` command: thin wiring of the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "HA manager for MariaDB clusters, and sparse image sync"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replicate directories of sparse disk images, locally or to a `vigil sync serve`.
    Sync(vigil_sync::cli::SyncCommand),
    /// Benchmarks against the tools a user would otherwise use.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// vigil sync vs cp and rsync on generated sparse images.
    Sync(vigil_sync::bench::BenchSyncArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Sync(c) => vigil_sync::cli::run_sync(c),
        Command::Bench(Bench::Sync(a)) => vigil_sync::bench::run_bench(a),
    }
}
