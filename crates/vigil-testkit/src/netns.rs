//! Test hosts on one machine: each host is a network namespace with its own address on
//! 10.66.0.0/24, all plugged into a bridge that lives in a namespace of its own. Nothing is
//! added to the machine's own network namespace.
//!
//! Faults are iptables rules inside the hosts' namespaces: a partition drops traffic between
//! hosts of different sides (in both directions, on both hosts), packet loss drops a share of
//! a host's incoming packets. [`Net::heal`] removes them all.
//!
//! Processes run in a host with [`Net::command`] (`nsenter --net`), and the test's own
//! clients with [`Net::run_in`], on a thread that has moved into the host's namespace. The
//! caller owns the processes it starts and must stop them before the [`Net`] is dropped;
//! dropping it deletes the namespaces, also when a test panics.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// One host: its name in the test, its namespace and its address.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// A set of hosts connected through one bridge.
pub struct Net {
    bridge_ns: String,
    pub hosts: Vec<Host>,
}

/// Runs `ip` (or another admin command) and panics with its error output if it fails: a test
/// cannot go on with half a network.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/install-deps.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Net {
    /// Creates one namespace per name, with addresses 10.66.0.1, .2, ... in the order given.
    /// Namespaces left behind by an earlier test process that no longer runs are removed first.
    pub fn create(names: &[&str]) -> Net {
        remove_stale();
        let prefix = format!("vg{}", std::process::id());
        let bridge_ns = format!("{prefix}-br");
        let mut net = Net {
            bridge_ns: bridge_ns.clone(),
            hosts: Vec::new(),
        };
        run("ip", &["netns", "add", &bridge_ns]);
        run("ip", &["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &bridge_ns, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{prefix}-{name}");
            let addr = Ipv4Addr::new(10, 66, 0, i as u8 + 1);
            let port = format!("p{i}");
            run("ip", &["netns", "add", &ns]);
            net.hosts.push(Host {
                name: name.to_string(),
                ns: ns.clone(),
                addr,
            });
            run(
                "ip",
                &[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                    &bridge_ns,
                ],
            );
            run(
                "ip",
                &["-n", &bridge_ns, "link", "set", &port, "master", "br0", "up"],
            );
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            );
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no test host {name}"))
    }

    /// `program` to be run inside `host`'s namespace.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host(host).ns))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a new thread that has moved into `host`'s namespace, so that every socket
    /// it opens is that host's; returns what `f` returns.
    pub fn run_in<T: Send + 'static>(&self, host: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn_in(host, f).join().expect("thread in a test host")
    }

    /// Like [`Net::run_in`], without waiting for `f`.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.host(host).ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
            f()
        })
    }

    fn iptables(&self, host: &str, rule: &[&str]) {
        let ns = format!("--net=/run/netns/{}", self.host(host).ns);
        let mut args = vec![ns.as_str(), "--", "iptables", "-w"];
        args.extend_from_slice(rule);
        run("nsenter", &args);
    }

    /// Hosts on different sides can no longer reach each other; hosts on no side still reach
    /// everyone. Adds to any fault already in place.
    pub fn partition(&self, sides: &[&[&str]]) {
        for (i, side) in sides.iter().enumerate() {
            for (j, other) in sides.iter().enumerate() {
                if i == j {
                    continue;
                }
                for a in side.iter() {
                    for b in other.iter() {
                        let peer = self.host(b).addr.to_string();
                        self.iptables(a, &["-A", "INPUT", "-s", &peer, "-j", "DROP"]);
                        self.iptables(a, &["-A", "OUTPUT", "-d", &peer, "-j", "DROP"]);
                    }
                }
            }
        }
    }

    /// `host` and `peers` can no longer exchange TCP traffic to or from `port` (a firewall
    /// closed to one service: everything else still passes). Adds to any fault already in place.
    pub fn block_port(&self, host: &str, peers: &[&str], port: u16) {
        let port = port.to_string();
        for b in peers {
            let peer = self.host(b).addr.to_string();
            for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                for side in ["--dport", "--sport"] {
                    let rule = ["-A", chain, dir, &peer, "-p", "tcp", side, &port, "-j", "DROP"];
                    self.iptables(host, &rule);
                }
            }
        }
    }

    /// `host` drops `percent` of the packets it receives from other hosts.
    pub fn packet_loss(&self, host: &str, percent: u32) {
        let p = format!("{:.2}", f64::from(percent.min(100)) / 100.0);
        self.iptables(
            host,
            &[
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        );
    }

    /// Removes every partition and packet loss.
    pub fn heal(&self) {
        for h in &self.hosts {
            self.iptables(&h.name, &["-F"]);
        }
    }
}

impl Net {
    /// SIGKILL to every process inside one of this net's namespaces (all of them were started
    /// by the test: nothing else runs there); returns how many there were.
    pub fn kill_everything_inside(&self) -> usize {
        use std::os::unix::fs::MetadataExt;
        let inodes: Vec<(u64, u64)> = self
            .hosts
            .iter()
            .map(|h| &h.ns)
            .chain([&self.bridge_ns])
            .filter_map(|ns| std::fs::metadata(format!("/run/netns/{ns}")).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        let mut killed = 0;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for e in procs.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            // both name the namespace's nsfs inode
            if inodes.contains(&(m.dev(), m.ino())) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
        }
        killed
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.kill_everything_inside();
        for ns in self.hosts.iter().map(|h| &h.ns).chain([&self.bridge_ns]) {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Deletes namespaces named `vg<pid>-...` whose test process has exited (a test killed before
/// it could clean up).
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("vg")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}
