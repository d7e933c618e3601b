//! `vigil bench proxy`: sysbench through each proxy a user might choose, against the same
//! MariaDB node (the writer), so that the proxy's own cost is what differs.
//!
//! Targets: direct, vigil proxy (a separate `vigil proxy --config` process routed from the etcd
//! the cluster coordinates through), HAProxy (TCP mode, health-checking the agent's `/health`
//! at the agents' probe interval, with as many threads as vigil proxy) and Pen. Runs are
//! interleaved (each thread count and workload runs every target in turn). CPU per query is the
//! proxy process's CPU time over the run (less its idle rate, measured beforehand) divided by
//! the queries sysbench completed.

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use vigil_testkit::KillOnDrop;

#[derive(clap::Args)]
pub struct ProxyArgs {
    /// Seconds per sysbench run.
    #[arg(long, default_value_t = 10)]
    time: u64,
    /// Thread counts to run, comma-separated.
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',')]
    threads: Vec<u32>,
    #[arg(
        long,
        default_value = "oltp_point_select,oltp_read_only",
        value_delimiter = ','
    )]
    workloads: Vec<String>,
    /// Rounds: every cell runs this many times (interleaved) and the median run is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker threads of vigil proxy, and HAProxy's nbthread.
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Also run a second, identical HAProxy and compare it with the first, as vigil is: how far
    /// apart two runs of the same proxy come out on this machine (an A/A control).
    #[arg(long)]
    control: bool,
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/PID/stat (utime, stime) are 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Scheduler figures of a process, summed over its threads (`/proc/PID/task/*/schedstat`):
/// seconds spent runnable but waiting for a CPU, and times it was put on a CPU.
fn sched(pid: u32) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let fields: Vec<f64> = stat.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if let [_, wait_ns, slices] = fields[..] {
            total = (total.0 + wait_ns / 1e9, total.1 + slices);
        }
    }
    total
}

/// What sysbench connects to.
struct Target {
    name: &'static str,
    port: u16,
    /// The proxy process's pid and its idle CPU seconds per second; none for direct.
    proxy: Option<(u32, f64)>,
}

/// How long each proxy's idle CPU rate is measured before the runs.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// One sysbench run through one target, as reported.
#[derive(Clone)]
struct Run {
    qps: f64,
    p95: f64,
    p99: f64,
    /// Proxy CPU µs per query (none for the direct target).
    cpu: Option<f64>,
    /// µs per query the proxy waited, runnable, for a CPU, and the times per query it was put
    /// on one (none for the direct target).
    sched: Option<(f64, f64)>,
}

/// The median of some figures, and their range.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// NaN when there are no figures or one is NaN (unmeasured).
    fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() || v.iter().any(|x| x.is_nan()) {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} ({:.2}-{:.2})", self.median, self.min, self.max)
    }
}

/// One cell of the comparison with HAProxy. The machine's speed drifts over minutes by more
/// than the proxies differ, so each round's vigil run is compared with the same round's
/// HAProxy run (minutes apart at most, seconds apart mostly) and the verdict is the median of
/// those ratios over the rounds.
struct Verdict {
    workload: String,
    threads: u32,
    /// The proxy compared with HAProxy.
    proxy: &'static str,
    qps: Spread,
    cpu: Spread,
    p99: Spread,
}

impl Verdict {
    /// `runs` (of `proxy`) and `haproxy` hold one run per round, in round order.
    fn of(workload: &str, threads: u32, proxy: &'static str, runs: &[Run], haproxy: &[Run]) -> Verdict {
        let ratios = |f: &dyn Fn(&Run) -> Option<f64>| {
            Spread::of(
                runs.iter()
                    .zip(haproxy)
                    .map(|(v, h)| match (f(v), f(h)) {
                        (Some(v), Some(h)) if h > 0.0 => v / h,
                        _ => f64::NAN,
                    })
                    .collect(),
            )
        };
        Verdict {
            workload: workload.to_string(),
            threads,
            proxy,
            qps: ratios(&|r| Some(r.qps)),
            cpu: ratios(&|r| r.cpu),
            p99: ratios(&|r| Some(r.p99)),
        }
    }

