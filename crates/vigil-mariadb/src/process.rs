//! Starting, stopping and killing `mariadbd`, and initialising a datadir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use vigil_core::config::MariadbSection;

use crate::{NodeError, NodeLayout};

/// The MariaDB programs vigil runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub mariadbd: PathBuf,
    pub install_db: PathBuf,
    /// Takes a hot backup of a running node (a new replica's clone).
    pub mariabackup: PathBuf,
    /// Extracts mariabackup's `--stream=mbstream` output.
    pub mbstream: PathBuf,
}

/// Finds `garbd` (the Galera arbitrator, Debian package galera-arbitrator-4).
pub fn find_garbd(section: &MariadbSection) -> Result<PathBuf, NodeError> {
    find(
        &section.garbd,
        &["/usr/bin/garbd", "/usr/sbin/garbd", "/usr/local/bin/garbd"],
    )
}

impl Binaries {
    /// The configured paths, or the first existing one of the usual places.
    pub fn discover(section: &MariadbSection) -> Result<Binaries, NodeError> {
        Ok(Binaries {
            mariadbd: find(
                &section.mariadbd,
                &[
                    "/usr/sbin/mariadbd",
                    "/usr/bin/mariadbd",
                    "/usr/local/sbin/mariadbd",
                ],
            )?,
            install_db: find(
                &section.install_db,
                &[
                    "/usr/bin/mariadb-install-db",
                    "/usr/local/bin/mariadb-install-db",
                    "/usr/bin/mysql_install_db",
                ],
            )?,
            // No configuration key for these yet: the usual places only.
            mariabackup: find(
                "",
                &[
                    "/usr/bin/mariabackup",
                    "/usr/bin/mariadb-backup",
                    "/usr/local/bin/mariabackup",
                ],
            )?,
            mbstream: find(
                "",
                &[
                    "/usr/bin/mbstream",
                    "/usr/bin/mariadb-backup-mbstream",
                    "/usr/local/bin/mbstream",
                ],
            )?,
        })
    }
}

fn find(configured: &str, candidates: &[&str]) -> Result<PathBuf, NodeError> {
    if !configured.is_empty() {
        let p = PathBuf::from(configured);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(NodeError::MissingProgram {
                program: configured.into(),
            })
        };
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| NodeError::MissingProgram {
            program: candidates[0].into(),
        })
}

/// Creates the system tables in an empty datadir (`mariadb-install-db`). Root gets only
/// `unix_socket` authentication: no password exists to leak.
pub async fn init_datadir(bins: &Binaries, layout: &NodeLayout) -> Result<(), NodeError> {
    let datadir = layout.datadir();
    std::fs::create_dir_all(&datadir).map_err(NodeError::io(&datadir))?;
    let log = layout.dir.join("install-db.log");
    let out = std::fs::File::create(&log).map_err(NodeError::io(&log))?;
    let err = out.try_clone().map_err(NodeError::io(&log))?;
    let status = Command::new(&bins.install_db)
        .arg(format!("--defaults-file={}", layout.cnf().display()))
        .arg("--auth-root-authentication-method=socket")
        .arg("--skip-test-db")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .await
        .map_err(NodeError::io(&bins.install_db))?;
    if status.success() {
        Ok(())
    } else {
        Err(NodeError::CommandFailed {
            what: "mariadb-install-db".into(),
            message: status.to_string(),
            log,
        })
    }
}

/// How to start the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartMode {
    /// No Galera: a node of the replication topology (its role is set later over SQL).
    Plain,
    /// Start a new Primary component (`--wsrep-new-cluster`) from this node's data. `position`
    /// (`uuid:seqno`) is where the data stands when `grastate.dat` does not say (after a
    /// crash): without it Galera starts a new history ("Starting new group from scratch") at
    /// seqno 0, and every other member then needs a full snapshot instead of an incremental
    /// transfer. `None` for a new, empty datadir.
    Bootstrap { position: Option<String> },
    /// Join the cluster at `wsrep_cluster_address`, asking the named node (if any) for the
    /// state transfer; any other may serve if it cannot. `position` (`uuid:seqno`) is where
    /// the data stands when `grastate.dat` does not say (after a crash): without it the server
    /// starts from -1 and needs a full snapshot instead of an incremental transfer.
    Join {
        donor: Option<String>,
        position: Option<String>,
    },
}

/// A running `mariadbd` started by this process.
pub struct Server {
    child: Child,
    pid: u32,
}

/// The pid of this node's running `mariadbd`: the one in its pid file, or, since `mariadbd`
/// writes that only once its storage engines start (after a joiner's state transfer), the one
/// recorded when it was spawned. Either counts only while that process is a `mariadbd` run
/// with this node's `my.cnf` (a pid is reused).
pub fn running_pid(layout: &NodeLayout) -> Option<u32> {
    let ours = format!("--defaults-file={}", layout.cnf().display());
    [layout.pid_file(), layout.spawned_pid_file()]
        .iter()
        .find_map(|file| {
            let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let mut args = cmdline.split('\0');
            let mariadbd = args.next().is_some_and(|a| a.ends_with("mariadbd"));
            (mariadbd && args.any(|a| a == ours)).then_some(pid)
        })
}

