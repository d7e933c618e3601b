//! Helpers shared by the integration tests: real sparse files in temp dirs.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use vigil_sync::extents::{data_extents, Extent};
use vigil_sync::progress::Progress;
use vigil_sync::{Endpoint, Options, Summary};

pub const IMG: u64 = 64 << 20;

/// A 64 MiB sparse image with `n` data extents of 64 KiB filled from `seed`.
pub fn make_image(path: &Path, seed: u8, n: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = File::create(path).unwrap();
    f.set_len(IMG).unwrap();
    for i in 0..n {
        let off = (i * 5 + 1) * (1 << 20);
        f.write_all_at(&pattern(seed, i, 64 << 10), off).unwrap();
    }
    // allocate now, so that block counts compare like for like (ext4 allocates lazily)
    f.sync_all().unwrap();
}

pub fn pattern(seed: u8, i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k as u64).wrapping_mul(31).wrapping_add(i * 7 + seed as u64) as u8 | 1)
        .collect()
}

/// Writes `bytes` at `off` and moves mtime `secs` seconds into the future so the change is
/// visibly newer whatever the clock granularity.
pub fn write_at(path: &Path, off: u64, bytes: &[u8], secs: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
    set_mtime(path, secs);
}

pub fn set_mtime(path: &Path, secs_ahead: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(secs_ahead))
        .unwrap();
}

pub fn extents(path: &Path) -> Vec<Extent> {
    let f = File::open(path).unwrap();
    data_extents(&f, f.metadata().unwrap().len()).unwrap()
}

pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn same_content(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

pub fn local(p: &Path) -> Endpoint {
    Endpoint::Local(p.to_path_buf())
}

pub fn run(src: &Endpoint, dst: &Endpoint, opts: &Options) -> Summary {
    let s = vigil_sync::sync(src, dst, opts, &Arc::new(Progress::default())).unwrap();
    assert!(s.failed.is_empty(), "failures: {:?}", s.failed);
    s
}

pub fn opts() -> Options {
    Options {
        jobs: 2,
        ..Options::default()
    }
}

/// Waits until `cond` holds, failing the test after `secs`.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
