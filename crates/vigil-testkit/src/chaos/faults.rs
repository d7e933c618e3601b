//! Applying a fault to the test hosts, checking that it took effect, and undoing it.
//!
//! A fault is counted only once something shows it happened: the pid was alive and is gone
//! or stopped, the isolated host can no longer reach its peers (probed from its namespace),
//! the store's surviving member reports no quorum. Undoing it is checked the same way, and a
//! packet loss that dropped no packet is reported as such.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Fault;
use crate::hosts::{HostCluster, Service};

/// A fault in effect, to be undone.
#[derive(Debug)]
pub struct Applied {
    pub kind: Fault,
    pub hosts: Vec<String>,
    /// What showed it took effect.
    pub evidence: String,
    /// The services to start again when it is undone, and the pids to SIGCONT.
    restart: Vec<(String, Service)>,
    paused: Vec<u32>,
}

/// The state letter of a process (`R`, `S`, `T`, `Z`...), or `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits up to `limit` for `pid` to be gone (or a zombie, dead but not yet reaped).
fn wait_dead(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if matches!(proc_state(pid), None | Some('Z') | Some('X')) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// kill -9 of `service` on `host`, checked: it ran before and is dead after.
fn kill_checked(cluster: &mut HostCluster, host: &str, service: Service) -> Result<String, String> {
    let Some(pid) = cluster.pid(host, service) else {
        return Err(format!("no {service:?} running on {host}"));
    };
    if !matches!(proc_state(pid), Some(s) if s != 'Z') {
        return Err(format!("{service:?} on {host} (pid {pid}) was not alive"));
    }
    match service {
        Service::Mariadbd => {
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL).map_err(|e| format!("kill -9 {pid}: {e}"))?;
        }
        _ => {
            cluster.kill(host, service);
        }
    }
    if !wait_dead(pid, Duration::from_secs(5)) {
        return Err(format!("{service:?} on {host} (pid {pid}) survived kill -9"));
    }
    Ok(format!("{service:?} pid {pid} on {host} killed"))
}

/// Whether `host` reaches `peer`'s `port`: a connection that is accepted or refused both mean
/// packets went through; only silence means they were dropped.
fn reaches(cluster: &HostCluster, host: &str, peer: &str, port: u16) -> bool {
    let addr = SocketAddr::from((cluster.net.host(peer).addr, port));
    cluster.net.run_in(host, move || {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        }
    })
}

