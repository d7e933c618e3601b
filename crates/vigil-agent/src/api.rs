//! The agent's HTTP API, on loopback.
//!
//! - `GET /health`: 200 only when the node is Synced, in a Primary component and accepting
//!   queries (clustercheck's meaning); 503 with the reason otherwise. For load balancers.
//! - `GET /status`: the node's [`NodeStatus`] as JSON.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::NodeStatus;

pub type SharedStatus = Arc<Mutex<NodeStatus>>;

pub fn router(status: SharedStatus) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status_json))
        .with_state(status)
}

async fn health(State(status): State<SharedStatus>) -> (StatusCode, String) {
    let s = status.lock().expect("status lock").clone();
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

async fn status_json(State(status): State<SharedStatus>) -> Json<NodeStatus> {
    Json(status.lock().expect("status lock").clone())
}
