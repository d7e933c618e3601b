//! `vigil bench sync` (filled in below).

use std::process::ExitCode;

use clap::Args;

/// `vigil bench sync`.
#[derive(Debug, Args)]
pub struct BenchSyncArgs {}

/// Runs the benchmark.
pub fn run_bench(_a: BenchSyncArgs) -> ExitCode {
    ExitCode::SUCCESS
}
