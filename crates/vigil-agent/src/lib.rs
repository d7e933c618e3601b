//! The agent runtime: for one database node, observe (process, SQL probe, disk), decide
//! (`vigil-core`), act (`vigil-mariadb`, `vigil-store`), and serve the HTTP API.
//!
//! ```text
//!   every probe interval:
//!     observe ── process alive? probe wsrep status, read grastate, read member reports
//!     decide ─── vigil_core::galera::decide_start / health / choose_writer
//!     act ────── init datadir, start mariadbd (bootstrap | join), take locks, publish report
//! ```
//!
//! [`local`] runs a whole cluster in one process (`vigil up`): an agent per node and an
//! in-memory store (or etcd). [`host`] runs one node's agent on its own host (`vigil agent`),
//! coordinating through etcd; [`discovery`] finds its peers in DNS when the configuration
//! says so. The agent does not decide anything itself that `vigil-core` can
//! decide.
#![forbid(unsafe_code)]

pub mod api;
pub mod arbitrator;
pub mod backup;
pub mod discovery;
pub mod host;
pub mod keys;
pub mod local;
pub mod node;
pub mod peer;
pub mod proxy;
pub mod replication;
pub mod status;

pub use node::{Agent, AgentError, AgentHandle};
pub use status::NodeStatus;
