//! `vigil status`: asks every node's agent for its status and prints a table or JSON.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use vigil_agent::NodeStatus;
use vigil_core::config::{Config, NodeConfig, Topology};
use vigil_core::galera::Phase;

/// Fetches one data node's `/status` from its agent.
pub fn fetch(node: &NodeConfig) -> NodeStatus {
    fetch_agent(&node.name, &node.host, node.sql_port, node.api_port)
}

/// Fetches an agent's `/status`; an agent that does not answer is reported as unreachable.
/// `sql_port` is 0 for the arbitrator, which serves no clients.
fn fetch_agent(name: &str, host: &str, sql_port: u16, api_port: u16) -> NodeStatus {
    let url = format!("http://{host}:{api_port}/status");
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    match agent
        .get(&url)
        .call()
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_json().map_err(|e| e.to_string()))
    {
        Ok(status) => status,
        Err(e) => NodeStatus {
            phase: Phase::Stopped,
            state: "unreachable".into(),
            reason: format!("agent not answering at {url}: {e}"),
            ..NodeStatus::starting(name, host, sql_port, api_port)
        },
    }
}

pub fn run(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = crate::load_operator_config(dir)?;
    let mut nodes: Vec<NodeStatus> = config.nodes.iter().map(fetch).collect();
    if let Some(arb) = &config.arbitrator {
        nodes.push(fetch_agent(&arb.name, &arb.host, 0, arb.api_port));
    }
    if json {
        let mut out = serde_json::json!({ "cluster": config.cluster.name, "nodes": nodes });
        if let Some(p) = &config.proxy {
            out["proxy"] =
                serde_json::json!({ "host": p.host, "write_port": p.write_port, "read_port": p.read_port });
            if let Some(port) = p.status_port {
                out["proxy"]["status_port"] = port.into();
                // routes and per-backend counters, when the proxy answers
                let url = format!("http://{}:{port}/status", p.host);
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
                if let Ok(v) = agent
                    .get(&url)
                    .call()
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.into_json::<serde_json::Value>().map_err(|e| e.to_string()))
                {
                    out["proxy"]["status"] = v;
                }
            }
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        match config.cluster.topology {
            Topology::Galera => print!("{}", table(&nodes)),
            Topology::Replication => print!("{}", replication_table(&nodes)),
        }
        if let Some(p) = &config.proxy {
            println!(
                "proxy: writes {}:{}, reads {}:{}",
                p.host, p.write_port, p.host, p.read_port
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn table(nodes: &[NodeStatus]) -> String {
    let mut rows = vec![[
        "NAME", "SQL", "API", "PID", "STATE", "CLUSTER", "SIZE", "SEQNO", "ROLE", "HEALTH",
    ]
    .map(String::from)
    .to_vec()];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            if n.sql_port == 0 {
                "-".into()
            } else {
                format!("{}:{}", n.host, n.sql_port)
            },
            format!("{}:{}", n.host, n.api_port),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.state.clone(),
            n.cluster_status.clone(),
            n.cluster_size.to_string(),
            n.seqno.to_string(),
            n.role.clone(),
            match (n.role.as_str(), n.healthy) {
                ("arbitrator", _) => "votes, holds no data".into(),
                (_, true) => "ok".into(),
                (_, false) => format!("down: {}", n.reason),
            },
        ]);
    }
    render(rows)
}

/// The replication topology's table: role, GTID position, lag and read_only per node.
pub fn replication_table(nodes: &[NodeStatus]) -> String {
    let mut rows = vec![[
        "NAME",
        "SQL",
        "PID",
        "STATE",
        "ROLE",
        "GTID",
        "LAG",
        "READ_ONLY",
        "HEALTH",
    ]
    .map(String::from)
    .to_vec()];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            format!("{}:{}", n.host, n.sql_port),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.state.clone(),
            n.role.clone(),
            if n.gtid.is_empty() {
                "-".into()
            } else {
                n.gtid.clone()
            },
            n.lag_seconds.map_or("-".into(), |l| format!("{l} s")),
            if n.read_only { "ON".into() } else { "OFF".into() },
            if n.healthy {
                "ok".into()
            } else {
                format!("down: {}", n.reason)
            },
        ]);
    }
    render(rows)
}

fn render(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `POST path` to one node's agent with the cluster's API token (from the cluster directory
/// `dir`); the agent's answer, or why there was none.
pub fn post(dir: &Path, config: &Config, node: &NodeConfig, path: &str) -> anyhow::Result<String> {
    let secrets = vigil_mariadb::secrets::Secrets::load(&dir.join(&config.cluster.secrets_dir))?;
    let url = format!("http://{}:{}{path}", node.host, node.api_port);
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    match agent
        .post(&url)
        .set("Authorization", &format!("Bearer {}", secrets.api))
        .call()
    {
        Ok(r) => Ok(r.into_string()?),
        Err(ureq::Error::Status(_, r)) => anyhow::bail!("{}", r.into_string()?.trim()),
        Err(e) => anyhow::bail!("the agent of {} does not answer at {url}: {e}", node.name),
    }
}

/// `vigil switchover [--to NODE]`: asks for a planned handover and waits until another node
/// is the writable primary.
pub fn switchover(dir: &Path, to: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = crate::load_operator_config(dir)?;
    anyhow::ensure!(
        config.cluster.topology == Topology::Replication,
        "switchover applies to the replication topology; this is a {} cluster",
        config.cluster.topology
    );
    if let Some(to) = to {
        anyhow::ensure!(config.node(to).is_some(), "{to:?} is not a node of this cluster");
    }
    let nodes: Vec<NodeStatus> = config.nodes.iter().map(fetch).collect();
    let old = nodes
        .iter()
        .find(|n| n.role == "primary" && n.healthy)
        .ok_or_else(|| anyhow::anyhow!("no healthy primary to hand over from"))?
        .name
        .clone();
    anyhow::ensure!(to != Some(old.as_str()), "{old} is already the primary");
    let path = match to {
        Some(t) => format!("/switchover?to={t}"),
        None => "/switchover".into(),
    };
    let node = config.node(&old).expect("a configured node");
    print!("{}", post(dir, &config, node, &path)?);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        let nodes: Vec<NodeStatus> = config.nodes.iter().map(fetch).collect();
        if let Some(new) = nodes
            .iter()
            .find(|n| n.role == "primary" && n.healthy && n.name != old)
        {
            println!(
                "{} is the primary now (epoch {}); {old} follows it as a replica",
                new.name, new.epoch
            );
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!(
        "no new primary within 90 s; see `vigil status --dir {}`",
        dir.display()
    )
}
