//! Local sync on real sparse files.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use vigil_sync::engine::RecordState;
use vigil_sync::extents::punch_hole;

fn tree(src: &std::path::Path) {
    make_image(&src.join("projects/a/0.img"), 1, 8);
    make_image(&src.join("projects/a/1.img"), 2, 3);
    make_image(&src.join("projects/b/0.img"), 3, 5);
    std::fs::write(src.join("projects/a/meta.json"), b"{\"name\":\"a\"}").unwrap();
    std::fs::write(src.join("top.txt"), b"hello").unwrap();
}

const FILES: [&str; 5] = [
    "projects/a/0.img",
    "projects/a/1.img",
    "projects/b/0.img",
    "projects/a/meta.json",
    "top.txt",
];

#[test]
fn sparse_copy_preserves_extents_contents_and_metadata() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    std::fs::set_permissions(
        src.join("projects/b/0.img"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let s = run(&local(&src), &local(&dst), &opts());
    assert_eq!(s.copied, FILES.len());
    for f in FILES {
        let (a, b) = (src.join(f), dst.join(f));
        assert_eq!(extents(&a), extents(&b), "{f}: extent maps differ");
        assert!(same_content(&a, &b), "{f}: contents differ");
        assert!(allocated(&b) <= allocated(&a), "{f}: target uses more disk");
        let (ma, mb) = (std::fs::metadata(&a).unwrap(), std::fs::metadata(&b).unwrap());
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "{f}: mtime"
        );
        assert_eq!(ma.mode(), mb.mode(), "{f}: mode");
    }
    assert!(
        allocated(&dst.join("projects/a/0.img")) < IMG / 8,
        "image not sparse"
    );
}

#[test]
fn rescan_of_unchanged_tree_copies_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    run(&local(&src), &local(&dst), &opts());
    let s = run(&local(&src), &local(&dst), &opts());
    assert_eq!((s.copied, s.unchanged), (0, FILES.len()));
    assert_eq!(s.record, RecordState::Fresh);
    // one changed block: only that file is copied
    write_at(&src.join("projects/b/0.img"), 3 << 20, &[9u8; 4096], 5);
    let s = run(&local(&src), &local(&dst), &opts());
    assert_eq!((s.copied, s.unchanged), (1, FILES.len() - 1));
    assert!(same_content(
        &src.join("projects/b/0.img"),
        &dst.join("projects/b/0.img")
    ));
}

#[test]
fn holes_punched_in_the_source_propagate() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    run(&local(&src), &local(&dst), &opts());
    let img = "projects/a/0.img";
    let before = allocated(&dst.join(img));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join(img))
        .unwrap();
    punch_hole(&f, 1 << 20, 64 << 10).unwrap();
    punch_hole(&f, 6 << 20, 64 << 10).unwrap();
    f.sync_all().unwrap();
    drop(f);
    set_mtime(&src.join(img), 5);
    let s = run(&local(&src), &local(&dst), &opts());
    assert_eq!(s.copied, 1);
    assert_eq!(extents(&src.join(img)), extents(&dst.join(img)));
    assert_eq!(allocated(&dst.join(img)), before - 2 * (64 << 10));
    assert!(same_content(&src.join(img), &dst.join(img)));
}

