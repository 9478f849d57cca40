//! A finished request/response exchange with the connection it happened on:
//! what the pipeline hands to its sinks (metrics, watch output).

use std::{net::IpAddr, sync::Arc};

use tracer_common::{SockAddr, AF_INET, AF_INET6};

use crate::{
    metadata::{Identity, PeerService},
    protocols::{Exchange, Side},
    source::events::Source,
};

/// One HTTP exchange, seen from one traced process.
#[derive(Debug, Clone)]
pub struct Record {
    pub side: Side,
    /// Who the traced process is.
    pub identity: Arc<Identity>,
    /// The callee's Service or pod (client side), when the cluster knows it.
    pub peer_service: Option<Arc<PeerService>>,
    pub tgid: u32,
    /// The kernel source that saw the connection.
    pub source: Source,
    pub local: SockAddr,
    pub remote: SockAddr,
    pub exchange: Exchange,
}

impl Record {
    pub fn duration_s(&self) -> f64 {
        self.exchange.end_ns.saturating_sub(self.exchange.start_ns) as f64 / 1e9
    }
}

/// Where records go.
pub trait Sink {
    fn record(&mut self, record: &Record);
}

/// The IP address of a socket end, if known.
pub fn ip_of(addr: &SockAddr) -> Option<IpAddr> {
    match addr.family {
        AF_INET => {
            let [a, b, c, d, ..] = addr.addr;
            Some(IpAddr::from([a, b, c, d]))
        }
        AF_INET6 => Some(IpAddr::from(addr.addr)),
        _ => None,
    }
}
