//! vigil's decisions, and nothing else: from an observed view of the cluster, its configuration
//! and (where time matters) `now`, compute what should happen. No I/O, no clock, no async:
//! the agent observes, calls in here, and carries out the result.
//!
//! - [`config`]: the typed cluster configuration and its validation.
//! - [`galera`]: Galera health, how a node starts (bootstrap, join, recovery election), writer
//!   choice, stop order, restart backoff.
//! - [`routing`]: the proxy's routing table and its blacklist of failing backends.
#![forbid(unsafe_code)]

pub mod config;
pub mod galera;
pub mod replication;
pub mod routing;
