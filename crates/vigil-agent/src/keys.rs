//! The coordination store's key layout, one place for all of it.

/// `/vigil/<cluster>/members/<node>`: a node's latest [`vigil_core::galera::MemberReport`],
/// under its agent's lease (it vanishes when the agent does).
pub fn member(cluster: &str, node: &str) -> String {
    format!("{}{node}", members(cluster))
}

pub fn members(cluster: &str) -> String {
    format!("/vigil/{cluster}/members/")
}

/// `/vigil/<cluster>/writer`: the name of the node that takes writes.
pub fn writer(cluster: &str) -> String {
    format!("/vigil/{cluster}/writer")
}

/// `/vigil/<cluster>/locks/<name>`: held by one agent under its lease (`join`: one state
/// transfer at a time; `bootstrap`: one node starts a Primary component).
pub fn lock(cluster: &str, name: &str) -> String {
    format!("/vigil/{cluster}/locks/{name}")
}

/// `/vigil/<cluster>/galera/position`: the highest `{uuid, seqno}` the writer saw committed.
pub fn position(cluster: &str) -> String {
    format!("/vigil/{cluster}/galera/position")
}

/// `/vigil/<cluster>/hold/<node>`: the operator keeps this node stopped.
pub fn hold(cluster: &str, node: &str) -> String {
    format!("/vigil/{cluster}/hold/{node}")
}

/// `/vigil/<cluster>/galera/force`: the node the operator chose to start the cluster from,
/// even without every member; cleared once that node runs.
pub fn force_bootstrap(cluster: &str) -> String {
    format!("/vigil/{cluster}/galera/force")
}

/// `/vigil/<cluster>/galera/fence`: the position the cluster was last restarted from.
pub fn fence(cluster: &str) -> String {
    format!("/vigil/{cluster}/galera/fence")
}

/// `/vigil/<cluster>/repl/`: everything of the replication topology.
pub fn repl(cluster: &str) -> String {
    format!("/vigil/{cluster}/repl/")
}

/// `/vigil/<cluster>/repl/leader`: the primary's name, under its leader lease. The key's
/// revision is the primary's fencing token (epoch); it vanishes when the lease lapses.
pub fn leader(cluster: &str) -> String {
    format!("{}leader", repl(cluster))
}

/// `/vigil/<cluster>/repl/primary`: the last promotion's [`vigil_core::replication::PrimaryRecord`].
pub fn primary_record(cluster: &str) -> String {
    format!("{}primary", repl(cluster))
}

/// `/vigil/<cluster>/repl/failovers`: the [`vigil_core::replication::FailoverHistory`].
pub fn failovers(cluster: &str) -> String {
    format!("{}failovers", repl(cluster))
}

/// `/vigil/<cluster>/repl/semisync`: `on` while the primary's semi-sync never fell back, `off`
/// once it did (written by the primary in `semisync` durability).
pub fn semisync(cluster: &str) -> String {
    format!("{}semisync", repl(cluster))
}

/// `/vigil/<cluster>/repl/switchover`: a planned handover in progress
/// ([`vigil_core::replication::Switchover`]).
pub fn switchover(cluster: &str) -> String {
    format!("{}switchover", repl(cluster))
}

/// `/vigil/<cluster>/repl/quarantine/<node>`: why the node gets no traffic.
pub fn quarantine(cluster: &str, node: &str) -> String {
    format!("{}quarantine/{node}", repl(cluster))
}

/// `/vigil/<cluster>/repl/reclone/<node>`: the operator asked to re-clone the node.
pub fn reclone(cluster: &str, node: &str) -> String {
    format!("{}reclone/{node}", repl(cluster))
}

/// `/vigil/<cluster>/repl/members/<node>`: a replication node's
/// [`vigil_core::replication::ReplReport`], under its agent's lease.
pub fn repl_member(cluster: &str, node: &str) -> String {
    format!("{}{node}", repl_members(cluster))
}

pub fn repl_members(cluster: &str) -> String {
    format!("{}members/", repl(cluster))
}