/// Fails if a `mariadbd` from an earlier run still owns this node's pid file.
pub fn check_not_running(node: &str, layout: &NodeLayout) -> Result<(), NodeError> {
    match running_pid(layout) {
        Some(pid) => Err(NodeError::AlreadyRunning {
            node: node.into(),
            pid,
        }),
        None => Ok(()),
    }
}

/// Stops a `mariadbd` that an earlier agent of this node left running (the agent was killed;
/// the server was not): SIGTERM, then SIGKILL if it has not exited within `timeout`. Only a
/// process that owns this node's pid file and runs with this node's `my.cnf` is touched.
/// Returns the pid it stopped, if any.
pub async fn stop_orphan(layout: &NodeLayout, timeout: Duration) -> Option<u32> {
    let Some(pid) = running_pid(layout) else {
        if kill_leftovers(layout) {
            tracing::warn!("killed what an earlier mariadbd of this node left running (a state transfer)");
        }
        return None;
    };
    let ours = format!("--defaults-file={}", layout.cnf().display());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if !String::from_utf8_lossy(&cmdline).split('\0').any(|a| a == ours) {
        return None;
    }
    // a zombie (exited, not yet reaped by its new parent) has an empty command line
    let alive = || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + timeout;
    while alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive() {
        let _ = kill(target, Signal::SIGKILL);
        while alive() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = killpg(target, Signal::SIGKILL);
    Some(pid)
}

/// Kills what the last `mariadbd` vigil spawned for this node left running in its process
/// group once it died (a state transfer script, its socat or mbstream), if a process of that
/// group names this node's `my.cnf` or datadir: a pid is reused, a group with live members is
/// not. Returns whether it killed any.
pub fn kill_leftovers(layout: &NodeLayout) -> bool {
    let Some(pgid) = std::fs::read_to_string(layout.spawned_pid_file())
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    else {
        return false;
    };
    let cnf = layout.cnf().display().to_string();
    let datadir = layout.datadir().display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    let ours = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_group(*pid) == Some(pgid))
        .any(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&cnf) || cmdline.contains(&datadir)
        });
    ours && killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
}

