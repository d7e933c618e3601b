//! The data nodes found in DNS (`[discovery]` in the configuration): one SRV lookup, repeated
//! until it names exactly as many nodes as the cluster has. `vigil agent` and `vigil proxy`
//! do this once, before they start; `vigil_core::config::DiscoverySection` says how records
//! become nodes.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::TokioAsyncResolver;
use tracing::{info, warn};
use vigil_core::config::{Config, DiscoverySection, SrvTarget};

/// How long to wait between lookups that did not find every node.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the system's DNS configuration to look up {srv}: {message}")]
    SystemConf { srv: String, message: String },
    #[error("cannot look up {srv}: {message}")]
    Lookup { srv: String, message: String },
}

/// The SRV records of `section.srv` as the nameserver answers now; no records is an empty
/// list, not an error (the nodes may not exist yet).
pub async fn lookup(section: &DiscoverySection) -> Result<Vec<SrvTarget>, DiscoveryError> {
    let resolver = match &section.nameserver {
        Some(ns) => {
            // Validated by the configuration's parser.
            let addr: SocketAddr = ns.parse().map_err(|_| DiscoveryError::Lookup {
                srv: section.srv.clone(),
                message: format!("{ns:?} is not ip:port"),
            })?;
            let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            TokioAsyncResolver::tokio(ResolverConfig::from_parts(None, Vec::new(), servers), options())
        }
        None => {
            let (config, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                DiscoveryError::SystemConf {
                    srv: section.srv.clone(),
                    message: e.to_string(),
                }
            })?;
            TokioAsyncResolver::tokio(config, options())
        }
    };
    match resolver.srv_lookup(section.srv.as_str()).await {
        Ok(found) => Ok(found
            .iter()
            .map(|srv| SrvTarget {
                host: srv.target().to_utf8().trim_end_matches('.').to_string(),
                port: srv.port(),
            })
            .collect()),
        Err(e) if matches!(e.kind(), ResolveErrorKind::NoRecordsFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(DiscoveryError::Lookup {
            srv: section.srv.clone(),
            message: e.to_string(),
        }),
    }
}

/// Every answer fresh from the nameserver: a node added or replaced shows at the next lookup.
fn options() -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts
}

/// The configuration with its nodes filled in from DNS, once the lookup names exactly as many
/// as `discovery.nodes`. Until then it logs what it found and asks again every 2 s; a
/// configuration without `[discovery]` is returned as it is.
pub async fn complete(config: Config) -> Config {
    let Some(section) = config.discovery.clone() else {
        return config;
    };
    let mut last_reason = String::new();
    loop {
        let reason = match lookup(&section).await {
            Ok(records) => match config.clone().with_discovered(&records) {
                Ok(found) => {
                    let names: Vec<String> = found
                        .nodes
                        .iter()
                        .map(|n| format!("{} ({}:{})", n.name, n.host, n.sql_port))
                        .collect();
                    info!(
                        "found the cluster's nodes in {}: {}",
                        section.srv,
                        names.join(", ")
                    );
                    return found;
                }
                Err(why) => why,
            },
            Err(e) => e.to_string(),
        };
        if reason != last_reason {
            warn!(
                "waiting for the cluster's nodes: {reason}; asking again every {} s",
                RETRY.as_secs()
            );
            last_reason = reason;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One lookup, for a command run by hand: the configuration with its nodes from DNS, or one
/// sentence saying why they are not all there. Without `[discovery]` it is returned as it is.
pub async fn complete_now(config: Config) -> Result<Config, String> {
    let Some(section) = config.discovery.clone() else {
        return Ok(config);
    };
    let records = lookup(&section).await.map_err(|e| e.to_string())?;
    config.with_discovered(&records)
}

/// [`complete_now`] for a command without a runtime of its own.
pub fn complete_blocking(config: Config) -> Result<Config, String> {
    if config.discovery.is_none() {
        return Ok(config);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to look up the nodes: {e}"))?
        .block_on(complete_now(config))
}
