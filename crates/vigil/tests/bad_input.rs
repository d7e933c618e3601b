//! Bad configuration and unusable directories: one clear sentence, nothing started, nothing written.

use std::net::TcpListener;
use std::process::Command;

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

fn vigil(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(VIGIL)
        .args(args)
        .env("VIGIL_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn valid_config(base: u16) -> String {
    vigil_core::config::Config::local(3, base, vigil_core::config::Topology::Galera).to_toml()
}

#[test]
fn check_config_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vigil.toml");
    std::fs::write(&file, valid_config(31000)).unwrap();
    let (ok, out, _) = vigil(&["check-config", file.to_str().unwrap()]);
    assert!(ok && out.contains("valid (3 nodes, galera topology)"), "{out}");

    let text = valid_config(31000).replace("[agent]\n", "[agent]\nprobe_intervall_ms = 5\n");
    std::fs::write(&file, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("probe_intervall_ms"))
        .unwrap()
        + 1;
    let (ok, _, err) = vigil(&["check-config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!("vigil.toml:line {line}: "))
            && err.contains("unknown field `probe_intervall_ms`"),
        "{err}"
    );

    let text = valid_config(31000).replace("sql_port = 31010", "sql_port = 31000");
    std::fs::write(&file, &text).unwrap();
    let (ok, _, err) = vigil(&["check-config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("node[1].sql_port: port 31000 on 127.0.0.1 is already used by node[0].sql_port"),
        "{err}"
    );

    let (ok, _, err) = vigil(&["check-config", dir.path().join("missing.toml").to_str().unwrap()]);
    assert!(!ok && err.starts_with("vigil: cannot read"), "{err}");
}

#[test]
fn up_with_a_bad_config_starts_nothing_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_config(31100).replace("sql_port = 31110", "sql_port = 31101");
    std::fs::write(dir.path().join("vigil.toml"), &text).unwrap();
    let (ok, _, err) = vigil(&["up", "--dir", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("port 31101 on 127.0.0.1 is already used by node[0].galera_port"),
        "{err}"
    );
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["vigil.toml"], "nothing but the file that was there");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("vigil.toml")).unwrap(),
        text,
        "the file is untouched"
    );
}

#[test]
fn up_with_an_unknown_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_config(31400).replace("[mariadb]\n", "[mariadb]\nbuffer_pool = \"1G\"\n");
    std::fs::write(dir.path().join("vigil.toml"), &text).unwrap();
    let (ok, _, err) = vigil(&["up", "--dir", dir.path().to_str().unwrap()]);
    assert!(!ok);
    let line = text.lines().position(|l| l.starts_with("buffer_pool")).unwrap() + 1;
    assert!(
        err.contains(&format!("line {line}: unknown field `buffer_pool`")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing written"
    );
}

