//! Galera decisions: is a node healthy, how should a stopped node start, which node writes,
//! in which order does a cluster stop.
//!
//! ```text
//!   member reports (store) ─┐
//!   local disk state ───────┼──► decide_start ──► BootstrapNew | Bootstrap | Join | Wait(why)
//!   config node order ──────┘
//!   live wsrep status ─────────► health ────────► Healthy | Unhealthy(why)
//!   member reports ────────────► writer_fitness ► who may take the role, who may keep it
//!   fitness + writer ──────────► choose_writer ─► keep, or the first healthy node in order
//!   member reports ────────────► evictions ─────► gcomm UUIDs of members known dead
//! ```
//!
//! Nothing here reads a clock, a socket or a file; every input is a value.

use serde::{Deserialize, Serialize};
use std::time::Duration;

mod restart;
mod start;

pub use restart::{
    restart_delay, restart_due, Sustained, BACKOFF_RESET, RESTART_GRACE, RESTORE_ATTEMPTS, RESTORE_GRACE,
    SILENT_GRACE, STRANDED_GRACE, URGENT_RESTART_DELAY,
};
pub use start::{
    decide_start, fence_to_put_back, restore_primary, Position, StartDecision, StartView, Transfer,
};

/// The history of a server that has none yet (`wsrep_cluster_state_uuid` before any state).
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// `wsrep_local_state` values, as the server reports them.
pub mod local_state {
    pub const JOINING: u8 = 1;
    pub const DONOR_DESYNCED: u8 = 2;
    pub const JOINED: u8 = 3;
    pub const SYNCED: u8 = 4;
}

/// What a probe of a running node's `wsrep_*` status and variables found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WsrepStatus {
    pub local_state: u8,
    /// `wsrep_local_state_comment`: Synced, Donor/Desynced, Joining, Joined, Initialized...
    pub local_state_comment: String,
    /// `wsrep_cluster_status`: Primary, non-Primary or Disconnected.
    pub cluster_status: String,
    pub cluster_size: u32,
    pub last_committed: i64,
    pub cluster_state_uuid: String,
    pub ready: bool,
    pub connected: bool,
    pub read_only: bool,
    /// `wsrep_incoming_addresses`: the client address of every member of this node's view.
    #[serde(default)]
    pub incoming_addresses: Vec<String>,
    /// `wsrep_gcomm_uuid`: this server instance's member id in the group (new at each start).
    #[serde(default)]
    pub gcomm_uuid: String,
    /// `wsrep_cluster_conf_id`: the number of this node's current view; every membership
    /// change raises it.
    #[serde(default)]
    pub conf_id: u64,
    /// `wsrep_evs_evict_list`: the members this node's group communication holds evicted
    /// (it evicted them, or learned of it from another member).
    #[serde(default)]
    pub evict_list: Vec<String>,
}

impl WsrepStatus {
    pub fn is_primary(&self) -> bool {
        self.cluster_status == "Primary"
    }

    pub fn is_synced(&self) -> bool {
        self.local_state == local_state::SYNCED
    }
}

/// The Galera state a stopped node left on disk (`grastate.dat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub uuid: String,
    /// -1 when the node did not stop cleanly (the position must then be recovered).
    pub seqno: i64,
    pub safe_to_bootstrap: bool,
}

/// What a node's data directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiskState {
    /// No datadir, or an empty one: the node has never held data.
    Empty,
    /// A datadir exists. `saved` is its position: `grastate.dat`, or what `--wsrep-recover`
    /// found when that says `seqno: -1`; `None` while unknown. `sst_interrupted`: a state
    /// transfer into it did not finish, so its contents are not a usable position.
    Data {
        saved: Option<SavedState>,
        #[serde(default)]
        sst_interrupted: bool,
    },
}

impl DiskState {
    pub fn saved(&self) -> Option<&SavedState> {
        match self {
            DiskState::Data { saved, .. } => saved.as_ref(),
            DiskState::Empty => None,
        }
    }
}

/// What an agent is doing with its node, as published to the other agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not started yet: deciding, or waiting for another node.
    Waiting,
    /// Starting a new Primary component from this node's data.
    Bootstrapping,
    /// Started and joining the Primary component (state transfer).
    Joining,
    /// Running and in the cluster.
    Running,
    Stopping,
    Stopped,
    /// The node could not be started or exited unexpectedly.
    Failed,
}

/// One member's latest report, as read from the coordination store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub name: String,
    pub phase: Phase,
    pub disk: DiskState,
    /// The last probe of the running node; `None` while it is not running or not answering.
    pub status: Option<WsrepStatus>,
    /// The gcomm UUID of this node's last `mariadbd`, once its agent knows that process is dead
    /// (it saw it exit, or killed it): the survivors may evict it from their view at once
    /// instead of waiting for Galera's suspect timeout, during which no one commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departed: Option<String>,
    /// The last Primary component this node's running server was seen in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_primary: Option<PrimaryView>,
}

/// A Primary component as one of its members saw it: its view number
/// (`wsrep_cluster_conf_id`, raised by every membership change), its size, and the members
/// among the data nodes (by name, from `wsrep_incoming_addresses`; an arbitrator has no name
/// and counts only in the size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryView {
    pub conf_id: u64,
    pub size: u32,
    pub members: Vec<String>,
}

impl PrimaryView {
    /// The view `status` shows, if it is of a Primary component; `nodes` are the data nodes'
    /// names and client addresses.
    pub fn of(status: &WsrepStatus, nodes: &[(String, String)]) -> Option<PrimaryView> {
        status.is_primary().then(|| PrimaryView {
            conf_id: status.conf_id,
            size: status.cluster_size,
            members: nodes
                .iter()
                .filter(|(_, addr)| status.incoming_addresses.contains(addr))
                .map(|(name, _)| name.clone())
                .collect(),
        })
    }
}

impl MemberReport {
    pub(crate) fn in_primary(&self) -> bool {
        self.status.as_ref().is_some_and(WsrepStatus::is_primary)
    }

    pub(crate) fn synced_in_primary(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.is_primary() && s.is_synced())
    }
}

/// Whether a running node may receive client traffic, with clustercheck's meaning: Synced, in a
/// Primary component, ready for queries. The reason says what is missing.
pub fn health(status: &WsrepStatus) -> Result<(), String> {
    if !status.connected {
        return Err("not connected to a cluster".into());
    }
    if !status.is_primary() {
        return Err(format!(
            "not in a Primary component (cluster status {})",
            status.cluster_status
        ));
    }
    if !status.is_synced() {
        return Err(format!(
            "{} (wsrep_local_state {}), not Synced",
            status.local_state_comment, status.local_state
        ));
    }
    if !status.ready {
        return Err("wsrep_ready is OFF: not accepting queries".into());
    }
    Ok(())
}

/// A member that takes writes though it is not Synced: Donor/Desynced, or Joined on its way
/// back to Synced, in a Primary component, ready.
fn desynced_writer(status: &WsrepStatus) -> bool {
    matches!(
        status.local_state,
        local_state::DONOR_DESYNCED | local_state::JOINED
    ) && status.connected
        && status.is_primary()
        && status.ready
}

/// Whether the current writer may keep its role: clustercheck health, or, while a member is
/// joining (`transfer_under_way`), donating to it (IST or mariabackup SST) in a Primary
/// component and ready. A donor still takes writes; moving the role away would close every
/// write connection for nothing. A writer desynced with no joiner around (by hand, for a
/// backup say) gives the role up.
pub fn keeps_writing(status: &WsrepStatus, transfer_under_way: bool) -> Result<(), String> {
    let why = match health(status) {
        Ok(()) => return Ok(()),
        Err(why) => why,
    };
    let donating = transfer_under_way && status.local_state == local_state::DONOR_DESYNCED;
    if donating && status.connected && status.is_primary() && status.ready {
        Ok(())
    } else {
        Err(why)
    }
}

/// Whether a node that is bootstrapping or joining (`phase`) has finished: its server is Synced
/// in a Primary component, or, having started or restored the component itself, donates to a
/// member that joined it at once. Seen in `vigil chaos`: a node made its component Primary
/// (`pc.bootstrap`), the other members' servers merged into it at once, one needed a snapshot
/// from it, and the node stayed Bootstrapping (no writer) for the minute the snapshot took.
pub fn start_finished(phase: Phase, status: &WsrepStatus) -> bool {
    let donating = phase == Phase::Bootstrapping
        && status.local_state == local_state::DONOR_DESYNCED
        && status.connected
        && status.ready;
    status.is_primary() && (status.is_synced() || donating)
}

