//! An in-memory [`CoordinationStore`] for clusters that live in one process.
//!
//! Time is `tokio::time`, so tests with a paused clock control lease expiry. Expired leases
//! are reaped on every operation and by a background task, so watchers see the deletions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{CasOutcome, CoordinationStore, KeyValue, LeaseId, Revision, StoreError, WatchEvent};

#[derive(Default)]
struct State {
    revision: Revision,
    next_lease: i64,
    data: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, (Duration, Instant)>,
    watchers: Vec<(String, mpsc::UnboundedSender<WatchEvent>)>,
}

impl State {
    fn notify(&mut self, key: &str, event: WatchEvent) {
        self.watchers
            .retain(|(prefix, tx)| !key.starts_with(prefix.as_str()) || tx.send(event.clone()).is_ok());
    }

    fn reap(&mut self, now: Instant) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .data
            .values()
            .filter(|kv| kv.lease == Some(id))
            .map(|kv| kv.key.clone())
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &str) -> bool {
        if self.data.remove(key).is_some() {
            self.revision += 1;
            let revision = self.revision;
            self.notify(
                key,
                WatchEvent::Delete {
                    key: key.to_string(),
                    revision,
                },
            );
            true
        } else {
            false
        }
    }

    fn write(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        if let Some(id) = lease {
            if !self.leases.contains_key(&id) {
                return Err(StoreError::LeaseLost(id));
            }
        }
        self.revision += 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            mod_revision: self.revision,
            lease,
        };
        self.data.insert(key.to_string(), kv.clone());
        self.notify(key, WatchEvent::Put(kv));
        Ok(self.revision)
    }
}

/// See the module documentation.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// A new empty store. Call from within a tokio runtime: it starts the lease reaper.
    pub fn new() -> MemoryStore {
        let store = MemoryStore::default();
        let weak: Weak<Mutex<State>> = Arc::downgrade(&store.state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { break };
                state.lock().expect("store lock").reap(Instant::now());
            }
        });
        store
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().expect("store lock");
        state.reap(Instant::now());
        f(&mut state)
    }
}

#[async_trait]
impl CoordinationStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.with(|s| s.data.get(key).cloned()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self.with(|s| {
            s.data
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect()
        }))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.with(|s| s.write(key, value, lease))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, StoreError> {
        self.with(|s| {
            let current = s.data.get(key).map_or(0, |kv| kv.mod_revision);
            if current != expected {
                return Ok(CasOutcome::Conflict(s.data.get(key).cloned()));
            }
            s.write(key, value, lease).map(CasOutcome::Swapped)
        })
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.with(|s| s.remove(key)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        Ok(self.with(|s| {
            s.next_lease += 1;
            let id = LeaseId(s.next_lease);
            s.leases.insert(id, (ttl, Instant::now() + ttl));
            id
        }))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.with(|s| match s.leases.get_mut(&lease) {
            Some((ttl, deadline)) => {
                *deadline = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseLost(lease)),
        })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.with(|s| s.drop_lease(lease));
        Ok(())
    }

    async fn watch(&self, prefix: &str) -> Result<mpsc::UnboundedReceiver<WatchEvent>, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.with(|s| s.watchers.push((prefix.to_string(), tx)));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn passes_the_conformance_suite() {
        crate::conformance::run_all(&MemoryStore::new()).await;
    }
}