#[test]
fn up_in_an_unusable_directory_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let target = file.join("cluster");
    let (ok, _, err) = vigil(&["up", "--dir", target.to_str().unwrap(), "--base-port", "31200"]);
    assert!(!ok);
    assert!(
        err.contains("cannot use") && err.contains("as the cluster directory"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn up_refuses_ports_in_use_before_writing_anything() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = port - 3; // node 1 uses base..base+4; its SST port is base+3
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("c");
    let (ok, _, err) = vigil(&[
        "up",
        "--dir",
        target.to_str().unwrap(),
        "--base-port",
        &base.to_string(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!("port {port} (sst_port of n1) is already in use")),
        "{err}"
    );
    assert!(!target.exists(), "no directory created");
}

#[test]
fn up_rejects_options_that_contradict_the_existing_cluster() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vigil.toml"), valid_config(31300)).unwrap();
    let (ok, _, err) = vigil(&["up", "--dir", dir.path().to_str().unwrap(), "--nodes", "5"]);
    assert!(!ok);
    assert!(
        err.contains("holds a 3-node cluster, but --nodes 5 was given"),
        "{err}"
    );
    let fresh = dir.path().join("new");
    let (ok, _, err) = vigil(&["up", "--dir", fresh.to_str().unwrap(), "--nodes", "0"]);
    assert!(!ok);
    assert!(err.contains("--nodes must be between 1 and 9, not 0"), "{err}");
    assert!(!fresh.exists(), "nothing created");
}

#[test]
fn replication_options_that_do_not_apply_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("c");
    let (ok, _, err) = vigil(&[
        "up",
        "--dir",
        cluster.to_str().unwrap(),
        "--durability",
        "semisync",
    ]);
    assert!(
        !ok && err.contains("--durability applies to the replication topology only"),
        "{err}"
    );
    assert!(!cluster.join("vigil.toml").exists(), "nothing written");

    let mut config = vigil_core::config::Config::local(3, 31100, vigil_core::config::Topology::Replication);
    config.replication.as_mut().unwrap().failover_holdoff_max_s = 1;
    let file = dir.path().join("vigil.toml");
    std::fs::write(&file, config.to_toml()).unwrap();
    let (ok, _, err) = vigil(&["check-config", file.to_str().unwrap()]);
    assert!(
        !ok && err.contains("replication.failover_holdoff_max_s")
            && err.contains("at least replication.failover_holdoff_s"),
        "{err}"
    );
    let text = config
        .to_toml()
        .replace("durability = \"async\"", "durability = \"sometimes\"");
    std::fs::write(&file, text).unwrap();
    let (ok, _, err) = vigil(&["check-config", file.to_str().unwrap()]);
    assert!(!ok && err.contains("unknown variant `sometimes`"), "{err}");

    let (ok, _, err) = vigil(&["rejoin", "n1", "--dir", dir.path().to_str().unwrap()]);
    assert!(!ok && err.contains("vigil rejoin --reclone n1"), "{err}");
}

#[test]
fn proxy_and_store_settings_that_cannot_work_are_refused_with_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vigil.toml");
    let file_s = file.to_str().unwrap();

    // no [store]: a separate proxy has nowhere to learn the routes from
    std::fs::write(&file, valid_config(31200)).unwrap();
    let (ok, _, err) = vigil(&["proxy", "--config", file_s]);
    assert!(!ok && err.contains("has no [store] section"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let with_store = |store: &str| format!("{}\n[store]\n{store}\n", valid_config(31200));
    std::fs::write(&file, with_store("endpoints = [\"127.0.0.1:2379\"]")).unwrap();
    let (ok, _, err) = vigil(&["check-config", file_s]);
    assert!(
        !ok && err.contains("store.endpoints[0]: \"127.0.0.1:2379\" is not of the form http://host:port"),
        "{err}"
    );
    std::fs::write(&file, with_store("endpoints = []")).unwrap();
    let (ok, _, err) = vigil(&["check-config", file_s]);
    assert!(
        !ok && err.contains("store.endpoints: list at least one etcd member"),
        "{err}"
    );
    std::fs::write(
        &file,
        with_store("endpoints = [\"http://127.0.0.1:2379\"]\nrequest_timeout_ms = 4000"),
    )
    .unwrap();
    let (ok, _, err) = vigil(&["check-config", file_s]);
    assert!(
        !ok && err.contains("store.request_timeout_ms: must be between 1 and half of agent.lease_ttl_ms"),
        "{err}"
    );

    // the proxy's ports collide with a node's
    let text = valid_config(31200).replace("write_port = 31236", "write_port = 31200");
    assert_ne!(text, valid_config(31200), "the generated proxy write port moved");
    std::fs::write(&file, text).unwrap();
    let (ok, _, err) = vigil(&["check-config", file_s]);
    assert!(
        !ok && err.contains("proxy.write_port: port 31200 on 127.0.0.1 is already used by node[0].sql_port"),
        "{err}"
    );
}
