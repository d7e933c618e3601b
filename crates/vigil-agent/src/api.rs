//! The agent's HTTP API, on the node's address.
//!
//! Reads are open; a request that changes something (every `POST`), and `GET /backup`, must
//! carry the cluster's API token (`secrets/api.token`) as `Authorization: Bearer <token>`, or
//! it is refused (401).
//!
//! - `GET /health`: 200 only when the node is Synced, in a Primary component and accepting
//!   queries (clustercheck's meaning); 503 with the reason otherwise. For load balancers.
//! - `GET /status`: the node's [`NodeStatus`] as JSON.
//! - `POST /hold`, `POST /release`: keep the node stopped (cleanly) for maintenance, or let
//!   the agent run it again.
//! - `POST /recover/force`: after an outage, start the cluster from this node's data even
//!   though a member that may hold newer data is missing. The operator's explicit decision.
//!
//! - `GET /primary`: 200 only on the lease-holding, writable primary (replication topology).
//! - `GET /replica?lag=N`: 200 only on a replica streaming from the primary at most N seconds
//!   behind (default: the configured `max_lag_s`).
//! - `POST /switchover[?to=NODE]`: planned handover of the primary (replication topology).
//! - `POST /reclone`: re-clone this (quarantined) node from the primary, its datadir kept aside.
//! - `GET /backup` (token): a hot backup of this node as a mariabackup stream, which a new
//!   replica's agent receives ([`crate::backup`]); 409 while another backup streams.
//! - `POST /failsafe` (token): a primary that cannot reach the store asks this node to stay
//!   out of elections for a lease TTL ([`vigil_core::replication::failsafe_answer`]); 200 is
//!   the promise, 409 a refusal with its reason.
//!
//! Holds and forces are written to the coordination store, so they outlive the agent.

use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use vigil_store::CoordinationStore;

use crate::{keys, NodeStatus};

pub type SharedStatus = Arc<Mutex<NodeStatus>>;

#[derive(Clone)]
pub struct ApiState {
    pub status: SharedStatus,
    pub store: Arc<dyn CoordinationStore>,
    pub cluster: String,
    pub node: String,
    /// The cluster's API token, which every `POST` must carry.
    pub token: String,
    /// Replication nodes serve backups of themselves to new replicas.
    pub backup: Option<Arc<crate::backup::BackupSource>>,
    /// Replication nodes answer a primary's failsafe requests.
    pub failsafe: Option<Arc<FailsafeSlot>>,
}

/// The promise a replication node made to a primary that could not reach the store: to stay
/// out of elections until a lease TTL after it was made. Shared by the API, which makes it,
/// and the agent, which keeps it; a node that is taking or holds the leader lease makes none,
/// and a node bound by one does not start a promotion.
pub struct FailsafeSlot {
    ttl: std::time::Duration,
    inner: Mutex<Promises>,
}

#[derive(Default)]
struct Promises {
    promised: Option<(String, tokio::time::Instant)>,
    leading: bool,
}

impl FailsafeSlot {
    pub fn new(ttl: std::time::Duration) -> FailsafeSlot {
        FailsafeSlot {
            ttl,
            inner: Mutex::default(),
        }
    }

    /// The primary this node is bound to stay out of elections for, if any.
    pub fn bound_to(&self) -> Option<String> {
        let p = self.inner.lock().expect("failsafe lock");
        p.promised
            .as_ref()
            .filter(|(_, until)| tokio::time::Instant::now() < *until)
            .map(|(leader, _)| leader.clone())
    }

    /// Before a promotion: fails (with the primary it is bound to) if a promise stands; else
    /// no promise is made until [`FailsafeSlot::stop_leading`].
    pub fn start_leading(&self) -> Result<(), String> {
        let mut p = self.inner.lock().expect("failsafe lock");
        if let Some((leader, until)) = &p.promised {
            if tokio::time::Instant::now() < *until {
                return Err(leader.clone());
            }
        }
        p.leading = true;
        Ok(())
    }

    /// The node gave the leader lease up (or never got it).
    pub fn stop_leading(&self) {
        self.inner.lock().expect("failsafe lock").leading = false;
    }

