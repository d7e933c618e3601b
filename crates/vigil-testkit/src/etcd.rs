//! Real etcd members on loopback ports, for the store conformance suite and for tests that run
//! agents and proxies as separate processes.
//!
//! An [`EtcdCluster`] owns its directory and its processes: dropping it kills every member it
//! started, by pid, and removes the directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{free_port, wait_for, KillOnDrop};

/// etcd's timing in tests (fast elections on loopback and between test hosts) and pre-vote: a
/// member back from a partition does not force an election, which would extend every lease.
pub(crate) const TIMING: [&str; 5] = [
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
    "--pre-vote",
];

/// One member: its name, client, peer and metrics ports, and its process while it runs.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Plain HTTP `/health`, also when clients must speak TLS.
    pub metrics_port: u16,
    child: Option<KillOnDrop>,
}

/// The PEM files of [`EtcdCluster::start_tls`]: a private CA, the members' certificate (for
/// 127.0.0.1) and a client certificate (common name `vigil`).
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// `n` etcd members forming one cluster.
pub struct EtcdCluster {
    /// Dropped (killed) before `dir` is removed: fields drop in this order.
    pub members: Vec<EtcdMember>,
    pub dir: tempfile::TempDir,
    /// The `etcd` binary.
    pub etcd: PathBuf,
    /// Clients speak TLS and must present a certificate signed by the CA.
    pub tls: Option<EtcdTlsFiles>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers. Heartbeat 50 ms and election
    /// timeout 500 ms keep elections (and the shortest lease etcd grants) quick.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, false)
    }

    /// Like [`EtcdCluster::start`], with clients on `https://` and required to present a
    /// certificate signed by the cluster's own CA (`--client-cert-auth`).
    pub fn start_tls(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, true)
    }

    fn start_with(n: usize, tls: bool) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("vigil-etcd-")
            .tempdir()
            .expect("temp dir");
        let members: Vec<EtcdMember> = (1..=n)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                child: None,
            })
            .collect();
        let tls = tls.then(|| generate_certificates(dir.path()));
        let mut c = EtcdCluster {
            dir,
            members,
            etcd: PathBuf::from("etcd"),
            tls,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy();
        c
    }

    /// `http://127.0.0.1:P` (or `https://`) of every member.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
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
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut command = Command::new(&self.etcd);
        if let Some(t) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", m.metrics_port),
            ])
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
            .args(TIMING)
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

    /// SIGSTOP (`pause`) or SIGCONT of member `i`: a stopped member accepts connections but
    /// answers nothing, as a host whose traffic is dropped.
    pub fn pause(&self, i: usize, pause: bool) {
        let child = self.members[i].child.as_ref().expect("a running member");
        let signal = if pause { Signal::SIGSTOP } else { Signal::SIGCONT };
        kill(Pid::from_raw(child.0.id() as i32), signal).expect("signal etcd");
    }

    /// Waits until every running member reports itself healthy (it has a leader).
    pub fn wait_healthy(&self) {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/health", m.metrics_port);
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

/// Writes a private CA, a certificate for the members (127.0.0.1, localhost) and a client
/// certificate into `dir`.
fn generate_certificates(dir: &std::path::Path) -> EtcdTlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vigil test etcd CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "etcd",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_pem, client_key) = leaf(Vec::new(), "vigil", ExtendedKeyUsagePurpose::ClientAuth);
    let files = EtcdTlsFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    for (path, text) in [
        (&files.ca, ca.pem()),
        (&files.server_cert, server_pem),
        (&files.server_key, server_key),
        (&files.client_cert, client_pem),
        (&files.client_key, client_key),
    ] {
        std::fs::write(path, text).expect("write a certificate file");
    }
    files
}