    /// QPS at least HAProxy's, CPU per query and p99 no higher (NaN, unmeasured, is not met).
    fn met(&self) -> bool {
        self.qps.median >= 1.0 && self.cpu.median <= 1.0 && self.p99.median <= 1.0
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "| {} | {} | {} | {} | {} | {} | {} |",
            self.workload,
            self.threads,
            self.proxy,
            self.qps,
            self.cpu,
            self.p99,
            if self.met() { "yes" } else { "no" }
        )
    }
}

struct RunResult {
    qps: f64,
    queries: f64,
    p95_ms: f64,
    p99_ms: f64,
}

/// Parses sysbench's summary and latency histogram.
fn parse_sysbench(out: &str) -> Option<RunResult> {
    let queries_line = out.lines().find(|l| l.trim_start().starts_with("queries:"))?;
    let mut parts = queries_line.split_whitespace();
    let queries: f64 = parts.nth(1)?.parse().ok()?;
    let qps: f64 = queries_line
        .split('(')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mut histogram: Vec<(f64, u64)> = Vec::new();
    for line in out.lines() {
        let Some((value, rest)) = line.split_once('|') else {
            continue;
        };
        let (Ok(v), Some(Ok(c))) = (
            value.trim().parse::<f64>(),
            rest.split_whitespace().last().map(str::parse::<u64>),
        ) else {
            continue;
        };
        histogram.push((v, c));
    }
    let total: u64 = histogram.iter().map(|(_, c)| c).sum();
    let percentile = |p: f64| {
        let mut seen = 0;
        for (v, c) in &histogram {
            seen += c;
            if seen as f64 >= p * total as f64 {
                return *v;
            }
        }
        f64::NAN
    };
    Some(RunResult {
        qps,
        queries,
        p95_ms: percentile(0.95),
        p99_ms: percentile(0.99),
    })
}

fn sysbench(workload: &str, port: u16, threads: u32, time: u64, action: &str) -> anyhow::Result<String> {
    let out = Command::new("sysbench")
        .arg(workload)
        .args([
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            "--mysql-user=vigil_bench",
            "--mysql-db=sbtest",
        ])
        .arg(format!("--mysql-port={port}"))
        .args([
            "--tables=4",
            "--table-size=10000",
            "--histogram=on",
            "--report-interval=0",
        ])
        .arg(format!("--threads={threads}"))
        .arg(format!("--time={time}"))
        .arg(action)
        .stdin(Stdio::null())
        .output()
        .context("running sysbench (install it with scripts/install-deps.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // sysbench reports some failures on stdout and some on stderr; show the end of both
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(8)..].join(" | ")
        };
        anyhow::bail!(
            "sysbench {workload} {action} at {threads} threads on port {port} failed ({}): {} {}",
            out.status,
            tail(&stderr),
            tail(&text)
        );
    }
    Ok(text)
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("nothing listens on port {port}")
}

pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let vigil = std::env::current_exe()?;
    let etcd = vigil_testkit::etcd::EtcdCluster::start(1);
    let endpoints = etcd.endpoints().join(",");
    let mut cluster = vigil_testkit::LocalCluster::start(&vigil, 3, &["--store", &endpoints]);
    let nodes = cluster.wait_synced(Duration::from_secs(300));
    let writer = nodes
        .iter()
        .find(|n| n.role == "writer")
        .context("no writer")?
        .clone();
    let node = cluster
        .config
        .node(&writer.name)
        .context("writer not configured")?
        .clone();
    let interval_ms = cluster.config.agent.probe_interval_ms;

    // A throwaway user without a password (sysbench takes passwords only on its command line),
    // limited to the benchmark's database, on a throwaway cluster.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let layout = vigil_mariadb::NodeLayout::new(cluster.node_dir(&writer.name));
        let mut root = vigil_mariadb::admin::connect_root(&writer.name, &layout).await?;
        for sql in [
            "CREATE DATABASE IF NOT EXISTS sbtest",
            "CREATE USER IF NOT EXISTS 'vigil_bench'@'127.0.0.1'",
            "GRANT ALL ON sbtest.* TO 'vigil_bench'@'127.0.0.1'",
        ] {
            root.query_drop(sql).await?;
        }
        root.disconnect().await?;
        anyhow::Ok(())
    })?;
    sysbench("oltp_read_only", node.sql_port, 4, 1, "prepare")?;

    let base = vigil_agent::local::free_base_port(1);
    let (haproxy_port, pen_port) = (base, base + 1);
    let dir = cluster.path().to_path_buf();

    // vigil proxy on its own, as HAProxy and Pen run
    let mut config = cluster.config.clone();
    // On this machine sysbench saturates every core, and the store's answers can then take
    // seconds. The proxy would rightly close its write port once its routes are older than
    // the lease TTL (fail closed), and sysbench's connects would fail; the benchmark measures
    // the data path, so its proxy tolerates a slower store.
    config.agent.lease_ttl_ms = config.agent.lease_ttl_ms.max(20_000);
    if let Some(store) = config.store.as_mut() {
        store.request_timeout_ms = store.request_timeout_ms.max(5_000);
    }
    let section = config.proxy.as_mut().context("no [proxy] section")?;
    (section.write_port, section.read_port, section.status_port) = (base + 2, base + 3, None);
    let vigil_port = section.write_port;
    let proxy_file = dir.join("proxy.toml");
    std::fs::write(&proxy_file, config.to_toml())?;
    let vigil_proxy = KillOnDrop(
        Command::new(&vigil)
            .args(["proxy", "--config"])
            .arg(&proxy_file)
            .arg("--threads")
            .arg(args.proxy_threads.to_string())
            .env("VIGIL_LOG", "vigil_proxy=debug,warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("vigil-proxy.log"))?)
            .spawn()
            .context("starting vigil proxy")?,
    );
    // HAProxy listening on `port`, configured in `file`
    let start_haproxy = |port: u16, file: &str| -> anyhow::Result<KillOnDrop> {
        let cfg = dir.join(file);
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 4096\n  nbthread {threads}\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  timeout server 1h\n\
                 listen mariadb\n  bind 127.0.0.1:{port}\n  option httpchk GET /health\n  \
                 server {name} {addr}:{sql} check port {api} inter {interval_ms}ms\n",
                name = writer.name,
                addr = node.host,
                sql = node.sql_port,
                api = node.api_port,
                threads = args.proxy_threads,
            ),
        )?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting haproxy (install it with scripts/install-deps.sh)")?;
        Ok(KillOnDrop(child))
    };
    let haproxy = start_haproxy(haproxy_port, "haproxy.cfg")?;
    // the control: a second HAProxy, configured the same
    let control_port = base + 4;
    let control = if args.control {
        Some(start_haproxy(control_port, "haproxy-control.cfg")?)
    } else {
        None
    };
    let pen = KillOnDrop(
        Command::new("pen")
            .args(["-f", "-r", "-x", "2048"])
            .arg(format!("127.0.0.1:{pen_port}"))
            .arg(format!("{}:{}", node.host, node.sql_port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pen (install it with scripts/install-deps.sh)")?,
    );
    wait_port(haproxy_port)?;
    if control.is_some() {
        wait_port(control_port)?;
    }
    wait_port(pen_port)?;
    wait_port(vigil_port)?;

    // Health checks and store watches cost CPU while idle; measure each proxy's idle rate and
    // subtract it, so that the figure is the cost of carrying queries.
    let mut proxies = vec![
        ("vigil", vigil_port, vigil_proxy.0.id()),
        ("haproxy", haproxy_port, haproxy.0.id()),
        ("pen", pen_port, pen.0.id()),
    ];
    if let Some(c) = &control {
        proxies.push(("haproxy-control", control_port, c.0.id()));
    }
    let idle_from: Vec<f64> = proxies.iter().map(|(_, _, pid)| cpu_seconds(*pid)).collect();
    std::thread::sleep(IDLE_WINDOW);
    let mut targets = vec![Target {
        name: "direct",
        port: node.sql_port,
        proxy: None,
    }];
    for ((name, port, pid), from) in proxies.into_iter().zip(idle_from) {
        let idle = (cpu_seconds(pid) - from) / IDLE_WINDOW.as_secs_f64();
        targets.push(Target {
            name,
            port,
            proxy: Some((pid, idle)),
        });
    }
    println!(
        "vigil bench proxy: sysbench through each proxy to the same MariaDB node ({} s per run, median of {} interleaved rounds, {} proxy thread(s))",
        args.time, args.rounds, args.proxy_threads
    );
    let mut verdicts = Vec::new();
    println!(
        "| workload | threads | target | QPS | vs direct | p95 ms | p99 ms | proxy CPU µs/query | proxy run-queue wait µs/query | proxy times on a CPU/query |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for workload in &args.workloads {
        for &threads in &args.threads {
            // the runs of each target, rounds interleaved
            let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
            for round in 0..args.rounds.max(1) {
                // each round starts with the next target, so that no target always runs
                // right after the same one
                let order = (0..targets.len()).map(|k| (k + round) % targets.len());
                for i in order {
                    let Target { port, proxy, .. } = &targets[i];
                    let cpu_before = proxy.map(|(pid, _)| cpu_seconds(pid));
                    let sched_before = proxy.map(|(pid, _)| sched(pid));
                    let started = std::time::Instant::now();
                    let out = sysbench(workload, *port, threads, args.time, "run").map_err(|e| {
                        let log = std::fs::read_to_string(dir.join("vigil-proxy.log")).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(20).collect();
                        let up = cluster.log();
                        let up_tail: Vec<&str> = up.lines().rev().take(40).collect();
                        e.context(format!(
                            "(vigil proxy's last log lines, newest first: {}) (the cluster's `vigil up` log, newest first: {})",
                            tail.join(" | "),
                            up_tail.join(" | ")
                        ))
                    })?;
                    let elapsed = started.elapsed().as_secs_f64();
                    let r = parse_sysbench(&out)
                        .with_context(|| format!("cannot read sysbench's output:\n{out}"))?;
                    let cpu = proxy.zip(cpu_before).map(|((pid, idle), before)| {
                        let used = cpu_seconds(pid) - before - idle * elapsed;
                        used.max(0.0) / r.queries * 1e6
                    });
                    let sched = proxy.zip(sched_before).map(|((pid, _), (wait, slices))| {
                        let (w, s) = sched(pid);
                        ((w - wait) / r.queries * 1e6, (s - slices) / r.queries)
                    });
                    runs[i].push(Run {
                        qps: r.qps,
                        p95: r.p95_ms,
                        p99: r.p99_ms,
                        cpu,
                        sched,
                    });
                }
            }
            let mut direct_qps = f64::NAN;
            for (Target { name, .. }, r) in targets.iter().zip(&runs) {
                // the median of one column over the rounds; none where it is not measured
                let median = |column: &dyn Fn(&Run) -> Option<f64>| {
                    let v: Vec<f64> = r.iter().filter_map(column).collect();
                    (!v.is_empty()).then(|| Spread::of(v).median)
                };
                let shown = |m: Option<f64>, places: usize| m.map_or("-".into(), |v| format!("{v:.places$}"));
                let qps = median(&|x| Some(x.qps)).unwrap_or(f64::NAN);
                if *name == "direct" {
                    direct_qps = qps;
                }
                println!(
                    "| {workload} | {threads} | {name} | {qps:.0} | {:.2} | {} | {} | {} | {} | {} |",
                    qps / direct_qps,
                    shown(median(&|x| Some(x.p95)), 2),
                    shown(median(&|x| Some(x.p99)), 2),
                    shown(median(&|x| x.cpu), 1),
                    shown(median(&|x| x.sched.map(|s| s.0)), 1),
                    shown(median(&|x| x.sched.map(|s| s.1)), 3),
                );
            }
            let of = |n: &str| targets.iter().position(|t| t.name == n).map(|i| &runs[i]);
            for proxy in ["vigil", "haproxy-control"] {
                if let (Some(v), Some(h)) = (of(proxy), of("haproxy")) {
                    verdicts.push(Verdict::of(workload, threads, proxy, v, h));
                }
            }
        }
    }
    println!();
    println!(
        "vigil proxy against HAProxy, the median over the rounds of each round's ratio (range in brackets); target: QPS at least HAProxy's, CPU per query and p99 no higher:"
    );
    println!("| workload | threads | proxy | QPS ÷ haproxy | CPU/query ÷ haproxy | p99 ÷ haproxy | met |");
    println!("|---|---|---|---|---|---|---|");
    for v in &verdicts {
        println!("{v}");
    }
    drop(haproxy);
    drop(control);
    drop(pen);
    drop(vigil_proxy);
    cluster.stop();
    drop(etcd);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_sysbench_output() {
        let out = "Latency histogram (values are in milliseconds)\n       value  ------------- distribution ------------- count\n         0.100 |**                                       10\n         0.200 |****************                         80\n         0.300 |**                                       9\n         1.000 |*                                        1\n \nSQL statistics:\n    queries performed:\n        read:                            100\n    queries:                             100    (10.00 per sec.)\n";
        let r = super::parse_sysbench(out).unwrap();
        assert_eq!((r.queries, r.qps), (100.0, 10.0));
        assert_eq!((r.p95_ms, r.p99_ms), (0.3, 0.3));
        assert!(super::parse_sysbench("garbage").is_none());
    }

    #[test]
    fn the_target_needs_every_figure_at_least_as_good_as_haproxys() {
        let run = |qps, p99, cpu| super::Run {
            qps,
            p95: 0.0,
            p99,
            cpu: Some(cpu),
            sched: None,
        };
        let haproxy = run(1000.0, 2.0, 10.0);
        let met =
            |v: super::Run| super::Verdict::of("w", 1, "vigil", &[v], std::slice::from_ref(&haproxy)).met();
        assert!(met(run(1000.0, 2.0, 10.0)));
        assert!(met(run(1100.0, 1.5, 9.0)));
        assert!(!met(run(990.0, 1.5, 9.0)), "fewer queries per second");
        assert!(!met(run(1100.0, 2.1, 9.0)), "a higher p99");
        assert!(!met(run(1100.0, 1.5, 10.5)), "more CPU per query");
        let unmeasured = super::Run {
            cpu: None,
            ..run(1100.0, 1.5, 9.0)
        };
        assert!(!met(unmeasured), "CPU not measured");
    }

    #[test]
    fn each_round_is_compared_with_the_same_round() {
        let run = |qps| super::Run {
            qps,
            p95: 0.0,
            p99: 1.0,
            cpu: Some(1.0),
            sched: None,
        };
        // The machine slowed down in the second round: vigil was ahead in every round but
        // one, and the median of the ratios says so (the ratio of the medians, 900/950, would
        // not).
        let vigil = [run(1100.0), run(500.0), run(900.0)];
        let haproxy = [run(1000.0), run(950.0), run(880.0)];
        let v = super::Verdict::of("w", 1, "vigil", &vigil, &haproxy);
        assert!((v.qps.median - 900.0 / 880.0).abs() < 1e-9);
        assert!((v.qps.min - 500.0 / 950.0).abs() < 1e-9);
        assert!((v.qps.max - 1.1).abs() < 1e-9);
        assert!(v.met());
    }
}
