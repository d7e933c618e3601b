//! Everything vigil does to one MariaDB node: lay out its directory, render its `my.cnf`,
//! initialise a datadir, start, stop and kill `mariadbd`, probe it over SQL, read and write
//! `grastate.dat`, recover its position with `--wsrep-recover`, and create its users. For the
//! GTID primary/replica topology: probe replication, switch a node's role over SQL, and clone
//! a new replica with mariabackup.
//!
//! This crate carries out; it does not decide. Whether to bootstrap, join or wait, or whom
//! to promote, is `vigil-core`'s call. Damaged or unexpected files are errors that name the file.
#![forbid(unsafe_code)]

pub mod admin;
pub mod clone;
pub mod cnf;
mod error;
pub mod grastate;
pub mod layout;
pub mod probe;
pub mod process;
pub mod recover;
pub mod repl;
pub mod secrets;

pub use error::NodeError;
pub use layout::NodeLayout;