/// Who may be the writer, by name: `healthy` may take the role, `fit` may keep it (see
/// [`writer_fitness`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fitness {
    pub healthy: Vec<String>,
    pub fit: Vec<String>,
    /// Members whose report says their server is outside a Primary component while a healthy
    /// member's Primary view holds them: a report from just before a merge, or a member Galera
    /// is about to drop. Likewise members whose report is unfit and from an older view than a
    /// healthy member's view that holds them (a donor whose transfer has just ended, say). Not
    /// fit (no traffic), but a writer among them keeps the role until its own report or the
    /// other member's view shows where it stands ([`choose_writer`]).
    pub merging: Vec<String>,
    /// Members that are not fit only because they are desynced (Donor/Desynced, or Joined on
    /// the way back to Synced) with nobody joining, in a Primary component and ready: they still take writes. A writer among
    /// them keeps the role for [`DESYNC_GRACE`] ([`choose_writer`]).
    pub desynced: Vec<String>,
}

/// How long a writer keeps its role while desynced with nobody joining ([`Fitness::desynced`]).
/// A donor's report from just before its transfer ended reads so, and a member that has just
/// finished its join may read it before the donor's next report: `vigil chaos` saw the role
/// move then, closing every write connection, with read-your-writes violations as the writes
/// moved. A writer desynced by hand gives the role up after this grace.
pub const DESYNC_GRACE: Duration = Duration::from_secs(3);

/// [`DESYNC_GRACE`], or longer when the agents probe so seldom that two of a member's reports
/// are further apart.
pub fn desync_grace(probe_interval: Duration) -> Duration {
    DESYNC_GRACE.max(probe_interval * 2 + Duration::from_secs(1))
}

/// From the members' reports (`nodes`: name and client address `host:sql_port`, in
/// configuration order): the healthy members, and those fit to keep the writer role: healthy
/// ones, donors in a Primary component ([`keeps_writing`]), and members without a report
/// (their agent is paused, restarting or cut off from the store) whose address a healthy
/// member's Primary component still holds. Galera drops a member that is really gone from
/// its view within its suspect timeout; until then nobody can commit without it anyway. For the
/// same reason a member whose report says its server is outside a Primary component that a
/// healthy member's view shows it in is `merging`: `vigil chaos` saw a member finish its join,
/// read the writer's report from a moment earlier (during packet loss, non-Primary) and take
/// the role from it, with read-your-writes violations as the writes moved.
/// Conversely, a member that another healthy member's Primary component has dropped is neither
/// healthy nor fit, whatever its own (perhaps stale) report says: there is one Primary
/// component, and it is not in it. (A member's view is taken into account only when it lists
/// the member itself, as every real view does.) And a member whose report is unfit but from an
/// older view than a healthy member's view that holds it is `merging` too: `vigil chaos` saw a
/// joiner finish its snapshot, read its donor's report from a moment earlier (Donor/Desynced,
/// with the join no longer under way) and take the writer role from it, closing every write
/// connection, with read-your-writes violations as the writes moved.
pub fn writer_fitness(nodes: &[(String, String)], reports: &[MemberReport]) -> Fitness {
    let running = |r: &&MemberReport| r.phase == Phase::Running;
    let healthy_reports: Vec<&MemberReport> = reports
        .iter()
        .filter(running)
        .filter(|r| r.status.as_ref().is_some_and(|s| health(s).is_ok()))
        .collect();
    let transfer = reports.iter().any(|r| r.phase == Phase::Joining);
    let view_of = |r: &MemberReport| -> Option<Vec<String>> {
        let own = &nodes.iter().find(|(n, _)| *n == r.name)?.1;
        let s = r.status.as_ref()?;
        // A list longer than the view is stale (see decide_join) and says nothing.
        let current = s.incoming_addresses.len() <= s.cluster_size as usize;
        (current && s.incoming_addresses.iter().any(|a| a == own)).then(|| s.incoming_addresses.clone())
    };
    let dropped = |name: &str, addr: &str| {
        healthy_reports
            .iter()
            .filter(|r| r.name != name)
            .filter_map(|r| view_of(r))
            .any(|view| !view.iter().any(|a| a == addr))
    };
    let held = |name: &str, addr: &str| {
        healthy_reports
            .iter()
            .filter(|r| r.name != name)
            .filter_map(|r| view_of(r))
            .any(|view| view.iter().any(|a| a == addr))
    };
    // Held in a healthy member's view newer than `conf_id`, the view of a member's report.
    // (Views are numbered within one history; 0 is a number not known.)
    let held_since = |name: &str, addr: &str, own: &WsrepStatus| {
        healthy_reports
            .iter()
            .filter(|r| {
                r.name != name
                    && r.status.as_ref().is_some_and(|s| {
                        own.conf_id > 0
                            && s.conf_id > own.conf_id
                            && s.cluster_state_uuid == own.cluster_state_uuid
                    })
            })
            .filter_map(|r| view_of(r))
            .any(|view| view.iter().any(|a| a == addr))
    };
    let mut out = Fitness::default();
    for (name, addr) in nodes {
        match reports.iter().find(|r| &r.name == name) {
            Some(r) => {
                let status = r.status.as_ref().filter(|_| running(&r) && !dropped(name, addr));
                if status.is_some_and(|s| health(s).is_ok()) {
                    out.healthy.push(name.clone());
                }
                if status.is_some_and(|s| keeps_writing(s, transfer).is_ok()) {
                    out.fit.push(name.clone());
                    continue;
                }
                if status.is_some_and(desynced_writer) {
                    out.desynced.push(name.clone());
                }
                if status.is_some_and(|s| {
                    s.connected
                        && if s.is_primary() {
                            held_since(name, addr, s)
                        } else {
                            held(name, addr)
                        }
                }) {
                    out.merging.push(name.clone());
                }
            }
            None => {
                if held(name, addr) {
                    out.fit.push(name.clone());
                }
            }
        }
    }
    out
}

/// The single writer: the current one while it is fit to keep the role or merging, or desynced
/// and not yet for [`DESYNC_GRACE`] (`desync_expired`), else the first healthy node in
/// configuration order, else, with no node healthy, the first fit one (a donor to a joining
/// member, which still takes writes: a node that restored the Primary component and donates a
/// snapshot to a member that merged into it at once would otherwise leave the cluster without
/// a writer for as long as the snapshot takes), else a desynced current writer.
pub fn choose_writer(
    current: Option<&str>,
    fitness: &Fitness,
    order: &[String],
    desync_expired: bool,
) -> Option<String> {
    let desynced = |c: &&str| fitness.desynced.iter().any(|f| f == c);
    let keeps = |c: &&str| {
        fitness.fit.iter().chain(&fitness.merging).any(|f| f == c) || (desynced(c) && !desync_expired)
    };
    if let Some(current) = current.filter(keeps) {
        return Some(current.to_string());
    }
    let first = |names: &[String]| order.iter().find(|n| names.contains(n)).cloned();
    first(&fitness.healthy)
        .or_else(|| first(&fitness.fit))
        .or_else(|| current.filter(desynced).map(str::to_string))
}

/// The members to evict from this node's view now: those whose agent reports their
/// `mariadbd` dead ([`MemberReport::departed`]) and that this node has not evicted yet
/// (`done`). Only a node in a Primary component evicts; the UUID must look like one (it is
/// put into a provider option). Never with an arbitrator among the members: `garbd` learns
/// of an eviction but has no way to forget it again ([`clear_evictions`]).
pub fn evictions(
    me: &WsrepStatus,
    others: &[MemberReport],
    done: &[String],
    arbitrator: bool,
) -> Vec<String> {
    if !me.is_primary() || arbitrator {
        return Vec::new();
    }
    others
        .iter()
        .filter_map(|r| r.departed.as_ref())
        .filter(|u| is_uuid(u) && **u != me.gcomm_uuid && !done.contains(u))
        .cloned()
        .collect()
}

/// Whether this node's eviction list is to be emptied now (`evs.evict=`): it lists members, and
/// this node has installed a later view than the one it was in when it first saw them listed
/// (`listed_in`), so the evictions have taken effect. Galera keeps evicted members in the node
/// lists of later membership rounds, and a member that has already forgotten one aborts its
/// group communication on such a round ("not found from known map", seen in `vigil chaos`).
/// A restarted server joins under a new id, so nothing is lost by forgetting.
pub fn clear_evictions(me: &WsrepStatus, listed_in: Option<u64>) -> bool {
    me.is_primary() && !me.evict_list.is_empty() && listed_in.is_some_and(|v| me.conf_id > v)
}

/// Why a running node's server must be restarted, if it must: its group communication has
/// stopped for good (`wsrep_connected` OFF: Galera closes its backend after a fatal error, and
/// such a server never reconnects by itself). A node cut off from the others stays connected
/// (it keeps trying) and is not restarted.
pub fn lost_backend(status: &WsrepStatus) -> Option<String> {
    (!status.connected).then(|| {
        "its Galera group communication stopped (wsrep_connected OFF; see the error log)".to_string()
    })
}

