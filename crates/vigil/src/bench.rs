//! `vigil bench ...`: measurements against the alternatives, side by side.

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum BenchCommand {}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
