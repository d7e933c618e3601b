//! Progress of a run: counters the workers bump, and a bar drawn on a terminal.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared counters. Bytes are data bytes (holes excluded).
#[derive(Debug, Default)]
pub struct Progress {
    pub total_bytes: AtomicU64,
    pub done_bytes: AtomicU64,
    pub total_files: AtomicU64,
    pub done_files: AtomicU64,
}

impl Progress {
    pub fn add(&self, bytes: u64) {
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn file_done(&self) {
        self.done_files.fetch_add(1, Ordering::Relaxed);
    }
}

/// Human units: 1.5 GiB.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// One line of the bar: pure, for a given moment.
pub fn render(total: u64, done: u64, files: u64, total_files: u64, elapsed: Duration) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let width = 24;
    let filled = (frac * width as f64) as usize;
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    format!(
        "[{}{}] {}/{}  {}/{} files  {}/s  ETA {}",
        "=".repeat(filled),
        " ".repeat(width - filled),
        human(done),
        human(total),
        files,
        total_files,
        human(rate as u64),
        eta
    )
}

/// Draws the bar on stderr every 200 ms until dropped.
pub struct Bar {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    pub fn start(p: Arc<Progress>) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let line = render(
                    p.total_bytes.load(Ordering::Relaxed),
                    p.done_bytes.load(Ordering::Relaxed),
                    p.done_files.load(Ordering::Relaxed),
                    p.total_files.load(Ordering::Relaxed),
                    t0.elapsed(),
                );
                let _ = write!(std::io::stderr(), "\r{line}\x1b[K");
                std::thread::park_timeout(Duration::from_millis(200));
            }
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        });
        Bar {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rate_and_eta() {
        let l = render(4 << 20, 1 << 20, 3, 10, Duration::from_secs(1));
        assert!(
            l.starts_with("[======                  ] 1.0 MiB/4.0 MiB  3/10 files  1.0 MiB/s  ETA 3s"),
            "{l}"
        );
        assert_eq!(human(512), "512 B");
    }
}
