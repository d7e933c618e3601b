//! A GTID primary and a replica with real `mariadbd`s on loopback ports: clone with
//! mariabackup, semi-synchronous replication, a promotion of the replica and the old primary
//! rejoining it by GTID.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vigil_core::config::{Config, Durability, Topology};
use vigil_core::replication::{GtidPos, ReplStatus};
use vigil_mariadb::cnf::ServerSpec;
use vigil_mariadb::process::{self, Binaries, Server, StartMode};
use vigil_mariadb::repl::{self, ReplProber};
use vigil_mariadb::secrets::{self, Secrets, APP_DATABASE, APP_USER};
use vigil_mariadb::{admin, clone, NodeLayout};

const STEP: Duration = Duration::from_secs(20);

/// Kills (by pid) every mariadbd the test started, and keeps the directory if the test failed.
struct Guard {
    dir: Option<tempfile::TempDir>,
    pids: Vec<u32>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("test failed; its files are kept in {}", dir.keep().display());
            }
        }
    }
}

/// A base port whose node blocks (base..base+20) are free, in 20000-32000 (below the
/// ephemeral range).
fn free_base_port() -> u16 {
    let seed =
        std::process::id() as u64 ^ std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos() as u64;
    for attempt in 0..200u64 {
        let base = 20000
            + ((seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(attempt * 7919))
                % 1190) as u16
                * 10;
        let free = (base..base + 20).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port block in 20000-32000");
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// Polls `probe` until `done` holds, or panics with the last status.
async fn wait_for(what: &str, prober: &mut ReplProber, done: impl Fn(&ReplStatus) -> bool) -> ReplStatus {
    let deadline = tokio::time::Instant::now() + STEP;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        match prober.probe().await {
            Ok(s) if done(&s) => return s,
            Ok(s) => last = Some(s),
            Err(e) => eprintln!("{what}: probe failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached within {STEP:?}; last status {last:?}");
}

async fn app_conn(port: u16, secrets: &Secrets) -> Conn {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(APP_USER))
        .pass(Some(secrets.app.clone()))
        .db_name(Some(APP_DATABASE))
        .prefer_socket(false);
    within("app connection", Conn::new(opts)).await.unwrap()
}

async fn insert(port: u16, secrets: &Secrets, ids: std::ops::Range<u32>, origin: &str) {
    let mut conn = app_conn(port, secrets).await;
    for id in ids {
        within(
            "insert",
            conn.exec_drop("INSERT INTO t (id, origin) VALUES (?, ?)", (id, origin)),
        )
        .await
        .unwrap();
    }
    conn.disconnect().await.unwrap();
}

async fn ids(port: u16, secrets: &Secrets) -> Vec<u32> {
    let mut conn = app_conn(port, secrets).await;
    let ids = within("select", conn.query("SELECT id FROM t ORDER BY id"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    ids
}

async fn start(bins: &Binaries, layout: &NodeLayout, guard: &mut Guard) -> Server {
    let server = Server::start(bins, layout, StartMode::Plain).await.unwrap();
    guard.pids.push(server.pid());
    assert!(
        process::wait_for_socket(&layout.socket(), Duration::from_secs(30)).await,
        "mariadbd did not open its socket; see {}",
        layout.error_log().display()
    );
    server
}

fn write_cnf(config: &Config, index: usize, layout: &NodeLayout, secrets: &Secrets) {
    std::fs::create_dir_all(&layout.dir).unwrap();
    let spec = ServerSpec::new(config, &config.nodes[index], layout.clone(), secrets);
    secrets::write_private_file(&layout.cnf(), &spec.render()).unwrap();
}

fn path_of(dir: &Path, node: &str) -> PathBuf {
    dir.join(node)
}

/// Two semi-sync replication nodes' directories, configuration and secrets; nothing started.
struct Pair {
    guard: Guard,
    bins: Binaries,
    secrets: Secrets,
    n1: NodeLayout,
    n2: NodeLayout,
    p1: u16,
    p2: u16,
}

fn pair() -> Pair {
    let bins = Binaries::discover(&Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut config = Config::local(2, free_base_port(), Topology::Replication);
    config.replication.as_mut().unwrap().durability = Durability::Semisync;
    let secrets = Secrets::generate();
    let (n1, n2) = (
        NodeLayout::new(path_of(&dir, "n1")),
        NodeLayout::new(path_of(&dir, "n2")),
    );
    write_cnf(&config, 0, &n1, &secrets);
    write_cnf(&config, 1, &n2, &secrets);
    Pair {
        guard: Guard {
            dir: Some(tmp),
            pids: Vec::new(),
        },
        bins,
        secrets,
        n1,
        n2,
        p1: config.nodes[0].sql_port,
        p2: config.nodes[1].sql_port,
    }
}

/// Initialises and starts n1, with vigil's users (read-only, as every node starts).
async fn start_first(p: &mut Pair) -> Server {
    within("init n1", process::init_datadir(&p.bins, &p.n1))
        .await
        .unwrap();
    let server = start(&p.bins, &p.n1, &mut p.guard).await;
    within("users", admin::provision_users("n1", &p.n1, &p.secrets))
        .await
        .unwrap();
    server
}

/// Makes n1 writable and creates the test table.
async fn create_table(p: &Pair) {
    within("writable", repl::set_read_only("n1", &p.n1, false))
        .await
        .unwrap();
    let mut conn = app_conn(p.p1, &p.secrets).await;
    within(
        "create",
        conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, origin VARCHAR(8) NOT NULL)"),
    )
    .await
    .unwrap();
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_semisync_promote_and_rejoin() {
    let mut pair = pair();
    // The first primary.
    let mut s1 = start_first(&mut pair).await;
    let mut probe1 = ReplProber::new("n1", &pair.n1, &pair.secrets.monitor);
    let before = within("probe n1", probe1.probe()).await.unwrap();
    assert!(before.read_only, "every node starts read-only: {before:?}");
    assert_eq!(before.replica, None);
    create_table(&pair).await;
    let Pair {
        mut guard,
        bins,
        secrets,
        n1,
        n2,
        p1,
        p2,
    } = pair;
    insert(p1, &secrets, 1..11, "n1").await;
    let at_clone = within("probe n1", probe1.probe()).await.unwrap();
    assert!(!at_clone.read_only && !at_clone.semisync_primary, "{at_clone:?}");

    // A replica cloned from it.
    let gtid = within("clone", clone::clone_local(&bins, &n1, &n2))
        .await
        .unwrap();
    assert_eq!(gtid, at_clone.gtid_binlog, "the clone holds n1's history");
    let mut s2 = start(&bins, &n2, &mut guard).await;
    within("adopt", repl::adopt_clone_position("n2", &n2, &gtid))
        .await
        .unwrap();
    within("slave pos", repl::set_gtid_slave_pos("n2", &n2, &gtid))
        .await
        .unwrap();
    within(
        "replicate",
        repl::start_replication("n2", &n2, "127.0.0.1", p1, &secrets.repl, true),
    )
    .await
    .unwrap();
    // Only now: with semi-sync on and no replica connected, a commit waits (for ever, with
    // vigil's timeout) for an acknowledgement.
    within("semisync on", repl::set_semisync_primary("n1", &n1, true))
        .await
        .unwrap();
    wait_for("n2 semi-sync client of n1", &mut probe1, |s| {
        s.semisync_primary && s.semisync_clients == 1
    })
    .await;
    insert(p1, &secrets, 11..21, "n1").await;
    let primary = wait_for("n2 semi-sync client of n1", &mut probe1, |s| {
        s.semisync_clients == 1
    })
    .await;
    let mut probe2 = ReplProber::new("n2", &n2, &secrets.monitor);
    let replica = wait_for("n2 applied n1's rows", &mut probe2, |s| {
        s.gtid_current.covers(&primary.gtid_binlog)
            && s.replica.as_ref().is_some_and(|r| r.seconds_behind == Some(0))
    })
    .await;
    assert!(replica.read_only);
    let r = replica.replica.clone().unwrap();
    assert_eq!(r.source, format!("127.0.0.1:{p1}"));
    assert!(r.io_running && r.sql_running && r.last_error.is_empty(), "{r:?}");
    assert_eq!(r.received, primary.gtid_binlog);
    // log_slave_updates: the replica's binlog has n1's transactions under n1's server id.
    assert_eq!(replica.gtid_binlog, primary.gtid_binlog);
    assert_eq!(ids(p2, &secrets).await, (1..21).collect::<Vec<_>>());
    let mut conn = app_conn(p2, &secrets).await;
    let refused = conn.query_drop("INSERT INTO t VALUES (99, 'n2')").await;
    assert!(
        refused.is_err(),
        "a read-only replica refuses the application's writes"
    );
    conn.disconnect().await.unwrap();

    // Promotion of n2: freeze what it receives, apply it, forget the source, make it writable.
    let mut client_on_n1 = app_conn(p1, &secrets).await;
    within("io stop", repl::stop_replica_io("n2", &n2)).await.unwrap();
    assert!(
        within("applied", repl::wait_applied("n2", &n2, Duration::from_secs(10)))
            .await
            .unwrap()
    );
    within("stop", repl::stop_replication("n2", &n2)).await.unwrap();
    within("n2 writable", repl::set_read_only("n2", &n2, false))
        .await
        .unwrap();
    within("n1 read-only", repl::set_read_only("n1", &n1, true))
        .await
        .unwrap();
    within("n1 semisync off", repl::set_semisync_primary("n1", &n1, false))
        .await
        .unwrap();
    let killed = within("kill", repl::kill_client_sessions("n1", &n1))
        .await
        .unwrap();
    assert!(
        killed >= 1,
        "the application's session on the old primary is killed"
    );
    assert!(client_on_n1.query_drop("SELECT 1").await.is_err());
    let promoted = within("probe n2", probe2.probe()).await.unwrap();
    assert!(!promoted.read_only && promoted.replica.is_none(), "{promoted:?}");
    insert(p2, &secrets, 21..26, "n2").await;
    let promoted = within("probe n2", probe2.probe()).await.unwrap();
    assert_eq!(promoted.gtid_binlog.domain(0).unwrap().server, 2);

    // The old primary rejoins as a replica of n2, by GTID.
    within(
        "rejoin",
        repl::start_replication("n1", &n1, "127.0.0.1", p2, &secrets.repl, true),
    )
    .await
    .unwrap();
    let rejoined = wait_for("n1 applied n2's rows", &mut probe1, |s| {
        s.gtid_current.covers(&promoted.gtid_binlog)
    })
    .await;
    let r = rejoined.replica.clone().unwrap();
    assert_eq!(r.source, format!("127.0.0.1:{p2}"));
    assert!(r.io_running && r.sql_running && r.last_error.is_empty(), "{r:?}");
    assert!(rejoined.read_only);
    assert_eq!(ids(p1, &secrets).await, (1..26).collect::<Vec<_>>());
    let check: GtidPos = promoted.gtid_binlog.clone();
    assert_eq!(rejoined.gtid_binlog, check);

    // A replica about to stop applies what it received first, and receives no more.
    let drained = within("drain n1", repl::drain_relay_log("n1", &n1, STEP))
        .await
        .unwrap();
    assert!(drained, "n1's relay log applied");
    let after_drain = within("probe n1", probe1.probe()).await.unwrap();
    let r = after_drain.replica.clone().unwrap();
    assert!(!r.io_running, "n1 no longer receives: {r:?}");
    assert!(after_drain.gtid_current.covers(&r.received), "{after_drain:?}");
    let no_source = within("drain n2", repl::drain_relay_log("n2", &n2, STEP))
        .await
        .unwrap();
    assert!(
        no_source,
        "a node that replicates from nobody has nothing to apply"
    );

    // The dead-man switch: armed on the primary, it turns the server read-only by itself at
    // the moment given, without anyone connected; it is not replicated.
    let now = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs();
    within("install", repl::install_deadman("n2", &n2)).await.unwrap();
    let past = within("arm in the past", repl::arm_deadman("n2", &n2, now - 1)).await;
    assert!(past.is_err(), "a moment already past is refused");
    within("arm", repl::arm_deadman("n2", &n2, now + 600))
        .await
        .unwrap();
    within("re-arm", repl::arm_deadman("n2", &n2, now + 3))
        .await
        .unwrap();
    insert(p2, &secrets, 26..27, "n2").await;
    let before = within("probe n2", probe2.probe()).await.unwrap();
    let fenced = wait_for("n2 read-only by its dead-man switch", &mut probe2, |s| {
        s.read_only
    })
    .await;
    assert!(fenced.replica.is_none());
    let mut root2 = within("root on n2", admin::connect_root("n2", &n2))
        .await
        .unwrap();
    let event: Option<(String, String)> = root2
        .query_first(
            "SELECT EVENT_TYPE, STATUS FROM information_schema.EVENTS WHERE EVENT_NAME = 'vigil_deadman'",
        )
        .await
        .unwrap();
    assert_eq!(
        event,
        Some(("RECURRING".into(), "ENABLED".into())),
        "the switch stays in place after it fired"
    );
    root2.disconnect().await.unwrap();
    let after = within("probe n2", probe2.probe()).await.unwrap();
    assert_eq!(
        after.gtid_binlog, before.gtid_binlog,
        "firing the switch writes nothing to the binlog (a replica would take it as an errant transaction)"
    );
    let mut conn = app_conn(p2, &secrets).await;
    let refused = conn
        .exec_drop("INSERT INTO t (id, origin) VALUES (?, ?)", (27, "n2"))
        .await;
    assert!(
        refused.is_err(),
        "the application cannot write after the switch fired"
    );
    conn.disconnect().await.unwrap();
    let mut root1 = within("root on n1", admin::connect_root("n1", &n1))
        .await
        .unwrap();
    let events: Option<u64> = root1
        .query_first("SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_NAME = 'vigil_deadman'")
        .await
        .unwrap();
    assert_eq!(events, Some(0), "the switch is not replicated");
    root1.disconnect().await.unwrap();

    s1.stop(Duration::from_secs(30)).await.unwrap();
    s2.stop(Duration::from_secs(30)).await.unwrap();
    if std::env::var_os("VIGIL_KEEP_TEST_DIR").is_some() {
        eprintln!("files kept in {}", guard.dir.take().unwrap().keep().display());
    }
}