#[test]
fn both_sides_changed_keeps_a_conflict_copy() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    run(&local(&src), &local(&dst), &opts());
    // a: src newer; b: dst newer
    write_at(&src.join("projects/a/0.img"), 0, b"src-a", 20);
    write_at(&dst.join("projects/a/0.img"), 0, b"dst-a", 10);
    write_at(&src.join("projects/b/0.img"), 0, b"src-b", 10);
    write_at(&dst.join("projects/b/0.img"), 0, b"dst-b", 20);
    let s = run(&local(&src), &local(&dst), &opts());
    assert_eq!(s.conflicts.len(), 2, "{:?}", s.conflicts);
    let head = |p: &std::path::Path| std::fs::read(p).unwrap()[..5].to_vec();
    let find_copy = |rel: &str| {
        s.conflicts
            .iter()
            .find(|(r, _)| r == rel)
            .map(|(_, c)| dst.join(c))
            .unwrap()
    };
    // newer wins at the path, the other is kept beside it
    assert_eq!(head(&dst.join("projects/a/0.img")), b"src-a");
    assert_eq!(head(&find_copy("projects/a/0.img")), b"dst-a");
    assert_eq!(head(&dst.join("projects/b/0.img")), b"dst-b");
    assert_eq!(head(&find_copy("projects/b/0.img")), b"src-b");
    // the conflict is settled: the next run does not report it again
    let s = run(&local(&src), &local(&dst), &opts());
    assert!(s.conflicts.is_empty());
    // and a reverse run merges: src gets dst's newer b and both conflict copies
    let r = run(&local(&dst), &local(&src), &opts());
    assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
    assert_eq!(head(&src.join("projects/b/0.img")), b"dst-b");
    let rep = vigil_sync::verify::verify(&local(&src), &local(&dst), &Default::default()).unwrap();
    assert!(rep.differences.is_empty(), "{:?}", rep.differences);
}

#[test]
fn damaged_record_is_detected_and_rebuilt() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    run(&local(&src), &local(&dst), &opts());
    let recs: Vec<_> = std::fs::read_dir(dst.join(".vigil-sync"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rec"))
        .collect();
    assert_eq!(recs.len(), 1);
    let mut b = std::fs::read(&recs[0]).unwrap();
    b[20] ^= 0xff;
    std::fs::write(&recs[0], &b).unwrap();
    // meanwhile the source changed: a trusted damaged record must not hide it
    write_at(&src.join("projects/a/1.img"), 1 << 20, b"changed", 5);
    let s = run(&local(&src), &local(&dst), &opts());
    assert!(matches!(s.record, RecordState::Rebuilt(_)), "{:?}", s.record);
    assert!(s.line().contains("rebuilt"));
    assert_eq!(s.copied, 1);
    assert!(same_content(
        &src.join("projects/a/1.img"),
        &dst.join("projects/a/1.img")
    ));
    let s = run(&local(&src), &local(&dst), &opts());
    assert_eq!(
        (s.record, s.copied, s.unchanged),
        (RecordState::Fresh, 0, FILES.len())
    );
}

#[test]
fn delete_only_when_asked_and_never_a_file_changed_on_target() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    run(&local(&src), &local(&dst), &opts());
    std::fs::remove_file(src.join("top.txt")).unwrap();
    std::fs::remove_file(src.join("projects/a/meta.json")).unwrap();
    write_at(&dst.join("projects/a/meta.json"), 0, b"X", 5);
    let s = run(&local(&src), &local(&dst), &opts());
    assert_eq!(s.deleted, 0);
    assert!(dst.join("top.txt").exists());
    let d = opts();
    let s = run(
        &local(&src),
        &local(&dst),
        &vigil_sync::Options { delete: true, ..d },
    );
    assert_eq!(s.deleted, 1);
    assert!(!dst.join("top.txt").exists());
    assert_eq!(s.kept, vec!["projects/a/meta.json".to_string()]);
    assert!(dst.join("projects/a/meta.json").exists());
}

#[test]
fn dry_run_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    let s = run(
        &local(&src),
        &local(&dst),
        &vigil_sync::Options {
            dry_run: true,
            ..opts()
        },
    );
    assert_eq!(s.planned.len(), FILES.len());
    assert!(!dst.join("top.txt").exists());
}

