//! Every run's logs are kept, compressed, so that any window of any run can be explained
//! afterwards: the agents', etcd's and the proxy's logs, each node's MariaDB error log, and the
//! run's own report (faults, episodes, the timeline). Only the newest runs are kept.
//! Datadirs, `my.cnf` (it holds the SST password) and the secrets are never archived.

use std::path::{Path, PathBuf};

/// The directories whose contents are data, not logs.
fn is_data_dir(name: &str) -> bool {
    name == "data"
        || name.starts_with("data.kept-")
        || name == "etcd"
        || name == "clone-incoming"
        || name == "secrets"
}

/// The log files under `dir`, relative to it.
fn log_files(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = rel.join(&name);
        match e.file_type() {
            Ok(t) if t.is_dir() && !is_data_dir(&name) => log_files(dir, &path, out),
            Ok(t) if t.is_file() && (name.ends_with(".log") || name.ends_with(".out")) => out.push(path),
            _ => {}
        }
    }
}

/// Archives the logs under `cluster_dir` and `report` (written as `chaos-report.txt`) into
/// `logs_dir/<name>.tar.gz`, then deletes all but the newest `keep` archives there. Returns
/// the archive's path.
pub fn keep(
    cluster_dir: &Path,
    report: &str,
    logs_dir: &Path,
    name: &str,
    keep: usize,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(logs_dir)?;
    std::fs::write(cluster_dir.join("chaos-report.txt"), report)?;
    let mut files = Vec::new();
    log_files(cluster_dir, Path::new(""), &mut files);
    files.push("chaos-report.txt".into());
    files.sort();
    let archive = logs_dir.join(format!("{name}.tar.gz"));
    // The servers still run and write their logs: GNU tar then exits with 1 ("some files were
    // changed while being archived"), and the archive holds them as they were when read. A
    // failed run lost its logs to that once.
    let out = std::process::Command::new("tar")
        .arg("--warning=no-file-changed")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(cluster_dir)
        .args(&files)
        .output()?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(std::io::Error::other(format!(
            "tar: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut archives: Vec<PathBuf> = std::fs::read_dir(logs_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .collect();
    archives.sort();
    let excess = archives.len().saturating_sub(keep.max(1));
    for old in &archives[..excess] {
        let _ = std::fs::remove_file(old);
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_archived_without_data_and_only_the_newest_runs_stay() {
        let cluster = tempfile::tempdir().unwrap();
        let c = cluster.path();
        for d in ["db1/db1/data", "db1/etcd", "secrets"] {
            std::fs::create_dir_all(c.join(d)).unwrap();
        }
        for (f, text) in [
            ("proxy.log", "routes"),
            ("db1/agent.log", "agent"),
            ("db1/db1/error.log", "mariadb"),
            ("db1/db1/my.cnf", "wsrep_sst_auth=vigil_sst:secret"),
            ("db1/db1/data/ddl_recovery.log", "data"),
            ("db1/etcd/wal.log", "data"),
            ("secrets/app.password", "secret"),
        ] {
            std::fs::write(c.join(f), text).unwrap();
        }
        let logs = tempfile::tempdir().unwrap();
        for run in ["run-1", "run-2", "run-3"] {
            keep(c, "report", logs.path(), run, 2).unwrap();
        }
        let mut left: Vec<String> = std::fs::read_dir(logs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["run-2.tar.gz", "run-3.tar.gz"]);
        let listing = std::process::Command::new("tar")
            .arg("tzf")
            .arg(logs.path().join("run-3.tar.gz"))
            .output()
            .unwrap();
        let mut names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "chaos-report.txt",
                "db1/agent.log",
                "db1/db1/error.log",
                "proxy.log"
            ]
        );
    }
}
