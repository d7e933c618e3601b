//! Crash recovery with real processes: kill -9 of one node and of the whole cluster, under a
//! writer that records every acknowledged insert. Nothing acknowledged may be lost.

use std::time::Duration;

use vigil_testkit::{wait_for, LocalCluster, Writer};

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

fn error_log(cluster: &LocalCluster, node: &str) -> String {
    std::fs::read_to_string(cluster.node_dir(node).join("error.log")).unwrap_or_default()
}

/// Every acknowledged id is on every node.
fn assert_nothing_lost(cluster: &LocalCluster, acked: &[u64]) {
    assert!(!acked.is_empty(), "the writer got acknowledgements");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for n in cluster.names() {
        let present = rt.block_on(cluster.acked_ids(&n));
        let lost: Vec<&u64> = acked.iter().filter(|id| !present.contains(id)).collect();
        assert!(
            lost.is_empty(),
            "{n} lacks {} of {} acknowledged inserts: {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)]
        );
    }
}

fn wait_restarted(cluster: &mut LocalCluster, node: &str, old_pid: u32) {
    wait_for(&format!("{node} restarted"), Duration::from_secs(120), || {
        cluster
            .status(node)
            .filter(|s| s.pid.is_some_and(|p| p != old_pid))
            .map(|_| ())
    });
}

#[test]
fn a_killed_node_is_restarted_and_rejoins_by_ist_with_nothing_lost() {
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 3, &[]);
    cluster.wait_synced(Duration::from_secs(240));
    let writer = Writer::start(&cluster);
    writer.wait_for_more(200, Duration::from_secs(60));

    let victim = cluster
        .names()
        .into_iter()
        .find(|n| cluster.status(n).is_some_and(|s| s.role != "writer"))
        .unwrap();
    let log_before = error_log(&cluster, &victim).len();
    let pid = cluster.kill_node(&victim);
    writer.wait_for_more(100, Duration::from_secs(60));
    wait_restarted(&mut cluster, &victim, pid);
    cluster.wait_synced(Duration::from_secs(120));
    writer.wait_for_more(100, Duration::from_secs(60));
    let acked = writer.stop();

    let new_log = error_log(&cluster, &victim)[log_before..].to_string();
    assert!(new_log.contains("IST received"), "{victim} rejoined by IST");
    assert!(
        !new_log.contains("SST completed on joiner"),
        "{victim} needed no full snapshot"
    );
    assert!(
        cluster.log().contains("mariadbd exited unexpectedly"),
        "the agent saw the crash"
    );
    assert_nothing_lost(&cluster, &acked);
    assert!(cluster.stop().success());
}

#[test]
fn the_whole_cluster_killed_at_once_comes_back_by_itself_with_nothing_lost() {
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 3, &[]);
    cluster.wait_synced(Duration::from_secs(240));
    let writer = Writer::start(&cluster);
    writer.wait_for_more(300, Duration::from_secs(60));

    let pids: Vec<u32> = cluster.names().iter().map(|n| cluster.kill_node(n)).collect();
    for (n, pid) in cluster.names().iter().zip(pids) {
        wait_restarted(&mut cluster, n, pid);
    }
    cluster.wait_synced(Duration::from_secs(180));
    writer.wait_for_more(100, Duration::from_secs(60));
    let acked = writer.stop();

    let log = cluster.log();
    assert!(
        log.contains("recovered position"),
        "positions were recovered from InnoDB:\n{log}"
    );
    assert_eq!(
        log.matches("elected to restart the cluster").count(),
        1,
        "exactly one node was elected:\n{log}"
    );
    assert_nothing_lost(&cluster, &acked);
    assert!(cluster.stop().success());
}