/// The process group of `pid` (`/proc/<pid>/stat`, the field after the state).
fn process_group(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name is in parentheses and may hold spaces
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

impl Server {
    /// Starts the Galera arbitrator: a member that votes in the group but holds no data.
    /// It needs a running Primary component to connect to.
    pub fn start_garbd(
        garbd: &Path,
        dir: &Path,
        name: &str,
        group: &str,
        peers: &[String],
        listen: &str,
        suspect_timeout_ms: u64,
    ) -> Result<Server, NodeError> {
        std::fs::create_dir_all(dir).map_err(NodeError::io(dir))?;
        let log = dir.join("garbd.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(NodeError::io(&log))?;
        let err = out.try_clone().map_err(NodeError::io(&log))?;
        let child = Command::new(garbd)
            .arg("--name")
            .arg(name)
            .arg("--group")
            .arg(group)
            .arg("--address")
            .arg(format!("gcomm://{}", peers.join(",")))
            .arg("--options")
            .arg(format!(
                "gmcast.listen_addr=tcp://{listen};{}",
                crate::cnf::failure_detection(suspect_timeout_ms)
            ))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(NodeError::io(garbd))?;
        let pid = child.id().expect("a just-spawned child has a pid");
        Ok(Server { child, pid })
    }

    pub async fn start(bins: &Binaries, layout: &NodeLayout, mode: StartMode) -> Result<Server, NodeError> {
        // A joiner starts from an empty datadir, which must exist for the state transfer.
        let datadir = layout.datadir();
        std::fs::create_dir_all(&datadir).map_err(NodeError::io(&datadir))?;
        let out_path = layout.stdout_log();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(NodeError::io(&out_path))?;
        let err = out.try_clone().map_err(NodeError::io(&out_path))?;
        let mut cmd = Command::new(&bins.mariadbd);
        cmd.arg(format!("--defaults-file={}", layout.cnf().display()));
        match mode {
            StartMode::Plain => {}
            StartMode::Bootstrap { position } => {
                cmd.arg("--wsrep-new-cluster");
                if let Some(position) = position {
                    cmd.arg(format!("--wsrep-start-position={position}"));
                }
            }
            StartMode::Join { donor, position } => {
                if let Some(donor) = donor {
                    // The trailing comma lets Galera choose another donor if this one cannot serve.
                    cmd.arg(format!("--wsrep-sst-donor={donor},"));
                }
                if let Some(position) = position {
                    cmd.arg(format!("--wsrep-start-position={position}"));
                }
            }
        }
        // A process group of its own: the state transfer scripts it starts (and their socat and
        // mbstream) are in it, and go with it ([`Server::exited`], [`stop_orphan`]).
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(NodeError::io(&bins.mariadbd))?;
        let pid = child.id().expect("a just-spawned child has a pid");
        // Found again by a later agent if this one dies before mariadbd writes its pid file
        // (without it, only from then on: the server runs either way).
        let _ = std::fs::write(layout.spawned_pid_file(), format!("{pid}\n"));
        Ok(Server { child, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited (and reaps it if so). What it left running in its
    /// process group is killed then: a joiner's state transfer script outlives a killed
    /// `mariadbd` by minutes, and the next server's transfer fails on it ("previous SST script
    /// still running").
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten()?;
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        Some(status)
    }

    /// Clean shutdown: SIGTERM, then wait up to `timeout` for the process to exit. Galera
    /// writes the node's position and, on the last node of a component, `safe_to_bootstrap: 1`.
    pub async fn stop(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, NodeError> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                status.map_err(NodeError::io(format!("/proc/{}", self.pid)))
            }
            Err(_) => Err(NodeError::Timeout(format!(
                "mariadbd (pid {}) did not stop within {} s of SIGTERM",
                self.pid,
                timeout.as_secs()
            ))),
        }
    }

    /// SIGKILL, as a crash would, to the server and whatever it started.
    pub async fn kill(&mut self) -> Result<(), NodeError> {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        self.child
            .wait()
            .await
            .map(|_| ())
            .map_err(NodeError::io(format!("/proc/{}", self.pid)))
    }
}

/// Polls until `path` (a unix socket) accepts connections, or `timeout` passes.
pub async fn wait_for_socket(path: &Path, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    /// A process that looks like this node's `mariadbd` to `/proc/<pid>/cmdline`: a shell
    /// started under the name `mariadbd` with the node's `--defaults-file` among its arguments.
    fn lookalike(dir: &Path, layout: &NodeLayout) -> std::process::Child {
        let name = dir.join("mariadbd");
        std::os::unix::fs::symlink("/bin/sh", &name).unwrap();
        let child = std::process::Command::new(&name)
            .arg("-c")
            .arg("while :; do sleep 0.1; done")
            .arg(format!("--defaults-file={}", layout.cnf().display()))
            .spawn()
            .unwrap();
        // spawn() returns once the kernel has switched the child to the new program, a moment
        // before it lays out the new argument list: until then /proc/<pid>/cmdline is empty.
        let execed = (0..500).any(|_| {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
            if cmdline.starts_with(name.as_os_str().as_encoded_bytes()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        });
        assert!(execed, "the look-alike never showed its argument list");
        child
    }

    #[tokio::test]
    async fn a_server_that_has_not_written_its_pid_file_yet_is_found_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let layout = NodeLayout::new(dir.path().join("n1"));
        std::fs::create_dir_all(layout.datadir()).unwrap();
        let mut child = lookalike(dir.path(), &layout);
        assert_eq!(running_pid(&layout), None, "no pid file of any kind");
        // What Server::start records at once; mariadbd's own pid file comes after a joiner's
        // state transfer.
        std::fs::write(layout.spawned_pid_file(), format!("{}\n", child.id())).unwrap();
        assert_eq!(running_pid(&layout), Some(child.id()));
        // Another node's server (its own my.cnf) is never taken for this one's.
        let other = NodeLayout::new(dir.path().join("n2"));
        std::fs::create_dir_all(other.datadir()).unwrap();
        std::fs::write(other.spawned_pid_file(), format!("{}\n", child.id())).unwrap();
        assert_eq!(running_pid(&other), None);

        assert_eq!(
            stop_orphan(&layout, Duration::from_secs(5)).await,
            Some(child.id())
        );
        let _ = child.wait();
        assert_eq!(running_pid(&layout), None, "stopped");
    }

    #[test]
    fn what_a_dead_server_left_in_its_process_group_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = NodeLayout::new(dir.path().join("n1"));
        std::fs::create_dir_all(layout.datadir()).unwrap();
        // The "server" leads its group, starts a "state transfer script" naming the datadir,
        // and dies, as a killed joiner does.
        let script = format!(
            "sh -c 'while :; do sleep 0.1; done' sst --datadir '{}' >/dev/null 2>&1 & echo $!",
            layout.datadir().display()
        );
        let leader = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = leader.wait_with_output().unwrap();
        let leftover: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let alive = || std::fs::read(format!("/proc/{leftover}/cmdline")).is_ok_and(|c| !c.is_empty());
        assert!(alive());
        let pgid = process_group(leftover).unwrap();

        // Another node's leftovers are not this one's.
        let other = NodeLayout::new(dir.path().join("n2"));
        std::fs::create_dir_all(other.datadir()).unwrap();
        std::fs::write(other.spawned_pid_file(), format!("{pgid}\n")).unwrap();
        assert!(!kill_leftovers(&other), "another node's leftovers were killed");
        assert!(alive());

        std::fs::write(layout.spawned_pid_file(), format!("{pgid}\n")).unwrap();
        assert!(kill_leftovers(&layout));
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !alive()
        });
        assert!(gone, "the leftover still runs");
    }
}
