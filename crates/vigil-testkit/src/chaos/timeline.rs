//! What vigil knew during a run: the proxy's routes and each agent's status, polled every
//! 100 ms from the client host, each by a thread of its own (a paused agent must not stall the
//! others' samples). Only changes are kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::history::{AgentSeen, ProxySeen, Sample};
use crate::hosts::{HostCluster, CLIENT, PROXY_STATUS_PORT};

pub struct Timeline {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<(String, std::thread::JoinHandle<()>)>,
}

const EVERY: Duration = Duration::from_millis(100);

fn get(agent: &ureq::Agent, url: &str) -> Option<String> {
    agent.get(url).call().ok()?.into_string().ok()
}

impl Timeline {
    pub fn start(cluster: &HostCluster, t0: Instant) -> Timeline {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let proxy = format!(
            "http://{}:{PROXY_STATUS_PORT}/status",
            cluster.net.host(CLIENT).addr
        );
        let mut targets: Vec<(String, String)> = vec![("proxy".into(), proxy)];
        for h in &cluster.db_hosts {
            let n = cluster.config.node(h).expect("node");
            targets.push((h.clone(), format!("http://{}:{}/status", n.host, n.api_port)));
        }
        for (name, url) in targets {
            let (stop, samples) = (stop.clone(), samples.clone());
            let is_proxy = name == "proxy";
            let node = name.clone();
            let t = cluster.net.spawn_in(CLIENT, move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_millis(500))
                    .build();
                let mut last: Option<Sample> = None;
                while !stop.load(Ordering::Relaxed) {
                    let body = get(&agent, &url);
                    let at = t0.elapsed();
                    let sample = if is_proxy {
                        Sample::Proxy {
                            at,
                            seen: body.and_then(|b| serde_json::from_str::<ProxySeen>(&b).ok()),
                        }
                    } else {
                        Sample::Agent {
                            at,
                            node: node.clone(),
                            seen: body
                                .and_then(|b| serde_json::from_str::<vigil_agent::NodeStatus>(&b).ok())
                                .map(|s| AgentSeen {
                                    role: s.role,
                                    healthy: s.healthy,
                                    state: s.state,
                                    reason: s.reason,
                                    cluster_size: s.cluster_size,
                                    view: s.view,
                                }),
                        }
                    };
                    if !same(last.as_ref(), &sample) {
                        samples.lock().expect("samples").push(sample.clone());
                        last = Some(sample);
                    }
                    std::thread::sleep(EVERY);
                }
            });
            threads.push((format!("{name} status sampler"), t));
        }
        Timeline {
            stop,
            samples,
            threads,
        }
    }

    /// Stops sampling; the samples in time order, and the samplers that panicked.
    pub fn stop(self) -> (Vec<Sample>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut panicked = Vec::new();
        for (name, t) in self.threads {
            if t.join().is_err() {
                panicked.push(name);
            }
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().expect("samples"));
        samples.sort_by_key(Sample::at);
        (samples, panicked)
    }
}

/// The same observation as before, whenever it was made.
fn same(last: Option<&Sample>, new: &Sample) -> bool {
    match (last, new) {
        (Some(Sample::Proxy { seen: a, .. }), Sample::Proxy { seen: b, .. }) => a == b,
        (Some(Sample::Agent { seen: a, .. }), Sample::Agent { seen: b, .. }) => a == b,
        _ => false,
    }
}
