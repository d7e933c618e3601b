//! How long to wait before restarting a node that crashed or failed to start.

use std::time::Duration;

/// A node that has run this long counts as recovered: its next crash starts the backoff anew.
pub const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Bounded exponential backoff: 1 s after the first failure, doubling, at most 60 s. A node
/// that keeps crashing is retried, but never in a tight loop.
pub fn restart_delay(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(6);
    Duration::from_secs((1u64 << exp).min(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(restart_delay(0).as_secs(), 1);
        assert_eq!(restart_delay(u32::MAX).as_secs(), 60);
    }
}