#[test]
fn verify_finds_a_changed_block_and_a_missing_file() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    run(&local(&src), &local(&dst), &opts());
    let none = Default::default();
    assert!(vigil_sync::verify::verify(&local(&src), &local(&dst), &none)
        .unwrap()
        .differences
        .is_empty());
    // same size, mtime kept: only an end-to-end comparison sees it
    let p = dst.join("projects/b/0.img");
    let m = std::fs::metadata(&p).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"bitrot", 40 << 20).unwrap();
    f.set_modified(m).unwrap();
    std::fs::remove_file(dst.join("top.txt")).unwrap();
    let rep = vigil_sync::verify::verify(&local(&src), &local(&dst), &none).unwrap();
    let rels: Vec<_> = rep.differences.iter().map(|d| d.rel.as_str()).collect();
    assert_eq!(rels, vec!["projects/b/0.img", "top.txt"]);
}

#[test]
fn watch_syncs_new_and_changed_files() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    let stop = AtomicBool::new(false);
    let batches = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let batching = vigil_sync::watch::Batching {
                quiet: std::time::Duration::from_millis(50),
                max_delay: std::time::Duration::from_secs(1),
            };
            vigil_sync::watch::watch(&src, &stop, batching, || {
                run(&local(&src), &local(&dst), &opts());
                batches.fetch_add(1, Ordering::SeqCst);
            })
        });
        wait_for(20, "the first sync", || dst.join("top.txt").exists());
        make_image(&src.join("projects/c/0.img"), 7, 2);
        wait_for(20, "the new project", || {
            dst.join("projects/c/0.img").exists()
                && same_content(&src.join("projects/c/0.img"), &dst.join("projects/c/0.img"))
        });
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap().unwrap();
    });
    assert!(batches.load(Ordering::SeqCst) >= 2);
}

/// Entry point of the child process of the crash test; does nothing when run normally.
#[test]
#[ignore]
fn crash_child() {
    let (Ok(src), Ok(dst)) = (std::env::var("CRASH_SRC"), std::env::var("CRASH_DST")) else {
        return;
    };
    let o = vigil_sync::Options {
        jobs: 1,
        ..Default::default()
    };
    run(&local(src.as_ref()), &local(dst.as_ref()), &o);
}

#[test]
fn kill_9_mid_run_leaves_old_or_new_files_and_the_rerun_completes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let names: Vec<String> = (0..6).map(|i| format!("p{i}/0.img")).collect();
    for (i, n) in names.iter().enumerate() {
        make_image(&src.join(n), i as u8, 4);
    }
    run(&local(&src), &local(&dst), &opts());
    let old: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(dst.join(n)).unwrap())
        .collect();
    for n in &names {
        write_at(&src.join(n), 2 << 20, &[0xAB; 128 << 10], 5);
    }
    let new: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(src.join(n)).unwrap())
        .collect();
    let marker = t.path().join("stalled");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .env("CRASH_SRC", &src)
        .env("CRASH_DST", &dst)
        .env("VIGIL_SYNC_FAILPOINT", "before-rename:3")
        .env("VIGIL_SYNC_FAILPOINT_MARKER", &marker)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    wait_for(30, "the child to stall before its third rename", || {
        marker.exists()
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let _reap = Reap(child);
    let mut n_new = 0;
    for (i, n) in names.iter().enumerate() {
        let got = std::fs::read(dst.join(n)).unwrap();
        assert!(
            got == old[i] || got == new[i],
            "{n} is neither the old nor the new version"
        );
        n_new += (got == new[i]) as usize;
    }
    assert_eq!(n_new, 2, "two files were renamed in before the kill");
    let leftovers = walk_names(&dst)
        .into_iter()
        .filter(|n| n.contains(".vigil-tmp-"))
        .count();
    // the batch was written and flushed; files not yet renamed stay under temp names
    assert_eq!(leftovers, names.len() - 2, "unrenamed files keep temp names");
    let s = run(&local(&src), &local(&dst), &opts());
    assert_eq!(s.copied, 4);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(std::fs::read(dst.join(n)).unwrap(), new[i]);
    }
    assert!(walk_names(&dst).iter().all(|n| !n.contains(".vigil-tmp-")));
}

fn walk_names(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}
