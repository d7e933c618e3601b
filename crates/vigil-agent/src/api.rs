//! The agent's HTTP API, on loopback.
//!
//! - `GET /health`: 200 only when the node is Synced, in a Primary component and accepting
//!   queries (clustercheck's meaning); 503 with the reason otherwise. For load balancers.
//! - `GET /status`: the node's [`NodeStatus`] as JSON.
//! - `POST /hold`, `POST /release`: keep the node stopped (cleanly) for maintenance, or let
//!   the agent run it again.
//! - `POST /recover/force`: after an outage, start the cluster from this node's data even
//!   though a member that may hold newer data is missing. The operator's explicit decision.
//!
//! Holds and forces are written to the coordination store, so they outlive the agent.

use std::sync::{Arc, Mutex};

use axum::extract::State;
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
        .route("/health", get(health))
        .route("/status", get(status_json))
        .route("/hold", post(hold))
        .route("/release", post(release))
        .route("/recover/force", post(force))
        .with_state(state)
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