#[test]
fn staggered_kills_recover_from_the_most_advanced_node_with_nothing_lost() {
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 3, &[]);
    cluster.wait_synced(Duration::from_secs(240));
    let writer = Writer::start(&cluster);
    writer.wait_for_more(200, Duration::from_secs(60));

    // One reader dies first; the other two keep committing, so positions differ.
    let names = cluster.names();
    let first = names
        .iter()
        .find(|n| cluster.status(n).is_some_and(|s| s.role != "writer"))
        .unwrap()
        .clone();
    cluster.kill_node(&first);
    writer.wait_for_more(200, Duration::from_secs(60));
    let rest: Vec<(String, u32)> = names
        .iter()
        .filter(|n| **n != first)
        .filter_map(|n| cluster.status(n).and_then(|s| s.pid).map(|p| (n.clone(), p)))
        .collect();
    for (n, _) in &rest {
        cluster.kill_node(n);
    }
    for (n, pid) in &rest {
        wait_restarted(&mut cluster, n, *pid);
    }
    cluster.wait_synced(Duration::from_secs(240));
    writer.wait_for_more(100, Duration::from_secs(60));
    let acked = writer.stop();

    assert_nothing_lost(&cluster, &acked);
    let log = cluster.log();
    let elected = log
        .lines()
        .find(|l| l.contains("elected to restart the cluster"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        !elected.contains(&format!("node={first}")),
        "{first} died first and must not be the source: {elected}"
    );
    assert!(cluster.stop().success());
}

/// A three-node cluster under a writer client, whose readers then leave cleanly for
/// maintenance: the writer node carries on alone, ahead of them. Returns the cluster, the
/// client, the writer node and the readers.
fn writer_left_alone() -> (LocalCluster, Writer, String, Vec<String>) {
    use vigil_core::galera::Phase;
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 3, &[]);
    cluster.wait_synced(Duration::from_secs(240));
    let writer = Writer::start(&cluster);
    writer.wait_for_more(100, Duration::from_secs(60));
    let names = cluster.names();
    let w = names
        .iter()
        .find(|n| cluster.status(n).is_some_and(|s| s.role == "writer"))
        .unwrap()
        .clone();
    let readers: Vec<String> = names.iter().filter(|n| **n != w).cloned().collect();
    for r in &readers {
        let (ok, out, err) = cluster.cli(&["node", "hold", r]);
        assert!(ok, "{out}{err}");
        cluster.wait_status(r, "held and stopped", Duration::from_secs(60), |s| {
            s.held && s.phase == Phase::Stopped
        });
    }
    writer.wait_for_more(200, Duration::from_secs(60));
    (cluster, writer, w, readers)
}

