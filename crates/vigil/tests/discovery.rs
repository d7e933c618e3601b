//! Nodes found in DNS: SRV lookups against a DNS server on loopback, as `vigil agent` and
//! `vigil proxy` do before they start.

use std::time::Duration;

use vigil_core::config::Config;
use vigil_testkit::dns::SrvServer;

const SRV: &str = "_mysql._tcp.vigil.db.svc.cluster.local";

fn config(nameserver: std::net::SocketAddr, srv: &str) -> Config {
    Config::parse(&format!(
        "[cluster]\ntopology = \"replication\"\n\n[discovery]\nsrv = \"{srv}\"\nnodes = 3\nnameserver = \"{nameserver}\"\napi_port = 9000\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn the_agent_waits_until_dns_lists_every_node() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = SrvServer::serve(
        socket,
        SRV,
        &[
            ("db-1.vigil.db.svc.cluster.local", 3306),
            ("db-0.vigil.db.svc.cluster.local", 3306),
        ],
    );
    let config = config(dns.addr, SRV);

    // Two of three pods exist: the agent keeps asking.
    let found = tokio::spawn(vigil_agent::discovery::complete(config.clone()));
    let asked = tokio::time::timeout(Duration::from_secs(30), async {
        while dns.srv_queries() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(asked.is_ok(), "the agent did not ask twice within 30 s");
    assert!(
        !found.is_finished(),
        "the agent must not start with two of three nodes"
    );
    let why = vigil_agent::discovery::complete_now(config.clone())
        .await
        .unwrap_err();
    assert_eq!(
        why,
        format!("{SRV} lists 2 node(s), but the cluster has 3 (discovery.nodes)")
    );

    // The third pod appears (publishNotReadyAddresses: before it is ready).
    dns.set_records(&[
        ("db-1.vigil.db.svc.cluster.local", 3306),
        ("db-0.vigil.db.svc.cluster.local", 3306),
        ("db-2.vigil.db.svc.cluster.local", 3307),
    ]);
    let config = tokio::time::timeout(Duration::from_secs(30), found)
        .await
        .expect("the agent found the nodes within 30 s")
        .unwrap();
    let nodes: Vec<(&str, &str, u16, u16)> = config
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.host.as_str(), n.sql_port, n.api_port))
        .collect();
    assert_eq!(
        nodes,
        [
            ("db-0", "db-0.vigil.db.svc.cluster.local", 3306, 9000),
            ("db-1", "db-1.vigil.db.svc.cluster.local", 3306, 9000),
            ("db-2", "db-2.vigil.db.svc.cluster.local", 3307, 9000),
        ]
    );
    assert!(config.discovery.is_none());
    assert!(config.validate().is_empty());
}

#[tokio::test]
async fn a_name_without_records_is_said_in_one_sentence() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = SrvServer::serve(socket, SRV, &[]);
    let wrong = "_mysql._tcp.other.db.svc.cluster.local";
    let why = vigil_agent::discovery::complete_now(config(dns.addr, wrong))
        .await
        .unwrap_err();
    assert_eq!(
        why,
        format!("{wrong} lists 0 node(s), but the cluster has 3 (discovery.nodes)")
    );
}
