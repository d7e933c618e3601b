//! The behaviour every [`CoordinationStore`] must have, as one suite run against each
//! implementation. Lease tests advance time with `tokio::time::sleep`: run them on a paused
//! clock for the memory store, and with real time (short TTLs) for a real store.

use std::time::Duration;

use crate::{CasOutcome, CoordinationStore, StoreError, WatchEvent};

/// Runs every check; panics with a description on the first failure.
pub async fn run_all(store: &dyn CoordinationStore) {
    put_get_list_delete(store).await;
    revisions_increase(store).await;
    compare_and_swap(store).await;
    leases_expire_and_renew(store).await;
    watch_sees_puts_deletes_and_expiry(store).await;
}

pub async fn put_get_list_delete(store: &dyn CoordinationStore) {
    assert_eq!(store.get("/c/a").await.unwrap(), None);
    store.put("/c/a", b"1".to_vec(), None).await.unwrap();
    store.put("/c/b", b"2".to_vec(), None).await.unwrap();
    store.put("/d/a", b"3".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/c/a").await.unwrap().unwrap().value, b"1");
    let keys: Vec<String> = store
        .list("/c/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        keys,
        vec!["/c/a", "/c/b"],
        "list returns exactly the prefix, in key order"
    );
    assert!(store.delete("/c/a").await.unwrap());
    assert!(
        !store.delete("/c/a").await.unwrap(),
        "deleting a missing key reports false"
    );
    assert_eq!(store.get("/c/a").await.unwrap(), None);
    for k in ["/c/b", "/d/a"] {
        store.delete(k).await.unwrap();
    }
}

pub async fn revisions_increase(store: &dyn CoordinationStore) {
    let r1 = store.put("/rev/a", b"x".to_vec(), None).await.unwrap();
    let r2 = store.put("/rev/a", b"y".to_vec(), None).await.unwrap();
    assert!(r2 > r1, "each write gets a higher revision");
    assert_eq!(store.get("/rev/a").await.unwrap().unwrap().mod_revision, r2);
    store.delete("/rev/a").await.unwrap();
}

pub async fn compare_and_swap(store: &dyn CoordinationStore) {
    let r1 = match store
        .compare_and_swap("/cas/k", 0, b"first".to_vec(), None)
        .await
        .unwrap()
    {
        CasOutcome::Swapped(r) => r,
        other => panic!("creating an absent key with expected revision 0 must succeed: {other:?}"),
    };
    match store
        .compare_and_swap("/cas/k", 0, b"second".to_vec(), None)
        .await
        .unwrap()
    {
        CasOutcome::Conflict(Some(kv)) => assert_eq!(kv.value, b"first"),
        other => panic!("expected 0 on an existing key must conflict and show it: {other:?}"),
    }
    let r2 = match store
        .compare_and_swap("/cas/k", r1, b"third".to_vec(), None)
        .await
        .unwrap()
    {
        CasOutcome::Swapped(r) => r,
        other => panic!("the current revision must swap: {other:?}"),
    };
    assert!(r2 > r1);
    assert!(matches!(
        store
            .compare_and_swap("/cas/k", r1, b"stale".to_vec(), None)
            .await
            .unwrap(),
        CasOutcome::Conflict(_)
    ));
    assert_eq!(store.get("/cas/k").await.unwrap().unwrap().value, b"third");
    store.delete("/cas/k").await.unwrap();
}

pub async fn leases_expire_and_renew(store: &dyn CoordinationStore) {
    let ttl = Duration::from_secs(2);
    let lease = store.grant_lease(ttl).await.unwrap();
    store.put("/lease/k", b"v".to_vec(), Some(lease)).await.unwrap();
    tokio::time::sleep(ttl / 2).await;
    store.keep_alive(lease).await.unwrap();
    tokio::time::sleep(ttl * 3 / 4).await;
    assert!(
        store.get("/lease/k").await.unwrap().is_some(),
        "a renewed lease keeps its keys"
    );
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(
        store.get("/lease/k").await.unwrap(),
        None,
        "an expired lease's keys are gone"
    );
    assert_eq!(store.keep_alive(lease).await, Err(StoreError::LeaseLost(lease)));
    assert_eq!(
        store.put("/lease/k", b"v".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseLost(lease)),
        "writing under an expired lease fails"
    );

    let lease = store.grant_lease(ttl).await.unwrap();
    store.put("/lease/r", b"v".to_vec(), Some(lease)).await.unwrap();
    store.revoke(lease).await.unwrap();
    assert_eq!(
        store.get("/lease/r").await.unwrap(),
        None,
        "a revoked lease's keys are gone"
    );
}

pub async fn watch_sees_puts_deletes_and_expiry(store: &dyn CoordinationStore) {
    let mut rx = store.watch("/w/").await.unwrap();
    store.put("/w/a", b"1".to_vec(), None).await.unwrap();
    store.put("/x/ignored", b"1".to_vec(), None).await.unwrap();
    store.delete("/w/a").await.unwrap();
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store.put("/w/l", b"2".to_vec(), Some(lease)).await.unwrap();

    assert!(matches!(next(&mut rx).await, WatchEvent::Put(kv) if kv.key == "/w/a" && kv.value == b"1"));
    assert!(matches!(next(&mut rx).await, WatchEvent::Delete { key, .. } if key == "/w/a"));
    assert!(matches!(next(&mut rx).await, WatchEvent::Put(kv) if kv.key == "/w/l"));
    assert!(
        matches!(next(&mut rx).await, WatchEvent::Delete { key, .. } if key == "/w/l"),
        "lease expiry is seen by watchers"
    );
    store.delete("/x/ignored").await.unwrap();
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("watch event within 10 s")
        .expect("watch stays open")
}
