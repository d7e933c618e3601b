//! The replication topology with real processes: kill -9 and SIGSTOP of the primary under a
//! writer that records every acknowledged insert, kill -9 of the replicas' servers, a
//! switchover under load, and an old primary that rejoins or, holding an errant transaction,
//! is quarantined and re-cloned.
//! A watcher samples `read_only` on every node throughout: never two writable nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use nix::sys::signal::Signal;
use vigil_core::galera::Phase;
use vigil_testkit::{wait_for, LocalCluster, WritableWatch, Writer};

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

fn start(durability: &str) -> LocalCluster {
    let mut cluster = LocalCluster::start(
        VIGIL.as_ref(),
        3,
        &["--topology", "replication", "--durability", durability],
    );
    cluster.wait_synced(Duration::from_secs(120));
    cluster
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Waits until a healthy primary other than `old` exists, and returns it.
fn wait_new_primary(cluster: &LocalCluster, old: &str) -> String {
    wait_for(
        &format!("a primary other than {old}"),
        Duration::from_secs(60),
        || cluster.primary().filter(|p| p != old),
    )
}

/// kill -9 of the primary `old` under a writer, with `read_only` watched on every node: waits
/// for a new primary and more writes through it; returns it and the acknowledged ids.
fn kill_primary_under_writes(cluster: &LocalCluster, old: &str) -> (String, Vec<u64>) {
    let watch = WritableWatch::start(cluster);
    let writer = Writer::start(cluster);
    writer.wait_for_more(300, Duration::from_secs(60));
    cluster.kill_node(old);
    let new = wait_new_primary(cluster, old);
    writer.wait_for_more(100, Duration::from_secs(60));
    let acked = writer.stop();
    assert_one_writer(watch);
    (new, acked)
}

/// The acknowledged ids missing on `node`.
fn missing_on(cluster: &LocalCluster, node: &str, acked: &[u64]) -> Vec<u64> {
    let present: BTreeSet<u64> = rt().block_on(cluster.acked_ids(node));
    acked.iter().copied().filter(|id| !present.contains(id)).collect()
}

/// Waits until `node` holds every acknowledged id (a replica catching up), or panics with
/// how many are missing.
fn wait_holds_all(cluster: &LocalCluster, node: &str, acked: &[u64]) {
    let mut missing = Vec::new();
    let ok = (0..300).any(|_| {
        missing = missing_on(cluster, node, acked);
        if missing.is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(
        ok,
        "{node} lacks {} of {} acknowledged inserts, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}

fn assert_one_writer(watch: WritableWatch) {
    let report = watch.stop();
    assert!(report.rounds > 10, "the watcher sampled: {report:?}");
    assert!(
        report.violations.is_empty(),
        "two writable nodes at once in {} of {} rounds: {:?}",
        report.violations.len(),
        report.rounds,
        &report.violations[..report.violations.len().min(5)]
    );
}

#[test]
fn semisync_kill_of_the_primary_loses_nothing_acknowledged() {
    let cluster = start("semisync");
    let old = cluster.primary().expect("a primary");
    assert_eq!(old, "n1");
    let (code, body) = cluster.api(&old, "/primary").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, _) = cluster.api("n2", "/primary").unwrap();
    assert_eq!(code, 503);
    let (code, body) = cluster.api("n2", "/replica?lag=5").unwrap();
    assert_eq!(code, 200, "{body}");

    let (new, acked) = kill_primary_under_writes(&cluster, &old);

    // Semi-sync: whatever the client heard "OK" for is on the new primary.
    let lost = missing_on(&cluster, &new, &acked);
    assert!(
        lost.is_empty(),
        "semisync lost {} of {} acknowledged inserts: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    // The old primary comes back read-only and either rejoins or is quarantined; never writable.
    let back = cluster.wait_status(
        &old,
        "back as replica or quarantined",
        Duration::from_secs(90),
        |s| s.role == "replica" || s.role == "quarantined",
    );
    assert!(back.read_only, "{back:?}");
    if back.role == "quarantined" {
        // It had committed (but never acknowledged) a transaction nobody received.
        let (ok, out, err) = cluster.cli(&["rejoin", "--reclone", &old]);
        assert!(ok, "{out}{err}");
        cluster.wait_status(&old, "re-cloned replica", Duration::from_secs(120), |s| {
            s.role == "replica" && s.healthy
        });
    }
    wait_holds_all(&cluster, &old, &acked);
    let json = cluster.cli(&["status", "--json"]).1;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let roles: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "primary").count(), 1, "{json}");
    assert!(
        v["nodes"][0]["gtid"].as_str().unwrap().starts_with("0-"),
        "{json}"
    );
}

#[test]
fn replicas_whose_servers_are_killed_replicate_again() {
    let cluster = start("semisync");
    let writer = Writer::start(&cluster);
    writer.wait_for_more(100, Duration::from_secs(60));
    for replica in ["n2", "n3"] {
        let killed = cluster.kill_node(replica);
        // Started again by its agent (skip_slave_start: it replicates only once told to).
        cluster.wait_status(replica, "replicating again", Duration::from_secs(90), |s| {
            s.pid.is_some_and(|p| p != killed) && s.role == "replica" && s.healthy
        });
    }
    // Semi-sync: the primary commits only while a replica receives, and both were restarted.
    writer.wait_for_more(200, Duration::from_secs(60));
    let acked = writer.stop();
    for replica in ["n2", "n3"] {
        wait_holds_all(&cluster, replica, &acked);
    }
}

#[test]
fn async_kill_of_the_primary_fails_over_and_reports_what_was_lost() {
    let cluster = start("async");
    let old = cluster.primary().expect("a primary");
    let (new, acked) = kill_primary_under_writes(&cluster, &old);
    let lost = missing_on(&cluster, &new, &acked);
    // Asynchronous replication may lose the last acknowledged writes: report, don't hide.
    eprintln!(
        "async failover {old} -> {new}: {} of {} acknowledged inserts lost",
        lost.len(),
        acked.len()
    );
    assert!(
        lost.len() < acked.len() / 2,
        "lost {} of {}",
        lost.len(),
        acked.len()
    );
    // Everything the new primary acknowledged is there; the third node follows it.
    let third = cluster
        .names()
        .into_iter()
        .find(|n| *n != old && *n != new)
        .unwrap();
    cluster.wait_status(
        &third,
        "following the new primary",
        Duration::from_secs(30),
        |s| s.role == "replica" && s.healthy,
    );
}

#[test]
fn a_paused_primary_is_fenced_and_never_writable_beside_the_new_one() {
    let cluster = start("async");
    let old = cluster.primary().expect("a primary");
    let watch = WritableWatch::start(&cluster);
    let writer = Writer::start(&cluster);
    writer.wait_for_more(200, Duration::from_secs(60));
    let pid = cluster.signal_node(&old, Signal::SIGSTOP);
    let new = wait_new_primary(&cluster, &old);
    // Past the lease: the old primary's agent has fenced it (killed it, since it cannot answer).
    cluster.wait_status(&old, "fenced", Duration::from_secs(30), |s| s.pid != Some(pid));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGCONT);
    writer.wait_for_more(200, Duration::from_secs(60));
    let back = cluster.wait_status(&old, "back read-only", Duration::from_secs(90), |s| {
        s.role == "replica" || s.role == "quarantined"
    });
    assert!(back.read_only);
    writer.stop();
    let report = watch.stop();
    assert!(report.violations.is_empty(), "two writable nodes: {report:?}");
    assert!(report.writers_seen.contains(&new), "{report:?}");
    assert!(cluster.log().contains("fencing"), "the agent said it fenced");
}

#[test]
fn switchover_under_load_loses_nothing_and_the_old_primary_follows() {
    // Semi-sync: the demoted primary must also stop waiting for acknowledgements of its own.
    let cluster = start("semisync");
    let old = cluster.primary().expect("a primary");
    let watch = WritableWatch::start(&cluster);
    let writer = Writer::start(&cluster);
    writer.wait_for_more(300, Duration::from_secs(60));
    let (ok, out, err) = cluster.cli(&["switchover", "--to", "n3"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("n3 is the primary now"), "{out}");
    writer.wait_for_more(300, Duration::from_secs(60));
    let acked = writer.stop();
    assert_one_writer(watch);
    assert_eq!(cluster.primary().as_deref(), Some("n3"));
    assert!(
        missing_on(&cluster, "n3", &acked).is_empty(),
        "switchover lost writes"
    );
    cluster.wait_status(&old, "following n3", Duration::from_secs(30), |s| {
        s.role == "replica" && s.healthy
    });
    wait_holds_all(&cluster, &old, &acked);
    // The proxy follows: its write port reaches n3, its read port a replica.
    let proxy = cluster.config.proxy.clone().expect("a proxy");
    let password = std::fs::read_to_string(cluster.path().join("secrets/app.password")).unwrap();
    let server_id = |port: u16| -> i64 {
        rt().block_on(async {
            let opts = vigil_testkit::app_opts(&proxy.host, port, password.trim());
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            c.query_first("SELECT @@server_id").await.unwrap().unwrap()
        })
    };
    wait_for(
        "the proxy's write port reaches n3",
        Duration::from_secs(10),
        || (server_id(proxy.write_port) == 3).then_some(()),
    );
    assert_ne!(server_id(proxy.read_port), 3, "reads go to a replica");
    // A switchover to the primary itself, or to a stranger, is refused with one sentence.
    let (ok, _, err) = cluster.cli(&["switchover", "--to", "n3"]);
    assert!(!ok && err.contains("already the primary"), "{err}");
    let (ok, _, err) = cluster.cli(&["switchover", "--to", "n9"]);
    assert!(!ok && err.contains("not a node"), "{err}");
}

#[test]
fn an_old_primary_with_an_errant_transaction_is_quarantined_then_recloned() {
    let cluster = start("async");
    let old = cluster.primary().expect("a primary");
    rt().block_on(async {
        let mut c = cluster.connect(&old).await;
        c.query_drop("CREATE TABLE t (id INT PRIMARY KEY, who VARCHAR(10))")
            .await
            .unwrap();
        c.query_drop("INSERT INTO t VALUES (1, 'shared')").await.unwrap();
    });
    for n in cluster.names().iter().filter(|n| **n != old) {
        wait_for(
            &format!("{n} has the shared row"),
            Duration::from_secs(30),
            || {
                (rt().block_on(cluster.query(n, "SELECT COUNT(*) FROM t WHERE id = 1")) == ["1"])
                    .then_some(())
            },
        );
    }
    // The replicas stop receiving; the primary commits a row only it will ever have.
    for n in cluster.names().iter().filter(|n| **n != old) {
        root_sql(&cluster, n, "STOP SLAVE IO_THREAD");
    }
    rt().block_on(async {
        let mut c = cluster.connect(&old).await;
        c.query_drop("INSERT INTO t VALUES (2, 'errant')").await.unwrap();
    });
    cluster.kill_node(&old);
    let new = wait_new_primary(&cluster, &old);
    let q = cluster.wait_status(&old, "quarantined", Duration::from_secs(90), |s| {
        s.role == "quarantined"
    });
    assert!(q.reason.contains("vigil rejoin --reclone"), "{q:?}");
    assert!(q.read_only);
    let (code, _) = cluster.api(&old, "/health").unwrap();
    assert_eq!(code, 503);
    let (code, _) = cluster.api(&old, "/replica").unwrap();
    assert_eq!(code, 503);

    let (ok, out, err) = cluster.cli(&["rejoin", "--reclone", &old]);
    assert!(ok, "{out}{err}");
    cluster.wait_status(&old, "re-cloned replica", Duration::from_secs(120), |s| {
        s.role == "replica" && s.healthy
    });
    rt().block_on(async {
        let mut c = cluster.connect(&new).await;
        c.query_drop("INSERT INTO t VALUES (3, 'after')").await.unwrap();
    });
    wait_for(
        "the re-cloned node has the new primary's rows",
        Duration::from_secs(30),
        || {
            let ids = rt().block_on(cluster.query(&old, "SELECT id FROM t ORDER BY id"));
            (ids == ["1", "3"]).then_some(())
        },
    );
    let kept: Vec<_> = std::fs::read_dir(cluster.node_dir(&old))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.kept-"))
        .collect();
    assert_eq!(kept.len(), 1, "the old datadir is kept aside");
}

/// A semi-sync primary with no replica left blocks every commit, and mariabackup's
/// `BACKUP STAGE BLOCK_COMMIT` waits for the commits in progress: the clone that would give
/// it a replica never finished. The primary now records a fall-back to asynchronous commits
/// in the store, then switches semi-sync off; once the new replica replicates, semi-sync is
/// on again, and "on" is recorded only when that replica holds what was committed meanwhile.
#[test]
fn a_clone_from_a_semisync_primary_left_without_replicas_finishes() {
    let cluster = start("semisync");
    let primary = cluster.primary().expect("a primary");
    let replicas: Vec<String> = cluster.names().into_iter().filter(|n| *n != primary).collect();
    let writer = Writer::start(&cluster);
    writer.wait_for_more(100, Duration::from_secs(60));
    for r in &replicas {
        let (ok, out, err) = cluster.cli(&["node", "hold", r]);
        assert!(ok, "{out}{err}");
        cluster.wait_status(r, "held and stopped", Duration::from_secs(60), |s| {
            s.held && s.phase == Phase::Stopped
        });
    }
    // No replica: commits wait for one (semi-sync's promise), none is acknowledged.
    wait_for(
        "a commit waiting for an acknowledgement",
        Duration::from_secs(30),
        || (waiting_sessions(&cluster, &primary) > 0).then_some(()),
    );
    assert_eq!(
        semisync_value(&cluster, &primary, "Rpl_semi_sync_master_clients"),
        "0"
    );
    let acked_before = writer.acked_count();

    // The first replica comes back with an empty datadir: it must be cloned from the primary.
    let cloned = &replicas[0];
    let datadir = cluster.node_dir(cloned).join("data");
    std::fs::remove_dir_all(&datadir).unwrap();
    assert!(waiting_sessions(&cluster, &primary) > 0);
    assert_eq!(
        writer.acked_count(),
        acked_before,
        "acknowledged without a replica"
    );
    let (ok, out, err) = cluster.cli(&["node", "release", cloned]);
    assert!(ok, "{out}{err}");
    cluster.wait_status(
        cloned,
        "a streaming replica again",
        Duration::from_secs(180),
        |s| s.role == "replica" && s.healthy,
    );
    writer.wait_for_more(100, Duration::from_secs(60));
    cluster.wait_status(
        &primary,
        "semi-sync recorded on again",
        Duration::from_secs(60),
        |s| s.state == "writable",
    );
    assert_eq!(
        semisync_value(&cluster, &primary, "Rpl_semi_sync_master_status"),
        "ON"
    );
    let log = cluster.log();
    let fell_back = log
        .find("semi-sync fell back to asynchronous commits: no replica is connected")
        .unwrap_or_else(|| panic!("no fall-back in the log:\n{log}"));
    let on_again = log
        .find("a replica holds every commit made without semi-sync: recorded on")
        .unwrap_or_else(|| panic!("semi-sync never recorded on again:\n{log}"));
    assert!(fell_back < on_again, "{log}");
    let acked = writer.stop();
    wait_holds_all(&cluster, cloned, &acked);
}

fn semisync_value(cluster: &LocalCluster, node: &str, name: &str) -> String {
    rt().block_on(cluster.query(
        node,
        &format!(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = '{name}'"
        ),
    ))
    .concat()
}

fn waiting_sessions(cluster: &LocalCluster, node: &str) -> u64 {
    semisync_value(cluster, node, "Rpl_semi_sync_master_wait_sessions")
        .parse()
        .unwrap_or(0)
}

/// Runs one statement as root over a node's unix socket.
fn root_sql(cluster: &LocalCluster, node: &str, sql: &str) {
    let socket = cluster.node_dir(node).join("mariadbd.sock");
    rt().block_on(async {
        let opts = mysql_async::OptsBuilder::default()
            .socket(Some(socket.to_string_lossy().into_owned()))
            .user(Some("root"))
            .prefer_socket(true);
        let mut c = mysql_async::Conn::new(opts).await.unwrap();
        c.query_drop(sql).await.unwrap();
    });
}
