//! A DNS server for tests that answers SRV queries for one name, as a Kubernetes headless
//! service does for its pods: one record per pod, target the pod's name, port the SQL port.
//! It speaks plain DNS over UDP (RFC 1035), enough for a stub resolver's SRV lookup; any
//! other question gets an empty answer. The records can be changed while it serves.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;

#[derive(Default)]
struct Shared {
    records: Mutex<Vec<(String, u16)>>,
    stop: AtomicBool,
    srv_queries: AtomicUsize,
}

/// A running server; stopped (and its thread joined) when dropped.
pub struct SrvServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SrvServer {
    /// Serves SRV records for `name` on `socket` (already bound, e.g. inside a test host's
    /// namespace) on a thread of its own.
    pub fn serve(socket: UdpSocket, name: &str, records: &[(&str, u16)]) -> SrvServer {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        *shared.records.lock().expect("records") = records.iter().map(|(h, p)| (fqdn(h), *p)).collect();
        let wanted = fqdn(name);
        let thread = {
            let (shared, wanted) = (shared.clone(), wanted.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !shared.stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let records = shared.records.lock().expect("records").clone();
                    if let Some((reply, was_srv)) = answer(&buf[..n], &wanted, &records) {
                        if was_srv {
                            shared.srv_queries.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })
        };
        SrvServer {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Replaces the records: `(target host, port)` each.
    pub fn set_records(&self, records: &[(&str, u16)]) {
        *self.shared.records.lock().expect("records") = records.iter().map(|(h, p)| (fqdn(h), *p)).collect();
    }

    /// How many SRV questions for the name were answered so far.
    pub fn srv_queries(&self) -> usize {
        self.shared.srv_queries.load(Ordering::Relaxed)
    }
}

impl Drop for SrvServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fqdn(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    }
}

/// The reply to one query, and whether it was the SRV question for `wanted`; None for a
/// message that is not a well-formed query.
fn answer(query: &[u8], wanted: &str, records: &[(String, u16)]) -> Option<(Vec<u8>, bool)> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut pos = 12;
    let mut name = String::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        name.push_str(&String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        name.push('.');
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    query.get(..question_end)?;
    let hit = name == wanted && qtype == TYPE_SRV;

    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[..2]); // id
                                          // QR, the query's opcode and RD; AA; NOERROR
    reply.push(0x80 | (query[2] & 0x79) | 0x04);
    reply.push(0x00);
    let answers = if hit { records.len() as u16 } else { 0 };
    for count in [1, answers, 0, 0] {
        reply.extend_from_slice(&u16::to_be_bytes(count));
    }
    reply.extend_from_slice(&query[12..question_end]);
    if hit {
        for (target, port) in records {
            reply.extend_from_slice(&[0xc0, 12]); // the question's name
            reply.extend_from_slice(&TYPE_SRV.to_be_bytes());
            reply.extend_from_slice(&CLASS_IN.to_be_bytes());
            reply.extend_from_slice(&5u32.to_be_bytes()); // TTL
            let mut rdata = Vec::new();
            rdata.extend_from_slice(&0u16.to_be_bytes()); // priority
            rdata.extend_from_slice(&10u16.to_be_bytes()); // weight
            rdata.extend_from_slice(&port.to_be_bytes());
            for label in target.trim_end_matches('.').split('.') {
                rdata.push(label.len() as u8);
                rdata.extend_from_slice(label.as_bytes());
            }
            rdata.push(0);
            reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            reply.extend_from_slice(&rdata);
        }
    }
    Some((reply, hit))
}
