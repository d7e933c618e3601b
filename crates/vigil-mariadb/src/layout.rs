//! Where a node's files live, all under one directory.

use std::path::{Path, PathBuf};

/// A node's directory: `data/` (the datadir), `my.cnf`, the socket, the pid file and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    pub dir: PathBuf,
}

impl NodeLayout {
    pub fn new(dir: impl Into<PathBuf>) -> NodeLayout {
        NodeLayout { dir: dir.into() }
    }

    pub fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn cnf(&self) -> PathBuf {
        self.dir.join("my.cnf")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mariadbd.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("mariadbd.pid")
    }
    /// The pid of the `mariadbd` vigil last spawned for this node, written at once (its own
    /// pid file comes only after a state transfer).
    pub fn spawned_pid_file(&self) -> PathBuf {
        self.dir.join("mariadbd.spawned.pid")
    }
    /// MariaDB's error log: the first place to look when a node misbehaves.
    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }
    /// What `mariadbd` prints outside its error log (very early failures).
    pub fn stdout_log(&self) -> PathBuf {
        self.dir.join("mariadbd.out")
    }
    pub fn grastate(&self) -> PathBuf {
        self.datadir().join("grastate.dat")
    }
    /// Present from the moment a datadir is initialised for a brand-new Galera cluster until
    /// its users exist: a datadir found with it never held the cluster's data.
    pub fn unprovisioned_marker(&self) -> PathBuf {
        self.dir.join("new-datadir-unprovisioned")
    }

    /// Whether the datadir holds anything at all.
    pub fn datadir_is_empty(&self) -> Result<bool, crate::NodeError> {
        dir_is_empty(&self.datadir())
    }
}

pub(crate) fn dir_is_empty(dir: &Path) -> Result<bool, crate::NodeError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(crate::NodeError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}