    /// Answers a request: the promise is made, or refused with why.
    fn answer(
        &self,
        me: &str,
        status: &NodeStatus,
        request: &vigil_core::replication::FailsafeRequest,
    ) -> Result<(), String> {
        use vigil_core::replication::Role;
        let mut p = self.inner.lock().expect("failsafe lock");
        if request.release {
            if p.promised
                .as_ref()
                .is_some_and(|(leader, _)| *leader == request.leader)
            {
                p.promised = None;
            }
            return Ok(());
        }
        if p.leading {
            return Err(format!("{me} holds or is taking the leader lease"));
        }
        let role = match status.role.as_str() {
            "primary" => Role::Primary,
            "replica" => Role::Replica,
            _ => Role::None,
        };
        vigil_core::replication::failsafe_answer(me, role, status.epoch, request)?;
        p.promised = Some((request.leader.clone(), tokio::time::Instant::now() + self.ttl));
        Ok(())
    }
}

/// Serves the API on `listener` until the returned task is aborted.
pub fn serve(listener: tokio::net::TcpListener, state: ApiState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::warn!("API server stopped: {e}");
        }
    })
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        // what changes something, and backups (a backup holds every row): token only
        .route("/hold", post(hold))
        .route("/release", post(release))
        .route("/recover/force", post(force))
        .route("/switchover", post(switchover))
        .route("/reclone", post(reclone))
        .route("/backup", get(backup))
        .route("/failsafe", post(failsafe))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        // reads: open
        .route("/health", get(health))
        .route("/status", get(status_json))
        .route("/primary", get(primary))
        .route("/replica", get(replica))
        .with_state(state)
}

/// Lets a request through only with the cluster's token.
async fn require_token(
    State(api): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|t| same_secret(t, &api.token)) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        "this request needs the cluster's API token (secrets/api.token) as Authorization: Bearer\n",
    )
        .into_response()
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn failsafe(State(api): State<ApiState>, body: axum::body::Bytes) -> (StatusCode, String) {
    let Some(slot) = &api.failsafe else {
        return (
            StatusCode::CONFLICT,
            format!("{} is not a node of the replication topology\n", api.node),
        );
    };
    let request: vigil_core::replication::FailsafeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("a failsafe request is JSON {{\"leader\": NAME, \"epoch\": N}}: {e}\n"),
            )
        }
    };
    let status = api.status.lock().expect("status lock").clone();
    match slot.answer(&api.node, &status, &request) {
        Ok(()) if request.release => (
            StatusCode::OK,
            format!("{} is no longer bound to {}\n", api.node, request.leader),
        ),
        Ok(()) => (
            StatusCode::OK,
            format!("{} stays out of elections for {}\n", api.node, request.leader),
        ),
        Err(why) => (StatusCode::CONFLICT, format!("{why}\n")),
    }
}

async fn health(State(api): State<ApiState>) -> (StatusCode, String) {
    let s = api.status.lock().expect("status lock").clone();
    if s.healthy {
        (
            StatusCode::OK,
            format!("{} is synced and accepting queries\n", s.name),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is not available: {}\n", s.name, s.reason),
        )
    }
}

async fn status_json(State(api): State<ApiState>) -> Json<NodeStatus> {
    Json(api.status.lock().expect("status lock").clone())
}

async fn hold(State(api): State<ApiState>) -> (StatusCode, String) {
    match api
        .store
        .put(&keys::hold(&api.cluster, &api.node), b"operator".to_vec(), None)
        .await
    {
        Ok(_) => (
            StatusCode::OK,
            format!("{} is held: its agent stops it and keeps it stopped\n", api.node),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot hold {}: {e}\n", api.node),
        ),
    }
}

async fn release(State(api): State<ApiState>) -> (StatusCode, String) {
    match api.store.delete(&keys::hold(&api.cluster, &api.node)).await {
        Ok(_) => (
            StatusCode::OK,
            format!("{} is released: its agent starts it when it may\n", api.node),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot release {}: {e}\n", api.node),
        ),
    }
}

async fn force(State(api): State<ApiState>) -> (StatusCode, String) {
    let key = keys::force_bootstrap(&api.cluster);
    match api.store.put(&key, api.node.clone().into_bytes(), None).await {
        Ok(_) => (
            StatusCode::OK,
            format!(
                "{} will start the cluster from its data if no member is Primary\n",
                api.node
            ),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot force {}: {e}\n", api.node),
        ),
    }
}

/// The value of `name` in a query string such as `lag=5&x=y`.
fn query_value<'a>(query: &'a Option<String>, name: &str) -> Option<&'a str> {
    query
        .as_deref()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn primary(State(api): State<ApiState>) -> (StatusCode, String) {
    let s = api.status.lock().expect("status lock").clone();
    if s.role == "primary" && s.healthy {
        (
            StatusCode::OK,
            format!("{} is the primary (epoch {})\n", s.name, s.epoch),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is not the primary: {} ({})\n", s.name, s.role, s.reason),
        )
    }
}

