use std::path::PathBuf;

/// What went wrong doing something to a node. Each variant names what it was about.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("{program} not found; install it with scripts/install-deps.sh or set its path in the [mariadb] section")]
    MissingProgram { program: String },
    #[error("{what} failed: {message} (see {log})")]
    CommandFailed {
        what: String,
        message: String,
        log: PathBuf,
    },
    #[error("mariadbd of node {node} is already running as pid {pid}; stop it first")]
    AlreadyRunning { node: String, pid: u32 },
    #[error("SQL on {node}: {source}")]
    Sql {
        node: String,
        source: mysql_async::Error,
    },
    #[error("{0}")]
    Timeout(String),
    /// A value that must not reach the server (it would be spliced into a statement).
    #[error("{0}")]
    Refused(String),
}

impl NodeError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> NodeError {
        let path = path.into();
        move |source| NodeError::Io { path, source }
    }
}