/// Why a joining node must give up its join, if it must: its server is outside any Primary
/// component, and every other data member's report says it runs no server (waiting, failed,
/// stopped), so the join can never finish. Seen in `vigil chaos`: the donor's host crashed
/// during a state transfer, the joiner's server stayed up alone in a non-Primary component,
/// and the other agents waited for it to start the cluster on the position its server showed,
/// while it waited for its start timeout (ten minutes). Given up, its server is killed and its
/// datadir read like any other member's: a finished transfer counts with its position, an
/// interrupted one not at all, and the election after an outage goes on.
///
/// Only on that knowledge: a member without a report may be serving a Primary component out of
/// this agent's sight, and a member whose server runs may merge with this one again when a
/// partition heals (Galera restores the last Primary component by itself), which a killed
/// joiner would prevent. The agent acts only once this has held for [`RESTART_GRACE`]
/// ([`Sustained`]).
pub fn orphaned_join(
    me: &str,
    status: Option<&WsrepStatus>,
    order: &[String],
    others: &[MemberReport],
) -> Option<String> {
    let serverless = |name: &String| {
        others
            .iter()
            .any(|m| m.name == *name && matches!(m.phase, Phase::Waiting | Phase::Failed | Phase::Stopped))
    };
    let alone = order.iter().filter(|n| *n != me).all(serverless);
    // Without a probe result (a snapshot arriving), the join is as hopeless: no member runs a
    // server to send the rest.
    (!status.is_some_and(WsrepStatus::is_primary) && alone).then(|| {
        let this = status.map_or("not answering (a state transfer under way)".to_string(), |s| {
            format!("{}, cluster status {}", s.local_state_comment, s.cluster_status)
        });
        format!(
            "no other member runs a server, so there is no Primary component to join (this server: {this})"
        )
    })
}

/// The Galera member ids of the other servers in this node's Primary component, as their
/// reports show them: the `known` of [`stranded`], taken while this node's server (`status`)
/// is in a Primary component.
pub fn primary_peers(status: &WsrepStatus, others: &[MemberReport]) -> Vec<String> {
    others
        .iter()
        .filter_map(|m| m.status.as_ref())
        .filter(|s| s.is_primary() && s.cluster_state_uuid == status.cluster_state_uuid)
        .map(|s| s.gcomm_uuid.clone())
        .filter(|u| !u.is_empty())
        .collect()
}

/// How long a server Galera restored as a donor ([`restored_donor`]) may stay Donor/Desynced
/// before its agent restarts it ([`stuck_donor`]).
pub const STUCK_DONOR_GRACE: Duration = Duration::from_secs(10);

/// Whether a line of a server's error log says Galera restored it as a donor when its
/// component became Primary again (`Restored state OPEN -> DONOR/DESYNCED (519763)`): it was
/// donating when the component lost quorum, the transfer failed meanwhile, and the restored
/// state has nothing left to end it (Percona fixed this in its fork as PXC-823; galera-4 26.4
/// still has it).
pub fn restored_donor(line: &str) -> bool {
    line.split_once("WSREP: Restored state ")
        .is_some_and(|(_, rest)| rest.contains("-> DONOR/DESYNCED"))
}

/// Whether a line of a server's error log says Galera selected `node` as the donor of a state
/// transfer (`Member 0.0 (db2) requested state transfer from 'db3,'. Selected 1.0 (db3)(SYNCED)
/// as donor.`): a [`restored_donor`] line counts only after one, since Galera restores a
/// desync by an operator or a backup as DONOR too.
pub fn selected_as_donor(line: &str, node: &str) -> bool {
    line.split_once(" requested state transfer from ")
        .and_then(|(_, rest)| rest.split_once(". Selected "))
        .is_some_and(|(_, selected)| {
            selected.contains(&format!(" ({node})(")) && selected.ends_with(" as donor.")
        })
}

/// A server's donor history, for [`stuck_donor`]: Galera selected it as a donor
/// ([`selected_as_donor`]) since it was last Synced in a Primary component, and then restored
/// it as one ([`restored_donor`]) without its leaving that state since. Fed the server's probes
/// and its error log's lines; a new server instance starts from the default.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DonorRestore {
    selected: bool,
    restored: bool,
}

impl DonorRestore {
    /// A probe of the server. Give it before the log lines read after it, which may be newer.
    pub fn probed(&mut self, status: &WsrepStatus) {
        if !status.is_primary() {
            return;
        }
        if status.is_synced() {
            self.selected = false;
        }
        if status.local_state != local_state::DONOR_DESYNCED {
            self.restored = false;
        }
    }

    /// A line of the server's (`node`'s) error log.
    pub fn logged(&mut self, line: &str, node: &str) {
        if selected_as_donor(line, node) {
            self.selected = true;
        } else if restored_donor(line) {
            self.restored = self.selected;
        }
    }

    /// Galera restored the server as a donor after selecting it as one, and it is still so.
    pub fn restored(&self) -> bool {
        self.restored
    }
}

/// Why a running server must be restarted because it is stuck as a donor: Galera restored it
/// as one after selecting it as a donor (`restored`: [`selected_as_donor`], then
/// [`restored_donor`], since the server was last Synced in a Primary component), it is still
/// Donor/Desynced in a Primary component, and no other member's report shows a server Synced
/// in a Primary component. Such a server serves no transfer: Galera takes it for a donor
/// already, and a member that merges into its component asks for a snapshot in vain ("No donor
/// candidates temporarily available in suitable state"). Seen in `vigil chaos`, twice: a
/// member donating a snapshot was cut off, its agent made its component Primary again from its
/// data, and it stayed Donor/Desynced, alone or with a member waiting for a snapshot, so no
/// member was fit to write, for a minute until a fault restarted it. Restarted, it starts the
/// cluster again from its data like any other member, Synced.
///
/// Not while another member is Synced in a Primary component: the cluster has a writer then,
/// and killing a member of a two-member component would take its partner's quorum with it. A
/// server desynced by an operator (`wsrep_desync`, a backup's `BACKUP STAGE` or `FLUSH TABLES
/// WITH READ LOCK`) and never selected as a donor is left alone.
pub fn stuck_donor(status: &WsrepStatus, restored: bool, others: &[MemberReport]) -> Option<String> {
    let stuck = restored
        && status.local_state == local_state::DONOR_DESYNCED
        && status.connected
        && status.is_primary()
        && !others.iter().any(MemberReport::synced_in_primary);
    stuck.then(|| {
        format!(
            "Galera restored its server as a donor when its component became Primary again, and it \
             stayed Donor/Desynced for {} s with no member Synced",
            STUCK_DONOR_GRACE.as_secs()
        )
    })
}

/// A reason to restart this node's server, and how long it must hold first ([`Sustained`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub why: String,
    pub after: Duration,
}

/// Why a running or joining node's server must be restarted, if it must: it is outside any
/// Primary component (and its group communication still runs: [`lost_backend`] otherwise),
/// while another member's agent reports its own server Running and Synced in one that was
/// formed without this server: a component of another history (another
/// `wsrep_cluster_state_uuid`), which can never take this server in, or one whose serving
/// servers are all instances this server was never in a Primary component with (`known`: the
/// Galera member ids, `wsrep_gcomm_uuid`, of the other servers of its last Primary component).
/// Seen in `vigil chaos`: a joiner's donor crashed after the incremental transfer, the joiner
/// stayed non-Primary on its own, the donor's node restarted the cluster, and Galera never
/// merged the two (the bootstrapped server had dropped the joiner's address, the joiner had
/// dropped the donor's); the other members waited for the joiner for as long as the run
/// lasted. A server cut off from the very servers it was Primary with is not restarted: Galera
/// merges the two by itself once the partition heals, and a restart would only hold the join
/// slot.
///
/// Restarted, the server joins the Primary component like any other; its data are read first
/// like any other member's, so nothing it holds is lost to an election. Of another history the
/// restart follows after [`RESTART_GRACE`]; of the same history, where a merge is still
/// possible, after [`STRANDED_GRACE`]. A server of no known history (nil or empty) counts as
/// of the same.
pub fn stranded(status: &WsrepStatus, others: &[MemberReport], known: &[String]) -> Option<Restart> {
    if !status.connected || status.is_primary() {
        return None;
    }
    let mine = status.cluster_state_uuid.as_str();
    let no_history = mine.is_empty() || mine == NIL_UUID;
    let serving: Vec<(&MemberReport, &WsrepStatus)> = others
        .iter()
        .filter(|m| m.phase == Phase::Running)
        .filter_map(|m| {
            m.status
                .as_ref()
                .filter(|s| s.is_primary() && s.is_synced())
                .map(|s| (m, s))
        })
        .collect();
    if let Some((other, theirs)) = serving
        .iter()
        .find(|(_, s)| !no_history && s.cluster_state_uuid != mine)
    {
        return Some(Restart {
            why: format!(
                "{} serves a Primary component of another history ({}; this server: {}), which \
                 this server cannot merge with",
                other.name, theirs.cluster_state_uuid, mine
            ),
            after: RESTART_GRACE,
        });
    }
    let seen = |s: &WsrepStatus| known.contains(&s.gcomm_uuid);
    if serving.is_empty() || serving.iter().any(|(_, s)| seen(s)) {
        return None;
    }
    Some(Restart {
        why: format!(
            "{} serves a Primary component formed without this server, which has not merged with \
             it for {} s (cluster status {})",
            serving[0].0.name,
            STRANDED_GRACE.as_secs(),
            status.cluster_status
        ),
        after: STRANDED_GRACE,
    })
}