/// A node that ran alone (the others left cleanly) leaves `safe_to_bootstrap: 1` with
/// `seqno: -1` when it crashes, so it is not marked safe again; it restarts the cluster on its
/// recovered position. Started without that position, Galera would begin a new history at
/// seqno 0 ("Starting new group from scratch") and the others would each need a full snapshot.
#[test]
fn a_node_that_crashed_alone_restarts_the_same_history_and_the_others_rejoin_by_ist() {
    let (mut cluster, writer, w, readers) = writer_left_alone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let history = |cluster: &LocalCluster| {
        rt.block_on(cluster.query(&w, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'WSREP_CLUSTER_STATE_UUID'"))
            .concat()
    };
    let before = history(&cluster);
    assert!(vigil_core::galera::is_uuid(&before), "{before:?}");

    let pid = cluster.kill_node(&w);
    wait_restarted(&mut cluster, &w, pid);
    cluster.wait_status(&w, "serving again", Duration::from_secs(120), |s| s.healthy);
    writer.wait_for_more(100, Duration::from_secs(60));
    let log_before: Vec<usize> = readers.iter().map(|r| error_log(&cluster, r).len()).collect();
    assert_eq!(
        history(&cluster),
        before,
        "the restart began a new history:\n{}",
        error_log(&cluster, &w)
    );

    for r in &readers {
        assert!(cluster.cli(&["node", "release", r]).0);
    }
    cluster.wait_synced(Duration::from_secs(180));
    writer.wait_for_more(100, Duration::from_secs(60));
    let acked = writer.stop();
    for (r, from) in readers.iter().zip(log_before) {
        let new_log = error_log(&cluster, r)[from..].to_string();
        assert!(
            new_log.contains("IST received"),
            "{r} rejoined by IST:\n{new_log}"
        );
        assert!(
            !new_log.contains("SST completed on joiner"),
            "{r} needed no full snapshot"
        );
    }
    assert_nothing_lost(&cluster, &acked);
    assert!(cluster.stop().success());
}

#[test]
fn the_most_advanced_node_kept_down_blocks_bootstrap_until_the_operator_forces_it() {
    use vigil_core::galera::Phase;
    let (mut cluster, writer, w, readers) = writer_left_alone();
    let acked_before_crash = writer.acked_count();

    // The writer crashes and is kept down; the readers come back.
    cluster.kill_node(&w);
    let (ok, _, err) = cluster.cli(&["node", "hold", &w]);
    assert!(ok, "{err}");
    cluster.wait_status(&w, "held", Duration::from_secs(60), |s| {
        s.held && s.phase == Phase::Stopped
    });
    for r in &readers {
        assert!(cluster.cli(&["node", "release", r]).0);
    }
    let best = &readers[0];
    let blocked = cluster.wait_status(
        best,
        "waiting for the kept-down node",
        Duration::from_secs(60),
        |s| s.reason.contains(&format!("waiting for {w}")),
    );
    assert_eq!(blocked.phase, Phase::Waiting, "{blocked:?}");
    for r in &readers {
        assert!(
            cluster.status(r).is_some_and(|s| s.pid.is_none()),
            "{r} must not start without {w}"
        );
    }

    // `recover` without --force only says what may be lost.
    let (ok, out, _) = cluster.cli(&["recover", best]);
    assert!(!ok, "without --force nothing is done");
    assert!(
        out.contains("committed transactions may be lost") && out.contains("Nothing done"),
        "{out}"
    );
    let (ok, out, err) = cluster.cli(&["recover", "--force", best]);
    assert!(ok, "{out}{err}");
    for r in &readers {
        cluster.wait_status(r, "healthy again", Duration::from_secs(120), |s| {
            s.healthy && s.cluster_size == 2
        });
    }
    let lost_window = acked_before_crash..writer.acked_count();
    writer.wait_for_more(100, Duration::from_secs(60));

    // The kept-down node returns: its history diverged, so it gets a snapshot and its old
    // datadir is kept aside, not overwritten.
    assert!(cluster.cli(&["node", "release", &w]).0);
    cluster.wait_synced(Duration::from_secs(180));
    let acked = writer.stop();
    let kept: Vec<_> = std::fs::read_dir(cluster.node_dir(&w))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.kept-"))
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "{w}'s old datadir was kept aside:\n{}",
        cluster.log()
    );
    assert!(kept[0].path().join("grastate.dat").exists());

    // Everything acknowledged before the readers left and after the recovery is everywhere.
    let must_have: Vec<u64> = acked[..100]
        .iter()
        .chain(&acked[lost_window.end.min(acked.len())..])
        .copied()
        .collect();
    assert_nothing_lost(&cluster, &must_have);
    assert!(cluster.stop().success());
}

#[test]
fn two_data_nodes_and_an_arbitrator_survive_the_loss_of_either_node() {
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 2, &["--arbitrator"]);
    let nodes = cluster.wait_synced(Duration::from_secs(240));
    assert!(
        nodes.iter().all(|n| n.cluster_size == 3),
        "two nodes and garbd: {nodes:?}"
    );
    let writer = Writer::start(&cluster);
    writer.wait_for_more(100, Duration::from_secs(60));

    for role in ["reader", "writer"] {
        let victim = cluster
            .names()
            .into_iter()
            .find(|n| cluster.status(n).is_some_and(|s| s.role == role))
            .unwrap();
        let survivor = cluster.names().into_iter().find(|n| *n != victim).unwrap();
        let pid = cluster.kill_node(&victim);
        // The survivor keeps a majority with the arbitrator: it stays writable.
        cluster.wait_status(
            &survivor,
            "writer of a 2-member Primary component",
            Duration::from_secs(60),
            |s| s.healthy && s.role == "writer" && s.cluster_size == 2,
        );
        writer.wait_for_more(100, Duration::from_secs(60));
        wait_restarted(&mut cluster, &victim, pid);
        cluster.wait_synced(Duration::from_secs(120));
    }
    let acked = writer.stop();
    assert_nothing_lost(&cluster, &acked);
    assert!(cluster.stop().success());
}
