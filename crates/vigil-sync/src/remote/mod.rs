//! Remote sync over TLS: protocol, server, client.

pub(crate) mod apply;
pub mod client;
pub mod proto;
pub mod server;
pub mod tls;