/// Whether a line of a server's error log says the group refused `node`'s JOIN after its state
/// transfer (`Rejecting JOIN message from 2.0 (db1): new State Transfer required.`, written by
/// every member, the joiner included).
pub fn join_refused(line: &str, node: &str) -> bool {
    line.contains("Rejecting JOIN message from")
        && line.contains(&format!(" ({node}): new State Transfer required"))
}

/// Whether a line of a server's error log says a Galera applier failed on a write-set
/// (`[ERROR] WSREP: Failed to process action WRITESET ...`, `[ERROR] WSREP: Failed to apply
/// ...`). Followed by [`applier_exited`], the server applies nothing more while it stays in the
/// group: its receive queue fills, and its flow control stops every commit of the cluster.
/// Seen in `vigil chaos`: a joiner's snapshot was followed by `Writeset deserialization
/// failed: Unsupported WS version: 0`, and the cluster took no write for 40 s, until the fault
/// schedule happened to kill that server. Its agent restarts such a server at once.
/// The thread id of the line (the number after the time), when it says so.
pub fn applier_error(line: &str) -> Option<u64> {
    let (head, _) = line
        .split_once(" [ERROR] WSREP: Failed to process action")
        .or_else(|| line.split_once(" [ERROR] WSREP: Failed to apply"))?;
    head.rsplit(' ').next()?.parse().ok()
}

/// The thread id (`thd: N`) of an applier thread that exited with a non-zero code, if a line of
/// a server's error log says so (`Applier thread exiting ret: 6 thd: 2`). A server that
/// disconnects from its group or shuts down writes it too: only for a thread that logged an
/// [`applier_error`] does it mean a failed applier.
pub fn applier_exited(line: &str) -> Option<u64> {
    let rest = line.split_once("Applier thread exiting ret: ")?.1;
    let mut words = rest.split_whitespace();
    let ret = words.next()?;
    let thread = match (words.next(), words.next()) {
        (Some("thd:"), Some(t)) => t.parse().ok()?,
        _ => return None,
    };
    (ret != "0").then_some(thread)
}

/// The donor Galera selected for `node`'s state transfer, if a line of a server's error log
/// says so (`Member 1.0 (db3) requested state transfer from 'db2,'. Selected 0.0 (db2)(SYNCED)
/// as donor.`). Galera may select another member than the one asked for.
pub fn donor_selected(line: &str, node: &str) -> Option<String> {
    let rest = line
        .split_once(&format!(" ({node}) requested state transfer from "))?
        .1;
    let selected = rest.split_once(". Selected ")?.1;
    let (_, name) = selected.split_once(" (")?;
    let (name, _) = name.split_once(")(")?;
    selected.ends_with(" as donor.").then(|| name.to_string())
}

/// The server instance a state transfer is coming from: the donor's name and its Galera member
/// id (`wsrep_gcomm_uuid`, new at each start) as its report shows it once selected. Before that
/// is known, only a report without a server proves the donor gone: a donor is selected only
/// while its agent reports it running (it publishes Joining or Bootstrapping before it starts
/// a server), and the agent acts only once such a report has lasted [`RESTART_GRACE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DonorInstance {
    pub name: String,
    /// `None` until the donor's report shows its server serving.
    pub gcomm_uuid: Option<String>,
}

/// The server instance (`wsrep_gcomm_uuid`) of the member `name` as its report shows it while it
/// serves: Running, in a Primary component. What a joiner records of its donor a moment after
/// Galera selected it ([`DonorInstance`]).
pub fn donor_instance(name: &str, others: &[MemberReport]) -> Option<String> {
    others
        .iter()
        .find(|m| m.name == name && m.phase == Phase::Running)
        .and_then(|m| m.status.as_ref().filter(|s| s.is_primary()))
        .map(|s| s.gcomm_uuid.clone())
        .filter(|u| !u.is_empty())
}

/// Why a joining node's state transfer can never finish, if it cannot: the server instance that
/// was sending it is gone (its agent reports it dead, runs no server, or runs another instance).
/// Seen in `vigil chaos`: the donor's host crashed during a snapshot transfer, and the joiner's
/// transfer script waited for the rest of the stream for as long as the run lasted (the script
/// times out only while waiting for the first byte), its agent waiting with it, the other
/// members waiting for the joiner. Restarted, the joiner asks again; what it received is an
/// interrupted transfer and counts for nothing (`sst_interrupted` in [`DiskState::Data`]). A donor
/// without a report (its agent silent) is no proof: it may still be sending. Only while the
/// server has not received its state (`status`: none while a snapshot arrives, or not yet
/// Joined); Joined or Synced, it needs no donor. The agent acts once this has held for
/// [`RESTART_GRACE`].
pub fn abandoned_transfer(
    donor: &DonorInstance,
    status: Option<&WsrepStatus>,
    others: &[MemberReport],
) -> Option<String> {
    // Once the server has its state (Joined, catching up, or Synced) the donor is not needed.
    if status.is_some_and(|s| matches!(s.local_state, local_state::JOINED | local_state::SYNCED)) {
        return None;
    }
    let report = others.iter().find(|m| m.name == donor.name)?;
    let instance = donor.gcomm_uuid.as_deref();
    let dead = instance.is_some() && report.departed.as_deref() == instance;
    let serverless = matches!(
        report.phase,
        Phase::Waiting | Phase::Failed | Phase::Stopped | Phase::Stopping
    );
    let replaced = report
        .status
        .as_ref()
        .is_some_and(|s| instance.is_some_and(|i| !s.gcomm_uuid.is_empty() && s.gcomm_uuid != i));
    let how = if replaced {
        "a new server runs there"
    } else if dead {
        "its agent saw it die"
    } else {
        "it runs no server"
    };
    (dead || serverless || replaced).then(|| {
        format!(
            "{}'s server, the donor of this node's state transfer, is gone ({how})",
            donor.name
        )
    })
}

/// Why a joining node's join must be restarted, if it must: its server is a Joiner in a Primary
/// component, the group has refused its JOIN ([`join_refused`] found in its error log since
/// it started) and its position has not moved since (`refused_at`: the position when the
/// refusal was read). Seen in `vigil chaos`: a snapshot arrived and was installed,
/// the cluster had meanwhile moved past what the donor's write-set cache still held, Galera
/// refused the JOIN ("new State Transfer required") at every view change, and the server
/// stayed a Joiner without asking for a new transfer, for the five minutes until the run gave
/// up. A new join (the server restarted, its transferred data read like any other) finishes;
/// the joiner holds nothing the cluster lacks, so restarting it loses nothing. A refusal alone,
/// never time, decides: a joiner applying one long event keeps its position still for as long
/// as that event takes. The agent acts only once this has held for [`RESTART_GRACE`].
pub fn refused_join(status: &WsrepStatus, refused_at: Option<i64>) -> Option<String> {
    let still = refused_at == Some(status.last_committed);
    (still && status.is_primary() && status.local_state == local_state::JOINING).then(|| {
        format!(
            "the group refused this node's JOIN after its state transfer (new State Transfer \
             required; seqno {})",
            status.last_committed
        )
    })
}

/// 8-4-4-4-12 hexadecimal digits.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The position to record in the store after a probe of the writer, if it raises the record:
/// a new cluster history (UUID), or a later seqno of the same one. The record never goes down.
pub fn raised_record(recorded: Option<&start::Position>, status: &WsrepStatus) -> Option<start::Position> {
    let raises = match recorded {
        Some(r) => r.uuid != status.cluster_state_uuid || status.last_committed > r.seqno,
        None => true,
    };
    (raises && status.last_committed >= 0 && !status.cluster_state_uuid.is_empty()).then(|| start::Position {
        uuid: status.cluster_state_uuid.clone(),
        seqno: status.last_committed,
    })
}

