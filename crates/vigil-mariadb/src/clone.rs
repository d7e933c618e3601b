//! Cloning a new replica from a running node with mariabackup.
//!
//! ```text
//!  donor:  mariabackup --backup --stream=mbstream ──► stream ──► mbstream -x -C clone-incoming/  :joiner
//!                                                   then mariabackup --prepare clone-incoming/
//!                                                   then clone-incoming/ → data/, and
//!                                                   xtrabackup_binlog_info → GtidPos
//! ```
//!
//! The two halves ([`backup_to`] on the donor, [`extract_from`] + [`finish`] on the joiner)
//! only share a byte stream: the agents carry it over their API (`GET /backup`), and
//! [`clone_local`] connects them through an in-process pipe. The datadir stays empty until a
//! complete, prepared copy is moved in, so an interrupted clone never leaves a partial datadir
//! that a restarted agent would take for the node's data. The donor's credentials come from the
//! `[mariabackup]` group of its `my.cnf` (mode 0600), never from the command line.
//! After a clone, the caller starts `mariadbd` on it, then
//! [`crate::repl::adopt_clone_position`] and [`crate::repl::start_replication`].

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use vigil_core::replication::GtidPos;

use crate::process::Binaries;
use crate::{NodeError, NodeLayout};

/// The file mariabackup writes into the backup: `binlog-file<TAB>offset<TAB>gtid-position`.
pub const BINLOG_INFO: &str = "xtrabackup_binlog_info";

