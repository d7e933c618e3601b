//! `vigil bench sync`: generates a seeded tree of sparse project images and times vigil sync
//! side by side with `cp -a --sparse=always` and `rsync -aS` on it: initial copy, rescan with
//! nothing changed, a few changed projects, and a one-block change pushed to a remote.
//! Everything it creates lives under `--dir` and is deleted at the end.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, RngCore, SeedableRng};

use crate::endpoint::Endpoint;
use crate::engine::{sync, Options};
use crate::progress::{human, Progress};
use crate::remote::client::ClientOptions;
use crate::remote::server::{load_config, Server};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// `vigil bench sync`.
#[derive(Debug, Args, Clone)]
pub struct BenchSyncArgs {
    /// Numbers of projects to run with, e.g. `--projects 100,4000`.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub projects: Vec<usize>,
    /// MiB of data per 1 GiB image, one value for all runs or one per `--projects` value.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub data_mib: Vec<u64>,
    /// Data extents per image.
    #[arg(long, default_value_t = 64)]
    pub extents: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Work directory (created, and removed afterwards).
    #[arg(long, default_value = "/tmp/vigil-bench-sync")]
    pub dir: PathBuf,
    /// Projects changed in the "changed" step.
    #[arg(long, default_value_t = 20)]
    pub changed: usize,
    /// rsync reads every hole, so its initial copy of more projects than this is timed on
    /// this many and extrapolated (reported as such).
    #[arg(long, default_value_t = 100)]
    pub rsync_sample: usize,
    /// Parallel jobs for vigil sync.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Runs of the initial copy (cp and vigil, alternating, median reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the remote step.
    #[arg(long)]
    pub no_remote: bool,
    /// Also write the Markdown results to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One timed command.
struct Timed {
    secs: f64,
    /// Seconds of a `sync(2)` right after: what it cost to make the copy durable.
    flush: f64,
    note: String,
}

fn flush_all() -> f64 {
    let t = Instant::now();
    rustix::fs::sync();
    t.elapsed().as_secs_f64()
}

/// Flushes and empties the page cache so that every tool starts cold (root only; without it
/// the tool that runs after rsync, which fills the cache with zero pages read from holes,
/// would start colder than the one before it).
fn cold() -> bool {
    flush_all();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn timed_cold(cmd: &mut Command) -> Result<Timed, String> {
    let is_cold = cold();
    let mut t = timed(cmd)?;
    if !is_cold {
        t.note = "warm cache (cannot drop caches)".into();
    }
    Ok(t)
}

fn sh(cmd: &mut Command) -> Result<(f64, String), String> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn timed(cmd: &mut Command) -> Result<Timed, String> {
    let (secs, _) = sh(cmd)?;
    Ok(Timed {
        secs,
        flush: flush_all(),
        note: String::new(),
    })
}

/// The run with the median wall time, its note naming the runs' range.
fn median(mut runs: Vec<Timed>, note: &str) -> Timed {
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    let (lo, hi) = (runs[0].secs, runs[runs.len() - 1].secs);
    let n = runs.len();
    let mut m = runs.swap_remove(n / 2);
    if n > 1 {
        let sep = if note.is_empty() { "" } else { "; " };
        m.note = format!("{note}{sep}median of {n} runs ({lo:.3} - {hi:.3} s)");
    } else {
        m.note = note.to_string();
    }
    m
}

fn cp(src: &Path, dst: &Path) -> Command {
    let mut c = Command::new("cp");
    c.arg("-a").arg("--sparse=always").arg(src).arg(dst);
    c
}

fn rsync(src: &Path, dst: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("rsync");
    c.arg("-aS")
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(dst);
    c
}

/// Removes the work directory however the bench ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a child we started, by its pid, when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn project_name(rng: &mut impl RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Writes `n` projects: `projects/<uuid>/0.img` (1 GiB, `data` bytes in `extents` extents),
/// `config.json` and `notes.txt`.
pub fn generate(root: &Path, n: usize, data: u64, extents: u64, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ext_len = (data / extents).max(4096) & !4095;
    let slot = GIB / extents;
    let mut buf = vec![0u8; ext_len as usize];
    let mut images = Vec::with_capacity(n);
    for _ in 0..n {
        let dir = root.join("projects").join(project_name(&mut rng));
        std::fs::create_dir_all(&dir)?;
        let img = dir.join("0.img");
        let f = File::create(&img)?;
        f.set_len(GIB)?;
        for i in 0..extents {
            let off = i * slot + (rng.gen_range(0..(slot - ext_len) / 4096)) * 4096;
            rng.fill_bytes(&mut buf);
            f.write_all_at(&buf, off)?;
        }
        std::fs::write(
            dir.join("config.json"),
            format!("{{\"disk\":\"0.img\",\"seed\":{}}}\n", rng.gen::<u32>()),
        )?;
        let notes: String = (0..4096).map(|_| (b'a' + rng.gen_range(0..26)) as char).collect();
        std::fs::write(dir.join("notes.txt"), notes)?;
        images.push(img);
    }
    Ok(images)
}

/// Overwrites the start of 4 data extents of `img` with new bytes.
fn change_image(img: &Path, seed: u64, len: usize) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(img)?;
    let ex = crate::extents::data_extents(&f, f.metadata()?.len())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; len];
    for e in ex.iter().step_by((ex.len() / 4).max(1)).take(4) {
        rng.fill_bytes(&mut buf);
        f.write_all_at(&buf[..len.min(e.len as usize)], e.offset)?;
    }
    Ok(())
}

