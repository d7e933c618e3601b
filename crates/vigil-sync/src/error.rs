//! The errors a caller of this crate can tell apart.

use std::io;
use std::path::PathBuf;

/// Everything that can stop a sync, a serve or a verify.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A file operation failed on a real path.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A relative path from the command line, a peer or a record is unsafe or malformed.
    #[error("refused path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    /// An endpoint specification (`DIR` or `host:port/path`) could not be understood.
    #[error("bad endpoint {spec:?}: {reason}")]
    BadEndpoint { spec: String, reason: String },
    /// Both endpoints are remote; one side must be a local directory.
    #[error("both {src} and {dst} are remote; one side must be a local directory")]
    BothRemote { src: String, dst: String },
    /// Another `vigil sync` holds the lock of this pair of trees.
    #[error("another vigil sync is already running on {path}")]
    Locked { path: PathBuf },
    /// The shared token could not be read or is stored unsafely.
    #[error("token {origin}: {reason}")]
    Token { origin: String, reason: String },
    /// Certificates or keys could not be loaded, or TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The network connection failed.
    #[error("connection to {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The peer refused our credentials (or we refused theirs).
    #[error("{addr} refused authentication: {reason}")]
    AuthRefused { addr: String, reason: String },
    /// The peer sent something that does not follow the protocol.
    #[error("protocol error with {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    /// The remote side reported an error for one operation.
    #[error("remote {peer} failed: {reason}")]
    Remote { peer: String, reason: String },
    /// Some files could not be synced; the others were.
    #[error("{failed} file(s) failed to sync (first: {first})")]
    Partial { failed: usize, first: String },
    /// A file changed while it was being synced; the next run picks up the new version.
    #[error("{path} changed on the {side} side while syncing")]
    Changed { path: String, side: &'static str },
    /// `verify` found differences.
    #[error("{0} difference(s) found")]
    Differences(usize),
}

impl SyncError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SyncError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn proto(peer: &str, reason: impl Into<String>) -> Self {
        SyncError::Protocol {
            peer: peer.to_string(),
            reason: reason.into(),
        }
    }

    /// What the operator can do about it, to print after the error.
    pub fn hint(&self) -> &'static str {
        match self {
            SyncError::Io { .. } => "check that the path exists and is accessible, then rerun (finished files are kept)",
            SyncError::BadPath { .. } => "paths must stay inside the tree: no '..', no absolute paths, no symlinks",
            SyncError::BadEndpoint { .. } => "use a local directory or host:port/path of a `vigil sync serve`",
            SyncError::BothRemote { .. } => "run the sync on a host that has one of the trees locally",
            SyncError::Locked { .. } => "wait for the other run to finish",
            SyncError::Token { .. } => "put the token in a file readable only by its owner (chmod 600) and pass --token-file, or set VIGIL_SYNC_TOKEN",
            SyncError::Tls(_) => "check --ca/--cert/--key; `vigil sync cert` generates a matching set",
            SyncError::Connect { .. } => "check that `vigil sync serve` runs there and the address is right",
            SyncError::AuthRefused { .. } => "use the same token (or a client certificate signed by the server's --client-ca)",
            SyncError::Protocol { .. } => "make sure both sides run the same vigil version",
            SyncError::Remote { .. } => "see the server's log for details, then rerun",
            SyncError::Partial { .. } => "fix the cause and rerun; finished files are kept and will not be copied again",
            SyncError::Changed { .. } => "rerun to sync the newer version",
            SyncError::Differences(_) => "run `vigil sync` again, then verify",
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = SyncError> = std::result::Result<T, E>;
