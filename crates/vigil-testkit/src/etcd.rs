//! Real etcd members on loopback ports, for the store conformance suite and for tests that run
//! agents and proxies as separate processes.
//!
//! An [`EtcdCluster`] owns its directory and its processes: dropping it kills every member it
//! started, by pid, and removes the directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for, KillOnDrop};

/// One member: its name, client and peer ports, and its process while it runs.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<KillOnDrop>,
}

/// `n` etcd members forming one cluster.
pub struct EtcdCluster {
    /// Dropped (killed) before `dir` is removed: fields drop in this order.
    pub members: Vec<EtcdMember>,
    pub dir: tempfile::TempDir,
    /// The `etcd` binary.
    pub etcd: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers. Heartbeat 50 ms and election
    /// timeout 500 ms keep elections (and the shortest lease etcd grants) quick.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("vigil-etcd-")
            .tempdir()
            .expect("temp dir");
        let members: Vec<EtcdMember> = (1..=n)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut c = EtcdCluster {
            dir,
            members,
            etcd: PathBuf::from("etcd"),
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy();
        c
    }

    /// `http://127.0.0.1:P` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again, after [`EtcdCluster::kill`], on its existing data).
    pub fn start_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", self.members[i].name)))
            .expect("etcd log file");
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&self.etcd)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "vigil-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start etcd (scripts/install-deps.sh installs etcd-server)");
        m.child = Some(KillOnDrop(child));
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].child = None;
    }

    /// Waits until every running member reports itself healthy (it has a leader).
    pub fn wait_healthy(&self) {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/health", m.client_port);
            wait_for(
                &format!("etcd member {} healthy", m.name),
                Duration::from_secs(30),
                || {
                    let body = ureq::get(&url)
                        .timeout(Duration::from_secs(1))
                        .call()
                        .ok()?
                        .into_string()
                        .ok()?;
                    body.contains("\"health\":\"true\"").then_some(())
                },
            );
        }
    }
}