/// The order in which to stop a running cluster, one node at a time: readers last to first, the
/// writer last, so that it keeps serving and Galera marks it — exactly one node — safe to
/// bootstrap.
pub fn stop_order(order: &[String], writer: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = order
        .iter()
        .rev()
        .filter(|n| Some(n.as_str()) != writer)
        .cloned()
        .collect();
    if let Some(w) = writer.filter(|w| order.iter().any(|n| n == w)) {
        out.push(w.to_string());
    }
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn order() -> Vec<String> {
        vec!["n1".into(), "n2".into(), "n3".into()]
    }

    /// A Synced member of a 3-node Primary component of cluster "u", listing one address.
    pub fn synced(seqno: i64) -> WsrepStatus {
        WsrepStatus {
            local_state: local_state::SYNCED,
            local_state_comment: "Synced".into(),
            cluster_status: "Primary".into(),
            cluster_size: 3,
            last_committed: seqno,
            cluster_state_uuid: "u".into(),
            ready: true,
            connected: true,
            read_only: false,
            incoming_addresses: vec!["127.0.0.1:1".into()],
            gcomm_uuid: String::new(),
            conf_id: 7,
            evict_list: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{order, synced};
    use super::*;

    #[test]
    fn a_restore_counts_only_after_a_selection_and_until_the_state_is_left() {
        let selected = "WSREP: Member 0.0 (db2) requested state transfer from 'db3,'. Selected 1.0 \
                        (db3)(SYNCED) as donor.";
        let restored = "WSREP: Restored state OPEN -> DONOR/DESYNCED (519763)";
        let donor = WsrepStatus {
            local_state: local_state::DONOR_DESYNCED,
            ..synced(5)
        };
        let outside = WsrepStatus {
            cluster_status: "non-Primary".into(),
            local_state: 0,
            ..synced(5)
        };
        // desynced by hand, then restored: never selected
        let mut d = DonorRestore::default();
        d.logged(restored, "db3");
        assert!(!d.restored());
        // selected, cut off (a probe outside a Primary component changes nothing), restored
        d.logged(selected, "db3");
        d.probed(&donor);
        d.probed(&outside);
        d.logged(restored, "db3");
        assert!(d.restored());
        d.probed(&donor);
        assert!(d.restored());
        // left the donor state in a Primary component: over, and the selection with it
        d.probed(&synced(6));
        assert!(!d.restored());
        d.logged(restored, "db3");
        assert!(!d.restored());
        // another node's selection does not count
        d.logged(selected, "db2");
        d.logged(restored, "db2");
        assert!(!d.restored());
    }

    #[test]
    fn a_server_galera_restored_as_a_donor_is_restarted_unless_another_is_synced() {
        // db3's error log and status in a `vigil chaos` run
        assert!(restored_donor(
            "2026-12-07 21:28:01 0 [Note] WSREP: Restored state OPEN -> DONOR/DESYNCED (519763)"
        ));
        assert!(!restored_donor(
            "2026-12-07 21:27:36 0 [Note] WSREP: Shifting SYNCED -> DONOR/DESYNCED (TO: 508605)"
        ));
        assert!(!restored_donor("WSREP: Restored state OPEN -> SYNCED (7)"));
        let selected = "2026-12-07 21:27:36 0 [Note] WSREP: Member 0.0 (db2) requested state transfer from \
                        'db3,'. Selected 1.0 (db3)(SYNCED) as donor.";
        assert!(selected_as_donor(selected, "db3"));
        assert!(!selected_as_donor(selected, "db2"));
        assert!(!selected_as_donor(
            "WSREP: Member 0.0 (db2) requested state transfer from '*any*', but it is impossible to \
             select State Transfer donor: No donor candidates temporarily available in suitable state",
            "db1"
        ));
        let stuck = WsrepStatus {
            local_state: local_state::DONOR_DESYNCED,
            local_state_comment: "Donor/Desynced".into(),
            cluster_size: 1,
            ..synced(519763)
        };
        let waiting = [
            member("n1", Phase::Waiting, None),
            member("n2", Phase::Failed, None),
        ];
        assert!(stuck_donor(&stuck, true, &waiting).is_some_and(|why| why.contains("Donor/Desynced")));
        // desynced otherwise (by an operator, a backup, a transfer): not restored so
        assert_eq!(stuck_donor(&stuck, false, &waiting), None);
        // with a member merged in that asks it for a snapshot in vain (the second run)
        let asking = WsrepStatus {
            local_state: local_state::JOINING,
            local_state_comment: "Joining".into(),
            ..synced(0)
        };
        let merged = [
            member("n1", Phase::Running, Some(asking)),
            member("n2", Phase::Waiting, None),
        ];
        let two = WsrepStatus {
            cluster_size: 2,
            ..stuck.clone()
        };
        assert!(stuck_donor(&two, true, &merged).is_some());
        // another member Synced in a Primary component: the cluster has a writer
        let serving = [
            member("n1", Phase::Running, Some(synced(519763))),
            member("n2", Phase::Waiting, None),
        ];
        assert_eq!(stuck_donor(&two, true, &serving), None);
        // outside a Primary component it is restore_primary's business
        let outside = WsrepStatus {
            cluster_status: "non-Primary".into(),
            ..stuck.clone()
        };
        assert_eq!(stuck_donor(&outside, true, &waiting), None);
        assert_eq!(stuck_donor(&synced(5), true, &waiting), None);
    }

    fn member(name: &str, phase: Phase, status: Option<WsrepStatus>) -> MemberReport {
        MemberReport {
            name: name.into(),
            phase,
            disk: DiskState::Data {
                saved: None,
                sst_interrupted: false,
            },
            status,
            departed: None,
            last_primary: None,
        }
    }

    #[test]
    fn a_primary_view_names_the_data_nodes_in_it_and_counts_everyone() {
        let nodes: Vec<(String, String)> = [
            ("n1", "10.0.0.1:3306"),
            ("n2", "10.0.0.2:3306"),
            ("n3", "10.0.0.3:3306"),
        ]
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .into();
        let mut status = synced(5);
        status.conf_id = 12;
        // n2 and an arbitrator, which lists no client address a node has
        status.incoming_addresses = vec!["10.0.0.2:3306".into(), "AUTO".into()];
        status.cluster_size = 2;
        let view = PrimaryView::of(&status, &nodes).expect("a Primary component");
        assert_eq!(view.conf_id, 12);
        assert_eq!(view.size, 2);
        assert_eq!(view.members, ["n2"]);
        status.cluster_status = "non-Primary".into();
        assert_eq!(PrimaryView::of(&status, &nodes), None);
    }

    #[test]
    fn a_join_the_group_refused_is_restarted_and_nothing_else_is() {
        // Lines from a chaos run's error logs.
        let refused = "2026-12-07 10:24:01 0 [Warning] WSREP: Rejecting JOIN message from 2.0 (db1): \
                       new State Transfer required.";
        assert!(join_refused(refused, "db1"));
        assert!(!join_refused(refused, "db2"), "another member's JOIN");
        assert!(
            !join_refused(refused, "db"),
            "a name that is a prefix of the refused one"
        );
        assert!(!join_refused(
            "2026-12-07 10:24:01 0 [Note] WSREP: Member 2.0 (db1) requested state transfer",
            "db1"
        ));

        let joiner = WsrepStatus {
            local_state: local_state::JOINING,
            local_state_comment: "Joining".into(),
            ..synced(619_391)
        };
        let refused = Some(619_391);
        let why = refused_join(&joiner, refused).expect("refused");
        assert!(why.contains("seqno 619391"), "{why}");
        assert_eq!(refused_join(&joiner, None), None, "a slow join without a refusal");
        let moving = WsrepStatus {
            last_committed: 619_400,
            ..joiner.clone()
        };
        assert_eq!(refused_join(&moving, refused), None, "a new transfer under way");
        let joined = WsrepStatus {
            local_state: local_state::JOINED,
            ..joiner.clone()
        };
        assert_eq!(refused_join(&joined, refused), None, "a later JOIN went through");
        let outside = WsrepStatus {
            cluster_status: "non-Primary".into(),
            ..joiner
        };
        assert_eq!(refused_join(&outside, refused), None, "orphaned_join's case");
    }

    #[test]
    fn a_server_outside_the_primary_component_another_member_serves_is_restarted() {
        let alone = WsrepStatus {
            local_state: 0,
            local_state_comment: "Initialized".into(),
            cluster_status: "non-Primary".into(),
            cluster_size: 1,
            ..synced(139_378)
        };
        let serving = |history: &str, instance: &str| WsrepStatus {
            cluster_state_uuid: history.into(),
            gcomm_uuid: instance.into(),
            ..synced(2_231)
        };
        let db2 = |status: WsrepStatus| member("db2", Phase::Running, Some(status));
        let waiting = member("db3", Phase::Waiting, None);
        let known = ["old-db2".to_string()];

        let other =
            stranded(&alone, &[db2(serving("v", "new-db2")), waiting.clone()], &known).expect("stranded");
        assert_eq!(other.after, RESTART_GRACE, "another history never merges");
        assert!(
            other.why.contains("db2") && other.why.contains("another history"),
            "{}",
            other.why
        );
        // The same history, served by a server this one was never Primary with (restarted).
        let same =
            stranded(&alone, &[db2(serving("u", "new-db2")), waiting.clone()], &known).expect("stranded");
        assert_eq!(same.after, STRANDED_GRACE);
        assert!(same.why.contains("formed without this server"), "{}", same.why);
        let mut old_db2 = serving("u", "old-db2");
        old_db2.incoming_addresses.push("127.0.0.1:2".into());
        let other_history = serving("v", "other");
        let peers = [
            db2(old_db2),
            member("db3", Phase::Running, Some(other_history)),
            waiting.clone(),
        ];
        assert_eq!(
            primary_peers(&synced(7), &peers),
            known,
            "of this history, in a Primary component"
        );
        // Served by the very server it was Primary with: a partition, which Galera heals.
        assert_eq!(stranded(&alone, &[db2(serving("u", "old-db2"))], &known), None);
        let db1 = member("db1", Phase::Running, Some(serving("u", "old-db2")));
        assert_eq!(
            stranded(&alone, &[db1, db2(serving("u", "new-db2"))], &known),
            None,
            "one server it knows is enough"
        );
        // Another history wins over the same one when both are served.
        let db1 = member("db1", Phase::Running, Some(serving("u", "old-db2")));
        let both = stranded(&alone, &[db1, db2(serving("v", "new-db2"))], &known).unwrap();
        assert_eq!(both.after, RESTART_GRACE, "{}", both.why);
        // A server of no known history: never "another history".
        for none in ["", NIL_UUID] {
            let blank = WsrepStatus {
                cluster_state_uuid: none.into(),
                ..alone.clone()
            };
            let r = stranded(&blank, &[db2(serving("u", "new-db2"))], &[]).unwrap();
            assert_eq!(r.after, STRANDED_GRACE, "{none:?}");
        }

        // Nothing to join: no member serves a Primary component.
        assert_eq!(stranded(&alone, std::slice::from_ref(&waiting), &known), None);
        let joining = member("db2", Phase::Joining, Some(serving("u", "new-db2")));
        assert_eq!(
            stranded(&alone, &[joining], &known),
            None,
            "a member not yet Running"
        );
        let donor = WsrepStatus {
            local_state: local_state::DONOR_DESYNCED,
            ..serving("u", "new-db2")
        };
        assert_eq!(stranded(&alone, &[db2(donor)], &known), None, "not Synced");
        let also_alone = member("db2", Phase::Running, Some(alone.clone()));
        assert_eq!(
            stranded(&alone, &[also_alone], &known),
            None,
            "restore_primary's case"
        );
        // This server is in the Primary component, or its backend is gone (lost_backend).
        assert_eq!(
            stranded(&synced(5), &[db2(serving("u", "new-db2"))], &known),
            None
        );
        let closed = WsrepStatus {
            connected: false,
            ..alone
        };
        assert_eq!(stranded(&closed, &[db2(serving("v", "new-db2"))], &known), None);
    }

    #[test]
    fn a_transfer_whose_donor_is_gone_is_abandoned() {
        // Lines from a chaos run's error logs.
        let line = "2026-12-07 13:22:37 0 [Note] WSREP: Member 1.0 (db3) requested state transfer \
                    from 'db2,'. Selected 0.0 (db2)(SYNCED) as donor.";
        assert_eq!(donor_selected(line, "db3").as_deref(), Some("db2"));
        assert_eq!(donor_selected(line, "db2"), None, "another member's transfer");
        assert_eq!(donor_selected(line, "db"), None);
        let impossible = "2026-12-07 13:20:47 0 [Note] WSREP: Member 0.0 (db1) requested state \
                          transfer from 'db2,', but it is impossible to select State Transfer \
                          donor: No donor candidates temporarily available in suitable state";
        assert_eq!(donor_selected(impossible, "db1"), None);

        let donor = DonorInstance {
            name: "db2".into(),
            gcomm_uuid: Some("155803f8-f241-11f1-a144-9ea17ce4686d".into()),
        };
        let sending = WsrepStatus {
            local_state: local_state::DONOR_DESYNCED,
            gcomm_uuid: donor.gcomm_uuid.clone().unwrap(),
            ..synced(9)
        };
        let db2 = |phase, status| member("db2", phase, status);
        assert_eq!(
            donor_instance("db2", &[db2(Phase::Running, Some(sending.clone()))]),
            donor.gcomm_uuid
        );
        assert_eq!(
            donor_instance("db2", &[db2(Phase::Joining, Some(sending.clone()))]),
            None
        );
        let outside = WsrepStatus {
            cluster_status: "non-Primary".into(),
            ..sending.clone()
        };
        assert_eq!(donor_instance("db2", &[db2(Phase::Running, Some(outside))]), None);
        assert_eq!(
            donor_instance("db3", &[db2(Phase::Running, Some(sending.clone()))]),
            None
        );
        assert_eq!(
            abandoned_transfer(&donor, None, &[db2(Phase::Running, Some(sending.clone()))]),
            None
        );
        assert_eq!(
            abandoned_transfer(&donor, None, &[db2(Phase::Running, None)]),
            None,
            "a probe that failed once is no proof"
        );
        assert_eq!(
            abandoned_transfer(&donor, None, &[]),
            None,
            "a silent agent is no proof"
        );
        let mut dead = db2(Phase::Running, None);
        dead.departed = donor.gcomm_uuid.clone();
        assert!(abandoned_transfer(&donor, None, &[dead]).is_some());
        for phase in [Phase::Waiting, Phase::Failed, Phase::Stopped, Phase::Stopping] {
            assert!(
                abandoned_transfer(&donor, None, &[db2(phase, None)]).is_some(),
                "{phase:?}"
            );
        }
        let again = WsrepStatus {
            gcomm_uuid: "4ed932ff-f241-11f1-bdee-ce07fef26175".into(),
            ..synced(1)
        };
        let why = abandoned_transfer(&donor, None, &[db2(Phase::Running, Some(again))]).unwrap();
        assert!(why.contains("db2") && why.contains("a new server"), "{why}");
        let dead_donor = [db2(Phase::Failed, None)];
        for state in [local_state::JOINED, local_state::SYNCED] {
            let has_it = WsrepStatus {
                local_state: state,
                ..synced(9)
            };
            assert_eq!(
                abandoned_transfer(&donor, Some(&has_it), &dead_donor),
                None,
                "{state}"
            );
        }
        let joining = WsrepStatus {
            local_state: local_state::JOINING,
            ..synced(9)
        };
        assert!(abandoned_transfer(&donor, Some(&joining), &dead_donor).is_some());
        // Selected, its instance not seen yet: only a report without a server proves it gone.
        let unresolved = DonorInstance {
            name: "db2".into(),
            gcomm_uuid: None,
        };
        let again = WsrepStatus {
            gcomm_uuid: "4ed932ff-f241-11f1-bdee-ce07fef26175".into(),
            ..synced(1)
        };
        assert_eq!(
            abandoned_transfer(&unresolved, None, &[db2(Phase::Running, Some(again))]),
            None
        );
        assert!(abandoned_transfer(&unresolved, None, &[db2(Phase::Failed, None)]).is_some());
        let bootstrapping = db2(Phase::Bootstrapping, None);
        assert_eq!(
            abandoned_transfer(&donor, None, &[bootstrapping]),
            None,
            "starting: its instance shows once it answers"
        );
    }

    #[test]
    fn a_join_is_given_up_only_when_every_other_member_is_known_to_run_no_server() {
        let o = order();
        let mut alone = synced(9);
        alone.local_state_comment = "Initialized".into();
        alone.cluster_status = "non-Primary".into();
        let waiting = [
            member("n1", Phase::Waiting, None),
            member("n3", Phase::Failed, None),
        ];
        let why = orphaned_join("n2", Some(&alone), &o, &waiting).expect("nothing to join");
        assert!(why.contains("no other member runs a server"), "{why}");
        assert!(why.contains("Initialized"), "{why}");
        let stopped = [
            member("n1", Phase::Stopped, None),
            member("n3", Phase::Waiting, None),
        ];
        assert!(orphaned_join("n2", Some(&alone), &o, &stopped).is_some());
        let why = orphaned_join("n2", None, &o, &stopped).expect("a snapshot no one can send");
        assert!(why.contains("not answering"), "{why}");

        let mut cut_off = synced(9);
        cut_off.cluster_status = "non-Primary".into();
        // One member's report changed from `waiting`: each keeps the join going.
        let still_joining = [
            (
                0,
                member("n1", Phase::Running, Some(synced(9))),
                "a Primary component to join",
            ),
            (
                1,
                member("n3", Phase::Bootstrapping, None),
                "a Primary component on its way",
            ),
            (
                0,
                member("n1", Phase::Running, Some(cut_off)),
                "n1's server runs: the two may restore their Primary component when a partition heals",
            ),
            (
                0,
                member("n1", Phase::Running, None),
                "a busy donor missed a probe",
            ),
        ];
        for (at, report, why) in still_joining {
            let mut others = waiting.clone();
            others[at] = report;
            assert_eq!(orphaned_join("n2", Some(&alone), &o, &others), None, "{why}");
            assert_eq!(orphaned_join("n2", None, &o, &others), None, "{why}");
        }
        assert_eq!(
            orphaned_join("n2", Some(&alone), &o, &waiting[..1]),
            None,
            "n3 has no report: it may serve a Primary component out of sight"
        );

        let mut joiner = synced(9);
        joiner.local_state_comment = "Joiner".into();
        assert_eq!(
            orphaned_join("n2", Some(&joiner), &o, &waiting),
            None,
            "in a Primary component itself (stale reports of the others): still joining"
        );
    }

    #[test]
    fn health_has_clustercheck_semantics() {
        assert_eq!(health(&synced(1)), Ok(()));
        let mut s = synced(1);
        s.local_state = local_state::DONOR_DESYNCED;
        s.local_state_comment = "Donor/Desynced".into();
        assert_eq!(
            health(&s),
            Err("Donor/Desynced (wsrep_local_state 2), not Synced".into())
        );
        let mut s = synced(1);
        s.cluster_status = "non-Primary".into();
        assert_eq!(
            health(&s),
            Err("not in a Primary component (cluster status non-Primary)".into())
        );
        let mut s = synced(1);
        s.ready = false;
        assert!(health(&s).is_err());
        let mut s = synced(1);
        s.connected = false;
        assert!(health(&s).is_err());
    }

    fn fitness(healthy: &[&str], fit: &[&str]) -> Fitness {
        Fitness {
            healthy: healthy.iter().map(|s| s.to_string()).collect(),
            fit: fit.iter().map(|s| s.to_string()).collect(),
            merging: Vec::new(),
            desynced: Vec::new(),
        }
    }

    #[test]
    fn writer_is_sticky_while_fit() {
        let o = order();
        let f = fitness(&["n1", "n2"], &["n1", "n2"]);
        assert_eq!(choose_writer(Some("n2"), &f, &o, false), Some("n2".into()));
        let f = fitness(&["n1", "n3"], &["n1", "n3"]);
        assert_eq!(choose_writer(Some("n2"), &f, &o, false), Some("n1".into()));
        assert_eq!(
            choose_writer(None, &fitness(&["n3"], &["n3"]), &o, false),
            Some("n3".into())
        );
        assert_eq!(choose_writer(Some("n1"), &fitness(&[], &[]), &o, false), None);
        // a donor keeps the role, but is not given it
        let f = fitness(&["n3"], &["n2", "n3"]);
        assert_eq!(choose_writer(Some("n2"), &f, &o, false), Some("n2".into()));
        assert_eq!(choose_writer(None, &f, &o, false), Some("n3".into()));
    }

    fn report(name: &str, status: Option<WsrepStatus>) -> MemberReport {
        let phase = if status.is_some() {
            Phase::Running
        } else {
            Phase::Failed
        };
        member(name, phase, status)
    }

    #[test]
    fn an_applier_that_exits_on_an_error_is_seen_in_the_error_log() {
        assert_eq!(
            applier_error(
                "2026-12-07 17:40:40 2 [ERROR] WSREP: Failed to process action WRITESET, g: 911606, l: 11, ptr: 0x7f54c3e01440, size: 328: Unsupported WS version: 0"
            ),
            Some(2)
        );
        let exit = "2026-12-07 17:40:40 2 [Note] WSREP: Applier thread exiting ret: 6 thd: 2";
        assert_eq!(applier_error(exit), None);
        assert_eq!(applier_exited(exit), Some(2));
        let clean = "2026-12-07 17:40:40 2 [Note] WSREP: Applier thread exiting ret: 0 thd: 2";
        assert_eq!(applier_exited(clean), None);
        assert_eq!(
            applier_exited("2026-12-07 17:40:40 5 [Note] WSREP: Starting applier thread 5"),
            None
        );
    }

    #[test]
    fn a_donating_writer_or_one_whose_agent_is_silent_keeps_the_role() {
        let nodes: Vec<(String, String)> = ["n1", "n2", "n3"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), format!("10.0.0.{}:3306", i + 1)))
            .collect();
        let mut donor = synced(5);
        donor.local_state = local_state::DONOR_DESYNCED;
        donor.local_state_comment = "Donor/Desynced".into();
        assert!(health(&donor).is_err() && keeps_writing(&donor, true).is_ok());
        assert!(
            keeps_writing(&donor, false).is_err(),
            "desynced by hand: no joiner"
        );
        let mut view = synced(5);
        view.incoming_addresses = vec!["10.0.0.1:3306".into(), "10.0.0.2:3306".into()];
        // n1 donates to n3, which joins; n2 is healthy and its view holds n1
        let mut joiner = report("n3", None);
        joiner.phase = Phase::Joining;
        let f = writer_fitness(
            &nodes,
            &[
                report("n1", Some(donor.clone())),
                report("n2", Some(view.clone())),
                joiner,
            ],
        );
        assert_eq!(f, fitness(&["n2"], &["n1", "n2"]));
        // with nobody joining, a desynced writer is not fit; it keeps the role only for
        // DESYNC_GRACE (a donor's report from just before its transfer ended reads so)
        let f = writer_fitness(
            &nodes,
            &[
                report("n1", Some(donor.clone())),
                report("n2", Some(view.clone())),
            ],
        );
        assert_eq!(
            (&f.healthy, &f.fit, &f.desynced),
            (
                &vec!["n2".to_string()],
                &vec!["n2".to_string()],
                &vec!["n1".to_string()]
            )
        );
        assert_eq!(choose_writer(Some("n1"), &f, &order(), false), Some("n1".into()));
        assert_eq!(choose_writer(Some("n1"), &f, &order(), true), Some("n2".into()));
        // a donor's report caught Joined, on its way back to Synced, reads the same
        let mut joined = donor.clone();
        joined.local_state = local_state::JOINED;
        joined.local_state_comment = "Joined".into();
        let f = writer_fitness(
            &nodes,
            &[report("n1", Some(joined)), report("n2", Some(view.clone()))],
        );
        assert_eq!(f.desynced, ["n1"]);
        assert_eq!(desync_grace(Duration::from_millis(500)), DESYNC_GRACE);
        assert_eq!(desync_grace(Duration::from_secs(3)), Duration::from_secs(7));
        // n1's agent is silent, but n2's Primary component still holds n1: n1 keeps the role
        let f = writer_fitness(&nodes, &[report("n2", Some(view.clone()))]);
        assert_eq!(f, fitness(&["n2"], &["n1", "n2"]));
        assert_eq!(choose_writer(Some("n1"), &f, &order(), false), Some("n1".into()));
        // once Galera dropped it from the view, it is gone
        view.incoming_addresses = vec!["10.0.0.2:3306".into()];
        let f = writer_fitness(&nodes, &[report("n2", Some(view.clone()))]);
        assert_eq!(choose_writer(Some("n1"), &f, &order(), false), Some("n2".into()));
        // n1's report is from before a merge (outside a Primary component), n2's view holds
        // it: n1 keeps the role; once n2's view drops it, it is gone
        let mut merging = synced(5);
        merging.cluster_status = "non-Primary".into();
        merging.cluster_size = 1;
        merging.incoming_addresses = vec!["10.0.0.1:3306".into()];
        let mut both = view.clone();
        both.incoming_addresses = vec!["10.0.0.1:3306".into(), "10.0.0.2:3306".into()];
        let f = writer_fitness(
            &nodes,
            &[report("n1", Some(merging.clone())), report("n2", Some(both))],
        );
        assert_eq!(
            f.fit,
            ["n2"],
            "no traffic to a server that says it is not Primary"
        );
        assert_eq!(f.merging, ["n1"]);
        assert_eq!(choose_writer(Some("n1"), &f, &order(), false), Some("n1".into()));
        assert_eq!(choose_writer(Some("n2"), &f, &order(), false), Some("n2".into()));
        let mut stale = view.clone();
        stale.incoming_addresses = vec!["10.0.0.1:3306".into(), "10.0.0.2:3306".into()];
        stale.cluster_size = 1;
        let f = writer_fitness(
            &nodes,
            &[report("n1", Some(merging.clone())), report("n2", Some(stale))],
        );
        assert!(f.merging.is_empty(), "a list longer than the view is stale");
        let f = writer_fitness(
            &nodes,
            &[
                report("n1", Some(merging.clone())),
                report("n2", Some(view.clone())),
            ],
        );
        assert_eq!(choose_writer(Some("n1"), &f, &order(), false), Some("n2".into()));
        let mut closed = merging;
        closed.connected = false;
        let mut both = view.clone();
        both.incoming_addresses = vec!["10.0.0.1:3306".into(), "10.0.0.2:3306".into()];
        let f = writer_fitness(&nodes, &[report("n1", Some(closed)), report("n2", Some(both))]);
        assert!(
            f.merging.is_empty(),
            "a server whose group communication stopped never merges"
        );
        // nobody healthy: the donor takes the role rather than leave the cluster without one
        let mut donating = donor.clone();
        donating.incoming_addresses = vec!["10.0.0.1:3306".into()];
        let mut joiner = report("n3", None);
        joiner.phase = Phase::Joining;
        let f = writer_fitness(&nodes, &[report("n1", Some(donating)), joiner]);
        assert_eq!(f, fitness(&[], &["n1"]));
        assert_eq!(choose_writer(None, &f, &order(), false), Some("n1".into()));
        // n1 donated to n3, whose join has just ended: n3 is Synced in a newer view holding
        // n1, while n1's report is still the donor's, from the view before. n1 keeps the role
        // until its next report (found by vigil chaos: the role moved for nothing).
        let mut finished = view.clone();
        finished.conf_id = donor.conf_id + 1;
        finished.incoming_addresses = vec!["10.0.0.1:3306".into(), "10.0.0.3:3306".into()];
        let f = writer_fitness(
            &nodes,
            &[
                report("n1", Some(donor.clone())),
                report("n3", Some(finished.clone())),
            ],
        );
        assert_eq!(f.merging, ["n1"]);
        assert_eq!(choose_writer(Some("n1"), &f, &order(), false), Some("n1".into()));
        // A report from the same view is current: a writer desynced by hand gives the role up.
        finished.conf_id = donor.conf_id;
        let f = writer_fitness(
            &nodes,
            &[report("n1", Some(donor.clone())), report("n3", Some(finished))],
        );
        assert!(f.merging.is_empty());
        assert_eq!(choose_writer(Some("n1"), &f, &order(), true), Some("n3".into()));
        // a report saying the server is down is no silence
        let f = writer_fitness(&nodes, &[report("n1", None), report("n2", Some(synced(5)))]);
        assert_eq!(f, fitness(&["n2"], &["n2"]));
        // a joiner, or a donor outside a Primary component, is not fit
        let mut lost = donor;
        lost.cluster_status = "non-Primary".into();
        assert!(keeps_writing(&lost, true).is_err());
    }

    #[test]
    fn a_start_is_finished_once_synced_or_donating_from_its_own_component() {
        assert!(start_finished(Phase::Joining, &synced(5)));
        assert!(start_finished(Phase::Bootstrapping, &synced(5)));
        let donor = WsrepStatus {
            local_state: local_state::DONOR_DESYNCED,
            local_state_comment: "Donor/Desynced".into(),
            ..synced(5)
        };
        assert!(start_finished(Phase::Bootstrapping, &donor));
        assert!(
            !start_finished(Phase::Joining, &donor),
            "a joiner is never a donor"
        );
        let outside = WsrepStatus {
            cluster_status: "non-Primary".into(),
            ..donor.clone()
        };
        assert!(!start_finished(Phase::Bootstrapping, &outside));
        let joiner = WsrepStatus {
            local_state: local_state::JOINING,
            ..synced(5)
        };
        assert!(!start_finished(Phase::Joining, &joiner));
        assert!(!start_finished(Phase::Bootstrapping, &joiner));
    }

    #[test]
    fn the_eviction_list_is_cleared_once_a_later_view_is_installed() {
        let mut me = synced(5);
        assert!(!clear_evictions(&me, Some(6)), "nothing listed");
        me.evict_list = vec!["6f9c1d2e-0b1a-11f1-8a5e-5b1c2d3e4f50".into()];
        assert!(clear_evictions(&me, Some(6)));
        assert!(!clear_evictions(&me, Some(7)), "no view since it was listed");
        assert!(!clear_evictions(&me, None));
        me.cluster_status = "non-Primary".into();
        assert!(
            !clear_evictions(&me, Some(6)),
            "outside a Primary component: not yet"
        );
    }

    #[test]
    fn only_a_server_whose_group_communication_stopped_is_restarted() {
        let mut s = synced(5);
        assert_eq!(lost_backend(&s), None);
        s.cluster_status = "non-Primary".into();
        assert_eq!(lost_backend(&s), None, "cut off, still trying: not restarted");
        s.connected = false;
        s.cluster_status = "Disconnected".into();
        assert!(lost_backend(&s).is_some());
    }

    #[test]
    fn a_member_the_others_primary_component_dropped_is_not_fit_whatever_its_report_says() {
        let nodes: Vec<(String, String)> = ["n1", "n2", "n3"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), format!("10.0.0.{}:3306", i + 1)))
            .collect();
        let view = |members: &[usize]| {
            let mut s = synced(5);
            s.incoming_addresses = members.iter().map(|i| format!("10.0.0.{i}:3306")).collect();
            s
        };
        // n1 is cut off; its last report (stale) still says Synced in a view of three
        let reports = [
            report("n1", Some(view(&[1, 2, 3]))),
            report("n2", Some(view(&[2, 3]))),
            report("n3", Some(view(&[2, 3]))),
        ];
        let f = writer_fitness(&nodes, &reports);
        assert_eq!(f, fitness(&["n2", "n3"], &["n2", "n3"]));
        assert_eq!(choose_writer(Some("n1"), &f, &order(), false), Some("n2".into()));
        // all in one view: all fit
        let reports = [
            report("n1", Some(view(&[1, 2, 3]))),
            report("n2", Some(view(&[1, 2, 3]))),
            report("n3", Some(view(&[1, 2, 3]))),
        ];
        let f = writer_fitness(&nodes, &reports);
        assert_eq!(f.healthy, ["n1", "n2", "n3"]);
    }

    #[test]
    fn members_known_dead_are_evicted_once() {
        let uuid = "6f9c1d2e-0b1a-11f1-8a5e-5b1c2d3e4f50";
        let mut dead = report("n1", None);
        dead.departed = Some(uuid.into());
        let mut bogus = report("n3", None);
        bogus.departed = Some("x'; DROP".into());
        let me = synced(5);
        assert_eq!(evictions(&me, &[dead.clone(), bogus], &[], false), [uuid]);
        let done = [uuid.to_string()];
        assert!(evictions(&me, &[dead.clone()], &done, false).is_empty(), "once");
        assert!(
            evictions(&me, &[dead.clone()], &[], true).is_empty(),
            "never with garbd"
        );
        let mut outside = synced(5);
        outside.cluster_status = "non-Primary".into();
        assert!(evictions(&outside, &[dead.clone()], &[], false).is_empty());
        let mut itself = synced(5);
        itself.gcomm_uuid = uuid.into();
        assert!(evictions(&itself, &[dead], &[], false).is_empty());
        assert!(is_uuid(uuid) && !is_uuid("6f9c1d2e") && !is_uuid(""));
    }

    #[test]
    fn the_record_only_rises() {
        let at = |seqno| Position {
            uuid: "u".into(),
            seqno,
        };
        assert_eq!(raised_record(None, &synced(5)), Some(at(5)));
        assert_eq!(raised_record(Some(&at(4)), &synced(5)), Some(at(5)));
        assert_eq!(raised_record(Some(&at(5)), &synced(5)), None);
        assert_eq!(
            raised_record(Some(&at(9)), &synced(5)),
            None,
            "a lagging probe never lowers it"
        );
        let other = Position {
            uuid: "old".into(),
            seqno: 900,
        };
        assert_eq!(
            raised_record(Some(&other), &synced(5)),
            Some(at(5)),
            "a new cluster history replaces it"
        );
        assert_eq!(raised_record(None, &synced(-1)), None);
    }

    #[test]
    fn writer_stops_last() {
        assert_eq!(stop_order(&order(), Some("n1")), vec!["n3", "n2", "n1"]);
        assert_eq!(stop_order(&order(), Some("n2")), vec!["n3", "n1", "n2"]);
        assert_eq!(stop_order(&order(), None), vec!["n3", "n2", "n1"]);
    }
}