/// Streams a hot backup of the running donor into `sink` (mbstream format) and returns the
/// number of bytes sent. mariabackup's messages go to `<donor dir>/mariabackup-backup.log`.
/// `sink` is shut down at the end, so its reader sees the end of the stream.
pub async fn backup_to<W: AsyncWrite + Unpin>(
    bins: &Binaries,
    donor: &NodeLayout,
    sink: &mut W,
) -> Result<u64, NodeError> {
    let log = donor.dir.join("mariabackup-backup.log");
    let tmp = donor.dir.join("backup-tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(NodeError::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(NodeError::io(&tmp))?;
    let err = std::fs::File::create(&log).map_err(NodeError::io(&log))?;
    let mut child = Command::new(&bins.mariabackup)
        // --defaults-file must come first; the [mariabackup] group holds user and password.
        .arg(format!("--defaults-file={}", donor.cnf().display()))
        .arg("--backup")
        .arg("--stream=mbstream")
        .arg(format!("--target-dir={}", tmp.display()))
        .arg(format!("--socket={}", donor.socket().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(NodeError::io(&bins.mariabackup))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let copied = tokio::io::copy(&mut stdout, sink).await;
    let copied = match copied {
        Ok(n) => sink.shutdown().await.map(|_| n),
        Err(e) => Err(e),
    };
    let copied = match copied {
        Ok(n) => n,
        Err(e) => {
            // The receiving side went away: stop the backup.
            let _ = child.kill().await;
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(NodeError::Io {
                path: PathBuf::from(format!("backup stream from {}", donor.dir.display())),
                source: e,
            });
        }
    };
    let status = child.wait().await.map_err(NodeError::io(&bins.mariabackup))?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !status.success() {
        return Err(NodeError::CommandFailed {
            what: "mariabackup --backup".into(),
            message: status.to_string(),
            log,
        });
    }
    Ok(copied)
}

/// Where a clone is received and prepared before it becomes the datadir.
pub fn incoming_dir(target: &NodeLayout) -> PathBuf {
    target.dir.join("clone-incoming")
}

/// Extracts an mbstream from `source` into the joiner's staging directory
/// ([`incoming_dir`]); the datadir, which must be empty, is not touched until [`finish`].
/// Returns the number of bytes received. `mbstream`'s messages go to `<joiner dir>/mbstream.log`.
pub async fn extract_from<R: AsyncRead + Unpin>(
    bins: &Binaries,
    target: &NodeLayout,
    source: &mut R,
) -> Result<u64, NodeError> {
    let datadir = target.datadir();
    if !target.datadir_is_empty()? {
        return Err(NodeError::BadFile {
            path: datadir,
            message: "is not empty; a clone needs an empty datadir (move the old one aside first)".into(),
        });
    }
    // What an earlier, interrupted clone left here is a partial copy, never the node's data.
    discard(target)?;
    let incoming = incoming_dir(target);
    std::fs::create_dir_all(&incoming).map_err(NodeError::io(&incoming))?;
    let log = target.dir.join("mbstream.log");
    let err = std::fs::File::create(&log).map_err(NodeError::io(&log))?;
    let mut child = Command::new(&bins.mbstream)
        .arg("-x")
        .arg("-C")
        .arg(&incoming)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(NodeError::io(&bins.mbstream))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let copied = tokio::io::copy(source, &mut stdin).await;
    let copied = match copied {
        Ok(n) => stdin.shutdown().await.map(|_| n),
        Err(e) => Err(e),
    };
    drop(stdin);
    let status = child.wait().await.map_err(NodeError::io(&bins.mbstream))?;
    let copied = copied.map_err(|source| NodeError::Io {
        path: PathBuf::from(format!("backup stream into {}", incoming.display())),
        source,
    });
    if copied.is_ok() && !status.success() {
        return Err(NodeError::CommandFailed {
            what: "mbstream -x".into(),
            message: status.to_string(),
            log,
        });
    }
    copied
}

/// Makes the received backup consistent (`mariabackup --prepare`; messages in
/// `<joiner dir>/mariabackup-prepare.log`), moves it into place as the datadir and returns the
/// GTID position it holds. Call it only when the whole stream arrived and the donor's
/// mariabackup succeeded.
pub async fn finish(bins: &Binaries, target: &NodeLayout) -> Result<GtidPos, NodeError> {
    let incoming = incoming_dir(target);
    let log = target.dir.join("mariabackup-prepare.log");
    let out = std::fs::File::create(&log).map_err(NodeError::io(&log))?;
    let err = out.try_clone().map_err(NodeError::io(&log))?;
    let status = Command::new(&bins.mariabackup)
        // The backup carries its own settings (backup-my.cnf); nothing else applies.
        .arg("--no-defaults")
        .arg("--prepare")
        .arg(format!("--target-dir={}", incoming.display()))
        .arg("--use-memory=64M")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(NodeError::io(&bins.mariabackup))?;
    if !status.success() {
        return Err(NodeError::CommandFailed {
            what: "mariabackup --prepare".into(),
            message: status.to_string(),
            log,
        });
    }
    let gtid = read_binlog_info(&incoming.join(BINLOG_INFO))?;
    let datadir = target.datadir();
    // Only an empty datadir is replaced (remove_dir refuses anything else).
    match std::fs::remove_dir(&datadir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(NodeError::Io {
                path: datadir,
                source,
            })
        }
    }
    std::fs::rename(&incoming, &datadir).map_err(NodeError::io(&datadir))?;
    Ok(gtid)
}

/// The joiner's whole half: [`extract_from`] `source`, then [`finish`]; on any failure the
/// partial copy is removed and the datadir stays empty. For a stream that ends in an error
/// when the donor fails (the agents' API); [`clone_local`] instead waits for the donor's own
/// result before it finishes.
pub async fn receive<R: AsyncRead + Unpin>(
    bins: &Binaries,
    target: &NodeLayout,
    source: &mut R,
) -> Result<GtidPos, NodeError> {
    let received = match extract_from(bins, target, source).await {
        Ok(_) => finish(bins, target).await,
        Err(e) => Err(e),
    };
    discard_if_failed(target, received)
}

/// `result`, after removing the received copy if it is an error.
fn discard_if_failed<T>(target: &NodeLayout, result: Result<T, NodeError>) -> Result<T, NodeError> {
    if result.is_err() {
        discard(target)?;
    }
    result
}

/// Removes a received copy that will not be used (an interrupted or failed clone).
fn discard(target: &NodeLayout) -> Result<(), NodeError> {
    let incoming = incoming_dir(target);
    match std::fs::remove_dir_all(&incoming) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NodeError::Io {
            path: incoming,
            source,
        }),
    }
}