/// The packets dropped by the statistic rule of `host`'s INPUT chain.
fn dropped_packets(cluster: &HostCluster, host: &str) -> Option<u64> {
    let out = cluster
        .net
        .command(host, "iptables")
        .args(["-w", "-L", "INPUT", "-v", "-n", "-x"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("statistic"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

/// Applies `kind` to `hosts` and checks that it took effect; `Err` says why it could not be
/// applied (nothing was changed then, or what was is undone).
pub fn apply(cluster: &mut HostCluster, kind: Fault, hosts: &[String]) -> Result<Applied, String> {
    let host = hosts[0].as_str();
    let mut applied = Applied {
        kind,
        hosts: hosts.to_vec(),
        evidence: String::new(),
        restart: Vec::new(),
        paused: Vec::new(),
    };
    let evidence = match kind {
        Fault::KillMariadbd => kill_checked(cluster, host, Service::Mariadbd)?,
        Fault::KillAgent => {
            let e = kill_checked(cluster, host, Service::Agent)?;
            applied.restart.push((host.into(), Service::Agent));
            e
        }
        Fault::CrashHost => {
            let mut e = vec![kill_checked(cluster, host, Service::Agent)?];
            applied.restart.push((host.into(), Service::Agent));
            if let Ok(m) = kill_checked(cluster, host, Service::Mariadbd) {
                e.push(m);
            }
            if cluster.pid(host, Service::Etcd).is_some() {
                e.push(kill_checked(cluster, host, Service::Etcd)?);
                applied.restart.push((host.into(), Service::Etcd));
            }
            e.join(", ")
        }
        Fault::PauseMariadbd | Fault::PauseAgent => {
            let service = if kind == Fault::PauseMariadbd {
                Service::Mariadbd
            } else {
                Service::Agent
            };
            let pid = cluster
                .pid(host, service)
                .filter(|p| matches!(proc_state(*p), Some(s) if s != 'Z'))
                .ok_or_else(|| format!("no {service:?} running on {host}"))?;
            kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).map_err(|e| format!("SIGSTOP {pid}: {e}"))?;
            applied.paused.push(pid);
            let deadline = Instant::now() + Duration::from_secs(2);
            while proc_state(pid) != Some('T') {
                if Instant::now() > deadline {
                    undo(cluster, applied);
                    return Err(format!("{service:?} pid {pid} on {host} did not stop"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            format!("{service:?} pid {pid} on {host} stopped (state T)")
        }
        Fault::IsolateHost => {
            let others: Vec<&str> = cluster
                .db_hosts
                .iter()
                .filter(|h| *h != host)
                .map(String::as_str)
                .collect();
            cluster.net.partition(&[&[host], &others]);
            let reached: Vec<&str> = others
                .iter()
                .copied()
                .filter(|p| reaches(cluster, host, p, 2379))
                .collect();
            if !reached.is_empty() {
                cluster.net.heal();
                return Err(format!(
                    "{host} still reached {} after the partition",
                    reached.join(", ")
                ));
            }
            format!("{host} cannot reach {}", others.join(" or "))
        }
        Fault::PacketLoss => {
            cluster.net.packet_loss(host, 30);
            format!("30% of the packets {host} receives dropped")
        }
        Fault::KillEtcdMember => {
            let e = kill_checked(cluster, host, Service::Etcd)?;
            applied.restart.push((host.into(), Service::Etcd));
            e
        }
        Fault::StoreQuorumLoss => {
            let mut e = Vec::new();
            for h in hosts {
                match kill_checked(cluster, h, Service::Etcd) {
                    Ok(k) => {
                        e.push(k);
                        applied.restart.push((h.clone(), Service::Etcd));
                    }
                    Err(why) => {
                        undo(cluster, applied);
                        return Err(why);
                    }
                }
            }
            let survivor = cluster
                .db_hosts
                .iter()
                .take(3)
                .find(|h| !hosts.contains(h))
                .cloned()
                .expect("three etcd members");
            let deadline = Instant::now() + Duration::from_secs(10);
            while cluster.etcd_healthy(&survivor) {
                if Instant::now() > deadline {
                    undo(cluster, applied);
                    return Err(format!(
                        "etcd on {survivor} still had a quorum 10 s after the kills"
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            e.push(format!("etcd on {survivor} reports no quorum"));
            e.join(", ")
        }
    };
    applied.evidence = evidence;
    Ok(applied)
}

/// Undoes a fault: SIGCONT, the killed services started again, the network healed. Returns
/// the evidence of the fault and of its end.
pub fn undo(cluster: &mut HostCluster, applied: Applied) -> String {
    let mut notes = vec![applied.evidence.clone()];
    for pid in &applied.paused {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGCONT);
        if proc_state(*pid) == Some('T') {
            notes.push(format!("pid {pid} still stopped after SIGCONT"));
        }
    }
    match applied.kind {
        Fault::PacketLoss => {
            let host = &applied.hosts[0];
            match dropped_packets(cluster, host) {
                Some(0) | None => notes.push("NO packet was dropped".into()),
                Some(n) => notes.push(format!("{n} packets dropped")),
            }
            cluster.net.heal();
        }
        Fault::IsolateHost => {
            cluster.net.heal();
            let host = applied.hosts[0].clone();
            let peers: Vec<String> = cluster.db_hosts.iter().filter(|h| **h != host).cloned().collect();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !peers.iter().all(|p| reaches(cluster, &host, p, 2379)) {
                if Instant::now() > deadline {
                    notes.push(format!("{host} still cut off 5 s after the heal"));
                    break;
                }
            }
        }
        _ => {}
    }
    for (host, service) in &applied.restart {
        if cluster.pid(host, *service).is_none() {
            cluster.start_service(host, *service);
        }
    }
    if applied.restart.iter().any(|(_, s)| *s == Service::Etcd) {
        cluster.wait_etcd();
    }
    notes.join("; ")
}
