//! vigil proxy fed from the coordination store: the routing table is recomputed on every
//! change a store watch pushes (member reports, the writer or leader key), never polled.
//!
//! The same code serves the proxy built into `vigil up` and the separate `vigil proxy
//! --config FILE` process. When the store cannot be read, the last table stays in force but is
//! no longer confirmed by it; the proxy then asks the writer's agent every probe interval
//! whether it still takes the cluster's writes (`takes_writes` in its status: a Galera writer
//! still in a Primary component, a primary whose every replica acknowledged it while the
//! store is out of reach), and that answer confirms the table. Once the table is older than the
//! lease TTL without either, the write port refuses new connections (fail closed) while the
//! read port goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use tracing::{info, warn};
use vigil_core::config::{Config, ProxySection, Topology};
use vigil_core::routing::RoutingTable;
use vigil_store::CoordinationStore;

use crate::keys;
use crate::local::UpError;

/// A running proxy: its bound ports and the task serving it (abort to stop).
pub struct RunningProxy {
    pub write_port: u16,
    pub read_port: u16,
    pub status_port: Option<u16>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the proxy's ports (and its `/status` port, if configured) and starts serving, fed by
/// a watch on the cluster's keys.
pub async fn start(
    config: Arc<Config>,
    section: &ProxySection,
    store: Arc<dyn CoordinationStore>,
) -> Result<RunningProxy, UpError> {
    let cluster = config.cluster.name.clone();
    let addr = |port: u16| -> Result<SocketAddr, UpError> {
        format!("{}:{port}", section.host)
            .parse()
            .map_err(|_| UpError::Options(format!("proxy.host {:?} is not an IP address", section.host)))
    };
    let proxy_config = vigil_proxy::ProxyConfig {
        write_listen: addr(section.write_port)?,
        read_listen: addr(section.read_port)?,
        connect_timeout: Duration::from_millis(section.connect_timeout_ms),
        max_staleness: Duration::from_millis(config.agent.lease_ttl_ms),
        blacklist_base: Duration::from_secs(1),
        blacklist_max: Duration::from_secs(30),
        drain: Duration::from_millis(section.drain_ms),
    };
    let mut events = store
        .watch(&format!("/vigil/{cluster}/"))
        .await
        .map_err(crate::AgentError::from)?;
    let first = routing_table(&config, &*store).await.unwrap_or_else(|e| {
        warn!("proxy routing: {e}; starting with no backends");
        RoutingTable::default()
    });
    let (tx, rx) = tokio::sync::watch::channel(vigil_proxy::Routes::from_store(first));
    let proxy = vigil_proxy::Proxy::bind(proxy_config, rx).await.map_err(|e| {
        UpError::Options(format!(
            "cannot bind the proxy on {}:{}/{}: {e}",
            section.host, section.write_port, section.read_port
        ))
    })?;
    let (write_port, read_port) = proxy.ports();
    let status = match section.status_port {
        Some(port) => Some(
            tokio::net::TcpListener::bind(addr(port)?)
                .await
                .map_err(|e| UpError::Options(format!("cannot bind the proxy status port {port}: {e}")))?,
        ),
        None => None,
    };
    let status_port = status
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let confirming = tokio::spawn(confirm_writer(
        config.clone(),
        tx.clone(),
        Duration::from_millis(config.agent.probe_interval_ms),
        Duration::from_millis(config.agent.lease_ttl_ms),
    ));
    let task = tokio::spawn(async move {
        let serving = tokio::spawn(proxy.clone().run());
        let status_task = status.map(|listener| tokio::spawn(serve_status(listener, proxy)));
        while events.recv().await.is_some() {
            while events.try_recv().is_ok() {}
            match routing_table(&config, &*store).await {
                Ok(table) => {
                    tx.send_replace(vigil_proxy::Routes::from_store(table));
                }
                // keep the last table, unconfirmed: it goes stale and closes the write port
                Err(e) => warn!("proxy routing: {e}"),
            }
        }
        serving.abort();
        confirming.abort();
        if let Some(t) = status_task {
            t.abort();
        }
    });
    Ok(RunningProxy {
        write_port,
        read_port,
        status_port,
        task,
    })
}

/// While the store does not confirm the routes (for half a lease TTL), asks the writer's agent
/// every `every` whether it still takes the cluster's writes; its yes confirms the routes.
async fn confirm_writer(
    config: Arc<Config>,
    tx: tokio::sync::watch::Sender<vigil_proxy::Routes>,
    every: Duration,
    ttl: Duration,
) {
    let mut failsafe = false;
    loop {
        tokio::time::sleep(every).await;
        let routes = tx.borrow().clone();
        if routes.at.elapsed() < ttl / 2 {
            if failsafe {
                info!("proxy routing: the store confirms the routes again");
                failsafe = false;
            }
            continue;
        }
        let Some(node) = routes.table.writer.as_ref().and_then(|w| config.node(&w.name)) else {
            continue;
        };
        let confirmed = crate::peer::status(&node.host, node.api_port, every)
            .await
            .is_some_and(|s| s.name == node.name && s.takes_writes);
        if confirmed {
            if !failsafe {
                info!(
                    "proxy routing: the store cannot be read; {} says it still takes the writes: keeping it",
                    node.name
                );
                failsafe = true;
            }
            tx.send_modify(|r| {
                // unless the store confirmed a table (perhaps another writer) meanwhile
                if r.table.writer.as_ref().map(|w| &w.name) == Some(&node.name) && r.at.elapsed() >= ttl / 2 {
                    r.by_writer = Some(tokio::time::Instant::now());
                }
            });
        } else if failsafe {
            warn!(
                "proxy routing: the store cannot be read and {} does not confirm it takes writes",
                node.name
            );
            failsafe = false;
        }
    }
}

async fn serve_status(listener: tokio::net::TcpListener, proxy: vigil_proxy::Proxy) {
    let app = Router::new().route(
        "/status",
        get(move || {
            let proxy = proxy.clone();
            async move { Json(proxy.status()) }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        warn!("proxy status server stopped: {e}");
    }
}

/// The routing table from the store: member reports and the writer (Galera) or leader key.
pub async fn routing_table(
    config: &Config,
    store: &dyn CoordinationStore,
) -> Result<RoutingTable, vigil_store::StoreError> {
    let cluster = &config.cluster.name;
    fn parse<T: serde::de::DeserializeOwned>(kvs: &[vigil_store::KeyValue]) -> Vec<T> {
        kvs.iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect()
    }
    let name =
        |kv: Option<vigil_store::KeyValue>| kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    Ok(match config.cluster.topology {
        Topology::Galera => {
            let reports = store.list(&keys::members(cluster)).await?;
            let writer = name(store.get(&keys::writer(cluster)).await?);
            vigil_core::routing::galera_routes(&config.nodes, &parse(&reports), writer.as_deref())
        }
        Topology::Replication => {
            let reports = store.list(&keys::repl_members(cluster)).await?;
            let leader = name(store.get(&keys::leader(cluster)).await?);
            vigil_core::routing::replication_routes(&config.nodes, &parse(&reports), leader.as_deref())
        }
    })
}