fn vigil_cmd(args: &[&Path], jobs: usize) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vigil"));
    let mut c = Command::new(exe);
    c.arg("sync").args(args).arg("--jobs").arg(jobs.to_string());
    c
}

fn row(out: &mut String, step: &str, tool: &str, t: &Timed) {
    let _ = writeln!(
        out,
        "| {step} | {tool} | {:.3} | {:.3} | {} |",
        t.secs,
        t.secs + t.flush,
        t.note
    );
}

/// Runs the benchmark and prints Markdown tables.
pub fn run_bench(a: BenchSyncArgs) -> ExitCode {
    match bench(&a) {
        Ok(md) => {
            println!("{md}");
            if let Some(p) = &a.out {
                if let Err(e) = std::fs::write(p, &md) {
                    eprintln!("vigil: cannot write {}: {e}; check the path.", p.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "vigil: bench sync failed: {e}; bench data under {} was removed.",
                a.dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn bench(a: &BenchSyncArgs) -> Result<String, String> {
    for tool in ["cp", "rsync"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!(
                "{tool} is not installed (scripts/install-deps.sh installs it)"
            ));
        }
    }
    let mut md = String::new();
    for (i, &n) in a.projects.iter().enumerate() {
        let data_mib = *a.data_mib.get(i).or(a.data_mib.last()).unwrap_or(&16);
        if std::fs::metadata(&a.dir).is_ok() {
            return Err(format!(
                "{} exists; remove it or pick another --dir",
                a.dir.display()
            ));
        }
        let _cleanup = Cleanup(a.dir.clone());
        md.push_str(&bench_one(a, n, data_mib * MIB).map_err(|e| format!("{n} projects: {e}"))?);
    }
    Ok(md)
}

fn bench_one(a: &BenchSyncArgs, n: usize, data: u64) -> Result<String, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let d = &a.dir;
    let src = d.join("src");
    let t = Instant::now();
    let images = generate(&src, n, data, a.extents, a.seed).map_err(|e| io("generate", e))?;
    flush_all();
    eprintln!(
        "bench: generated {n} projects in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### {n} projects, 1 GiB images with {} of data in {} extents (seed {})\n",
        human(data),
        a.extents,
        a.seed
    );
    let _ = writeln!(
        out,
        "Initial copy and changed steps start with a cold page cache (sync + drop_caches before each tool); rescans run warm, right after the previous step.\n"
    );
    let _ = writeln!(
        out,
        "| step | tool | seconds | seconds incl. sync(2) | note |\n|---|---|---|---|---|"
    );

    // 1. initial copy
    let (dcp, drs, drs2, dvg) = (
        d.join("cp"),
        d.join("rsync"),
        d.join("rsync-inplace"),
        d.join("vigil"),
    );
    // cp and vigil alternate, `--runs` times each, from a cold cache; the median is reported
    let (mut cps, mut vgs) = (Vec::new(), Vec::new());
    for r in 0..a.runs.max(1) {
        if r > 0 {
            for p in [&dcp, &dvg] {
                std::fs::remove_dir_all(p).map_err(|e| io("remove", e))?;
            }
        }
        cps.push(timed_cold(&mut cp(&src, &dcp))?);
        vgs.push(timed_cold(&mut vigil_cmd(&[&src, &dvg], a.jobs))?);
    }
    row(
        &mut out,
        "initial copy",
        "cp -a --sparse=always",
        &median(cps, ""),
    );
    let initial_vigil = median(vgs, "includes its own flush (syncfs before renames)");
    if n <= a.rsync_sample {
        row(
            &mut out,
            "initial copy",
            "rsync -aS",
            &timed_cold(&mut rsync(&src, &drs, &[]))?,
        );
    } else {
        // time rsync on a sample, then give it the same starting tree as the others
        let sample = d.join("sample");
        std::fs::create_dir_all(&sample).map_err(|e| io("mkdir", e))?;
        let mut c = Command::new("rsync");
        c.arg("-aS");
        for img in images.iter().take(a.rsync_sample) {
            c.arg(img.parent().expect("project dir"));
        }
        c.arg(format!("{}/", sample.display()));
        let mut tm = timed_cold(&mut c)?;
        let f = n as f64 / a.rsync_sample as f64;
        tm.note = format!(
            "extrapolated: {:.1} s measured on {} projects, x{f:.0}",
            tm.secs, a.rsync_sample
        );
        tm.secs *= f;
        tm.flush *= f;
        row(&mut out, "initial copy", "rsync -aS", &tm);
        let _ = std::fs::remove_dir_all(&sample);
        sh(&mut cp(&src, &drs))?;
    }
    row(&mut out, "initial copy", "vigil sync", &initial_vigil);
    sh(&mut cp(&drs, &drs2))?;
    flush_all();

    // 2. rescan, nothing changed
    row(
        &mut out,
        "rescan, nothing changed",
        "cp -a --sparse=always",
        &timed(&mut cp(&src, &d.join("cp2")))?,
    );
    let _ = std::fs::remove_dir_all(d.join("cp2"));
    row(
        &mut out,
        "rescan, nothing changed",
        "rsync -aS",
        &timed(&mut rsync(&src, &drs, &[]))?,
    );
    let mut rescans = Vec::new();
    for _ in 0..5 {
        rescans.push(timed(&mut vigil_cmd(&[&src, &dvg], a.jobs))?);
    }
    row(
        &mut out,
        "rescan, nothing changed",
        "vigil sync",
        &median(rescans, "warm cache"),
    );

    // 3. some projects changed
    let k = a.changed.min(n);
    for (j, img) in images.iter().step_by((n / k.max(1)).max(1)).take(k).enumerate() {
        change_image(img, a.seed ^ (j as u64 + 1) << 32, 64 << 10).map_err(|e| io("change", e))?;
    }
    flush_all();
    let step = format!("{k} projects changed");
    row(
        &mut out,
        &step,
        "cp -a --sparse=always",
        &timed_cold(&mut cp(&src, &d.join("cp3")))?,
    );
    let _ = std::fs::remove_dir_all(d.join("cp3"));
    row(
        &mut out,
        &step,
        "rsync -aS",
        &timed_cold(&mut rsync(&src, &drs, &[]))?,
    );
    row(
        &mut out,
        &step,
        "rsync -aS --inplace --no-W",
        &timed_cold(&mut rsync(&src, &drs2, &["--inplace", "--no-W"]))?,
    );
    row(
        &mut out,
        &step,
        "vigil sync",
        &timed_cold(&mut vigil_cmd(&[&src, &dvg], a.jobs))?,
    );
    let (_, verify) = sh(vigil_cmd(&[&src, &dvg], a.jobs).arg("--dry-run"))?;
    if !verify.contains("0 action(s)") {
        return Err(format!("vigil left work undone: {verify}"));
    }
    for p in [&dcp, &drs, &drs2, &dvg] {
        let _ = std::fs::remove_dir_all(p);
    }

    if !a.no_remote {
        out.push_str(&remote(a, &src, &images)?);
    }
    let _ = std::fs::remove_dir_all(&src);
    Ok(out)
}

fn remote(a: &BenchSyncArgs, src: &Path, images: &[PathBuf]) -> Result<String, String> {
    let d = &a.dir;
    let e = |x: crate::error::SyncError| x.to_string();
    let certs = crate::remote::tls::generate(&d.join("certs"), &["127.0.0.1".into()]).map_err(e)?;
    let root = d.join("remote-root");
    std::fs::create_dir_all(&root).map_err(|x| x.to_string())?;
    let cfg = load_config(
        &root,
        &certs.server_cert,
        &certs.server_key,
        None,
        Some(&certs.token),
    )
    .map_err(e)?;
    let server = Server::bind(cfg, "127.0.0.1:0").map_err(e)?.spawn();
    let dst = Endpoint::parse(&format!("{}/", server.addr())).map_err(e)?;
    let opts = Options {
        jobs: a.jobs,
        client: ClientOptions {
            ca: Some(certs.ca.clone()),
            token: crate::remote::tls::load_token(Some(&certs.token)).map_err(e)?,
            ..Default::default()
        },
        ..Options::default()
    };
    let p = Arc::new(Progress::default());
    let mut out = String::new();
    cold();
    let _ = writeln!(
        out,
        "\n| remote step | tool | seconds | bytes on the wire | note |\n|---|---|---|---|---|"
    );
    let s = sync(&Endpoint::Local(src.to_path_buf()), &dst, &opts, &p).map_err(e)?;
    let _ = writeln!(
        out,
        "| initial push | vigil sync (TLS, 127.0.0.1) | {:.3} | {} | {} files |",
        s.elapsed.as_secs_f64(),
        human(s.wire_bytes),
        s.copied
    );
    // rsync daemon over plain TCP on 127.0.0.1, seeded with the same tree
    let rroot = d.join("rsyncd-root");
    sh(&mut cp(src, &rroot))?;
    let conf = d.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\nuid = root\ngid = root\n[bench]\npath = {}\nread only = no\n",
            rroot.display()
        ),
    )
    .map_err(|x| x.to_string())?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|x| x.to_string())?;
        l.local_addr().map_err(|x| x.to_string())?.port()
    };
    let daemon = ChildGuard(
        Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|x| x.to_string())?,
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("rsync daemon did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // one 4 KiB change in one image
    let img = &images[0];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .map_err(|x| x.to_string())?;
    let ex = crate::extents::data_extents(&f, GIB).map_err(|x| x.to_string())?;
    let mut buf = vec![0u8; 4096];
    rand::rngs::StdRng::seed_from_u64(a.seed ^ 0xb10c).fill_bytes(&mut buf);
    f.write_all_at(&buf, ex[ex.len() / 2].offset)
        .map_err(|x| x.to_string())?;
    drop(f);
    let s = sync(&Endpoint::Local(src.to_path_buf()), &dst, &opts, &p).map_err(e)?;
    let _ = writeln!(
        out,
        "| one 4 KiB change in one 1 GiB image | vigil sync (TLS) | {:.3} | {} | {} file, {} of data sent |",
        s.elapsed.as_secs_f64(),
        human(s.wire_bytes),
        s.copied,
        human(s.data_bytes)
    );
    let mut c = Command::new("rsync");
    c.args(["-aS", "--inplace", "--no-W", "--stats"])
        .arg(format!("{}/", src.display()))
        .arg(format!("rsync://127.0.0.1:{port}/bench/"));
    let (secs, stats) = sh(&mut c)?;
    let num = |key: &str| -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().split(' ').next().unwrap_or("0").replace(',', ""))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let wire = num("Total bytes sent") + num("Total bytes received");
    let _ = writeln!(
        out,
        "| one 4 KiB change in one 1 GiB image | rsync -aS --inplace --no-W (daemon, plain TCP) | {secs:.3} | {} | |",
        human(wire)
    );
    drop(daemon);
    drop(server);
    Ok(out)
}
