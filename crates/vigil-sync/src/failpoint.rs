//! Named failpoints for crash tests. `VIGIL_SYNC_FAILPOINT=name:N` makes the N-th hit of
//! `name` (counting from 1) create the file named by `VIGIL_SYNC_FAILPOINT_MARKER` and stall
//! forever, so a test can kill -9 the process at exactly that point. Unset, a hit costs one
//! atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static CONFIG: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn hit(name: &str) {
    let cfg = CONFIG.get_or_init(|| {
        let v = std::env::var("VIGIL_SYNC_FAILPOINT").ok()?;
        let (n, count) = v.split_once(':')?;
        Some((n.to_string(), count.parse().ok()?))
    });
    let Some((n, count)) = cfg else { return };
    if n != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *count {
        return;
    }
    if let Ok(marker) = std::env::var("VIGIL_SYNC_FAILPOINT_MARKER") {
        let _ = std::fs::write(marker, name);
    }
    loop {
        std::thread::park();
    }
}
