//! The coordination store: where agents publish what they see and take leases and locks.
//!
//! [`CoordinationStore`] is a small key-value interface with the three things HA decisions
//! need: leases with a TTL (a dead holder's keys vanish), compare-and-swap on a key's revision
//! (the revision doubles as a fencing token), and watches. [`memory::MemoryStore`] serves a
//! cluster that lives in one process (`vigil up`); [`etcd::EtcdStore`] serves real
//! deployments. [`conformance`] holds the suite every implementation must pass.
//!
//! This crate knows nothing of MariaDB; keys and values are opaque to it.
#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub mod conformance;
pub mod etcd;
pub mod memory;

/// A store-wide, strictly increasing modification number. 0 means "no such key".
pub type Revision = u64;

/// A lease: keys attached to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that produced this value.
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// The outcome of [`CoordinationStore::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written, at this revision.
    Swapped(Revision),
    /// Not written: the key was not at the expected revision. This is what it holds now.
    Conflict(Option<KeyValue>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The lease expired or was revoked: whatever it protected is no longer held.
    #[error("lease {0:?} has expired or was revoked")]
    LeaseLost(LeaseId),
    /// The store cannot be reached or has no quorum; the caller may retry.
    #[error("coordination store unavailable: {0}")]
    Unavailable(String),
}

/// A key-value store with leases, compare-and-swap and watches.
#[async_trait]
pub trait CoordinationStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// All keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError>;
    /// Writes `value` only if the key's current `mod_revision` is `expected` (0: only if absent).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, StoreError>;
    /// Deletes the key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Renews the lease for another TTL, or fails with [`StoreError::LeaseLost`].
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Events for keys under `prefix` from now on, in revision order.
    async fn watch(&self, prefix: &str) -> Result<mpsc::UnboundedReceiver<WatchEvent>, StoreError>;
}