async fn replica(State(api): State<ApiState>, RawQuery(query): RawQuery) -> (StatusCode, String) {
    let s = api.status.lock().expect("status lock").clone();
    let max = match query_value(&query, "lag").map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                "lag must be a whole number of seconds, as in /replica?lag=5\n".into(),
            )
        }
    };
    let within = match (max, s.lag_seconds) {
        (None, _) => true,
        (Some(max), Some(lag)) => lag <= max,
        (Some(_), None) => false,
    };
    if s.role == "replica" && s.healthy && within {
        (
            StatusCode::OK,
            format!(
                "{} is a replica {} s behind\n",
                s.name,
                s.lag_seconds.unwrap_or(0)
            ),
        )
    } else if s.role == "replica" && s.healthy {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} is {} s behind, more than {} s\n",
                s.name,
                s.lag_seconds.unwrap_or(0),
                max.unwrap_or(0)
            ),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is not a healthy replica: {} ({})\n", s.name, s.role, s.reason),
        )
    }
}

async fn switchover(State(api): State<ApiState>, RawQuery(query): RawQuery) -> (StatusCode, String) {
    let to = query_value(&query, "to")
        .filter(|t| !t.is_empty())
        .map(String::from);
    let request = vigil_core::replication::Switchover {
        to: to.clone(),
        from: None,
        gtid: None,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let value = serde_json::to_vec(&request).expect("serialises");
    match api.store.compare_and_swap(&keys::switchover(&api.cluster), 0, value, None).await {
        Ok(vigil_store::CasOutcome::Swapped(_)) => (
            StatusCode::OK,
            format!(
                "switchover requested{}: the primary stops writes, the target applies everything, then takes over\n",
                to.map(|t| format!(" to {t}")).unwrap_or_default()
            ),
        ),
        Ok(vigil_store::CasOutcome::Conflict(_)) => (
            StatusCode::CONFLICT,
            "a switchover is already in progress\n".into(),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("cannot request a switchover: {e}\n")),
    }
}

async fn reclone(State(api): State<ApiState>) -> (StatusCode, String) {
    let quarantined = api.status.lock().expect("status lock").role == "quarantined";
    if !quarantined {
        return (
            StatusCode::CONFLICT,
            format!("{} is not quarantined: nothing to re-clone\n", api.node),
        );
    }
    match api
        .store
        .put(
            &keys::reclone(&api.cluster, &api.node),
            b"operator".to_vec(),
            None,
        )
        .await
    {
        Ok(_) => (
            StatusCode::OK,
            format!(
                "{} will be re-cloned from the primary; its current datadir is kept aside\n",
                api.node
            ),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot re-clone {}: {e}\n", api.node),
        ),
    }
}

async fn backup(State(api): State<ApiState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(source) = api.backup else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "{} does not serve backups (only replication nodes do)\n",
                api.node
            ),
        )
            .into_response();
    };
    match source.stream() {
        Some(body) => body.into_response(),
        None => (
            StatusCode::CONFLICT,
            format!(
                "a backup of {} is already streaming; try again when it ends\n",
                api.node
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::replication::FailsafeRequest;

    #[test]
    fn a_promise_binds_until_its_primary_lets_it_go() {
        let slot = FailsafeSlot::new(std::time::Duration::from_secs(5));
        let mut replica = NodeStatus::starting("n2", "127.0.0.1", 1, 2);
        replica.role = "replica".into();
        replica.epoch = 7;
        let ask = |leader: &str, release| FailsafeRequest {
            leader: leader.into(),
            epoch: 7,
            release,
        };
        assert_eq!(slot.answer("n2", &replica, &ask("n1", false)), Ok(()));
        assert_eq!(slot.bound_to().as_deref(), Some("n1"));
        assert!(slot.start_leading().is_err(), "bound: no promotion");
        // Another node's release lets nothing go.
        assert_eq!(slot.answer("n2", &replica, &ask("n3", true)), Ok(()));
        assert_eq!(slot.bound_to().as_deref(), Some("n1"));
        assert_eq!(slot.answer("n2", &replica, &ask("n1", true)), Ok(()));
        assert_eq!(slot.bound_to(), None);
        assert!(slot.start_leading().is_ok());
    }
}