/// Reads the GTID position from a backup's `xtrabackup_binlog_info`.
pub fn read_binlog_info(path: &Path) -> Result<GtidPos, NodeError> {
    let text = std::fs::read_to_string(path).map_err(NodeError::io(path))?;
    parse_binlog_info(&text).map_err(|message| NodeError::BadFile {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses `mariadb-bin.000002<TAB>1234<TAB>0-1-100` (the position may list several domains,
/// and is empty when the donor's binlog holds no transaction yet).
pub fn parse_binlog_info(text: &str) -> Result<GtidPos, String> {
    let line = text.trim_end_matches(['\n', '\r']);
    let fields: Vec<&str> = line.split('\t').collect();
    let (file, offset, gtid) = match fields[..] {
        [file, offset] => (file, offset, ""),
        [file, offset, gtid] => (file, offset, gtid),
        _ => {
            return Err(format!(
                "expected `binlog-file<TAB>offset<TAB>gtid-position`, found {line:?}"
            ))
        }
    };
    if file.trim().is_empty() || offset.trim().parse::<u64>().is_err() {
        return Err(format!("expected a binlog file and offset, found {line:?}"));
    }
    gtid.parse().map_err(|e| format!("{e}"))
}

/// Clones `donor` (running) into `target` (stopped, empty datadir) on this machine: the backup
/// streams through a pipe in this process into mbstream, then the copy is prepared. Returns
/// the GTID position the clone holds.
pub async fn clone_local(
    bins: &Binaries,
    donor: &NodeLayout,
    target: &NodeLayout,
) -> Result<GtidPos, NodeError> {
    let (writer, reader) = tokio::io::duplex(1 << 20);
    // Each half owns its end of the pipe and drops it when done, so the other sees the end.
    let send = async move {
        let mut writer = writer;
        backup_to(bins, donor, &mut writer).await
    };
    let receiving = async move {
        let mut reader = reader;
        extract_from(bins, target, &mut reader).await
    };
    let received = match tokio::join!(send, receiving) {
        (Ok(_), Ok(_)) => finish(bins, target).await,
        // mariabackup's own failure explains the rest.
        (Err(e @ NodeError::CommandFailed { .. }), _) => Err(e),
        // The receiving side failing breaks the pipe of the sending side.
        (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
    };
    discard_if_failed(target, received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binlog_info() {
        assert_eq!(
            parse_binlog_info("mariadb-bin.000002\t1234\t0-1-100\n")
                .unwrap()
                .to_string(),
            "0-1-100"
        );
        assert_eq!(
            parse_binlog_info("mariadb-bin.000002\t1234\t0-1-100,1-2-5")
                .unwrap()
                .to_string(),
            "0-1-100,1-2-5"
        );
        assert!(parse_binlog_info("mariadb-bin.000001\t329\t\n")
            .unwrap()
            .is_empty());
        for bad in [
            "",
            "mariadb-bin.000001",
            "mariadb-bin.000001\tx\t0-1-1",
            "f\t1\t0-1",
        ] {
            assert!(parse_binlog_info(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_or_malformed_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BINLOG_INFO);
        let err = read_binlog_info(&path).unwrap_err().to_string();
        assert!(err.contains("xtrabackup_binlog_info"), "{err}");
        std::fs::write(&path, "garbage\n").unwrap();
        let err = read_binlog_info(&path).unwrap_err();
        assert!(
            matches!(&err, NodeError::BadFile { path: p, .. } if p == &path),
            "{err}"
        );
    }
}
