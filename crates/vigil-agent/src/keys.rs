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
