//! The RED histograms of application calls (HTTP, gRPC, databases): label
//! sets built from a process's identity and the call, the cardinality
//! budgets, a cache that makes a repeated observation cheap, and the removal
//! of a deleted pod's series.
//!
//! Input: [`Observation`]s (a finished exchange with the identity the
//! metadata stage resolved). Output: five histogram families registered in
//! the daemon's registry:
//!
//! - `http_server_request_duration_seconds`: the traced process served the
//!   request (HTTP/1.x and HTTP/2 alike);
//! - `http_client_request_duration_seconds`: it sent the request; adds
//!   `server_address`, `server_port` and, when the peer is a Service or pod
//!   the cluster knows, `server_service_name` and `server_service_namespace`;
//! - `rpc_server_duration_seconds` and `rpc_client_duration_seconds`: gRPC
//!   calls (never also counted as HTTP), with `rpc_system="grpc"`,
//!   `rpc_service`, `rpc_method`, `rpc_grpc_status_code` (empty without a
//!   status) and `error_type` (a failure only); the client one with the
//!   peer labels;
//! - `db_client_operation_duration_seconds`: database operations, with
//!   `db_system_name`, `db_operation_name`, `db_collection_name` (empty
//!   unless a simple statement names one table), `error_type` (the
//!   server's error code, or a failure) and the peer labels.
//!
//! Identity labels come first: `service_name`, then for a process in a pod
//! `service_namespace`, `k8s_namespace_name`, `k8s_pod_name`,
//! `k8s_container_name` (when known), `k8s_node_name`, `k8s_owner_name` and
//! the one of `k8s_deployment_name`, `k8s_statefulset_name`,
//! `k8s_daemonset_name`, `k8s_job_name`, `k8s_cronjob_name` that names the
//! top-level owner. A process outside any pod has only `service_name`. Then
//! `http_request_method` (one of the nine standard methods, else `_OTHER`),
//! `http_response_status_code` (empty without a response), `http_route` (see
//! [`route::template`]) and `error_type`: the status code when it is an error
//! (server: >= 500, client: >= 400), `timeout` or `connection_closed` when no
//! response came, else empty.
//!
//! Budgets, each folding its overflow into `_other` (routes into
//! [`route::OVERFLOW_ROUTE`]) and counting it in
//! `tracer_label_overflow_total{label}`: identities (label sets of
//! `service_name` and the k8s labels), routes per service, status codes per
//! service, peers per service, gRPC methods per service, database
//! operations, collections and error codes per service.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use rustc_hash::FxBuildHasher;

use crate::export::route::{self, KeyBudget, RouteBudget};
use crate::metadata::{Identity, PeerService};
use crate::protocols::{Call, DbCall, Failure, GrpcCall, HttpCall, Side};

/// OpenTelemetry's default explicit bucket boundaries for durations, seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Response body sizes, bytes: powers of 4 from 256 B to 64 MiB.
pub const SIZE_BUCKETS: [f64; 10] = [
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// Distinct identities (label sets of a process: service and pod) with
/// series of their own; later ones share the `_other` identity.
pub const DEFAULT_MAX_IDENTITIES: usize = 1024;

/// Services that get a route, status and peer budget; later ones share the
/// overflow values.
pub const DEFAULT_MAX_SERVICES: usize = 512;

/// Distinct (address, port) peers per service on the client histogram.
pub const DEFAULT_MAX_PEERS_PER_SERVICE: usize = 64;

/// Distinct status codes per service.
pub const MAX_STATUS_CODES_PER_SERVICE: usize = 32;

/// The value of a label whose budget is spent.
pub const OVERFLOW: &str = "_other";

/// The methods OpenTelemetry knows; anything else is reported as `_OTHER`.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Slots of the direct-mapped cache of resolved label sets. A slot holds one
/// entry of at most a few hundred bytes, so the cache stays around 1 MiB.
const CACHE_SLOTS: usize = 4096;

/// Longer paths (or methods) skip the cache: they are rare, and caching them
/// would let one request pin that much memory per slot.
const MAX_CACHED_LEN: usize = 256;

/// Distinct gRPC (service, method) pairs per service.
pub const MAX_RPC_METHODS_PER_SERVICE: usize = 256;

/// Distinct database operation names per service (SQL verbs are a short
/// list; Redis has a few hundred commands, of which a client uses a few).
pub const MAX_DB_OPERATIONS_PER_SERVICE: usize = 64;

/// Distinct database error codes per service.
pub const MAX_DB_ERRORS_PER_SERVICE: usize = 32;

/// Label names of `tracer_label_overflow_total`, by [`Budget`].
pub const OVERFLOW_LABELS: [&str; 8] = [
    "service_name",
    "http_route",
    "http_response_status_code",
    "server_address",
    "rpc_method",
    "db_operation_name",
    "db_collection_name",
    "error_type",
];

/// Which budget folded a label value (index into [`OVERFLOW_LABELS`]).
#[derive(Debug, Clone, Copy)]
enum Budget {
    Identity,
    Route,
    Status,
    Peer,
    RpcMethod,
    DbOperation,
    DbCollection,
    DbError,
}

/// One finished exchange, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Which end the traced process was: picks the server or client histogram.
    pub side: Side,
    pub identity: &'a Arc<Identity>,
    /// What was called: HTTP method, status and raw path (templated here),
    /// a gRPC method and status, or a database operation.
    pub call: &'a Call,
    pub failure: Option<Failure>,
    /// Negative or non-finite values are recorded as 0.
    pub duration_s: f64,
    /// The remote end; used for the client histogram only.
    pub peer: Option<(IpAddr, u16)>,
    /// The Service or pod behind the remote end (client side).
    pub peer_service: Option<&'a Arc<PeerService>>,
    /// HTTP/1.x: the response body's size; observed into the size
    /// histogram of the same labels.
    pub response_body_bytes: Option<u64>,
}

/// The identity labels of one process: built once per identity.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Who {
    labels: Vec<(&'static str, Arc<str>)>,
}

impl Who {
    fn of(identity: &Identity) -> Self {
        let mut labels = vec![("service_name", identity.service_name.clone())];
        if let Some(pod) = &identity.pod {
            labels.push(("service_namespace", pod.service_namespace.clone()));
            labels.push(("k8s_namespace_name", pod.namespace.clone()));
            labels.push(("k8s_pod_name", pod.name.clone()));
            if let Some(container) = &pod.container {
                labels.push(("k8s_container_name", container.clone()));
            }
            labels.push(("k8s_node_name", pod.node.clone()));
            let owner_name = pod.owner.as_ref().map_or(&pod.name, |o| &o.name);
            labels.push(("k8s_owner_name", owner_name.clone()));
            if let Some(owner) = &pod.owner {
                let kind_label = match &*owner.kind {
                    "Deployment" => Some("k8s_deployment_name"),
                    "StatefulSet" => Some("k8s_statefulset_name"),
                    "DaemonSet" => Some("k8s_daemonset_name"),
                    "Job" => Some("k8s_job_name"),
                    "CronJob" => Some("k8s_cronjob_name"),
                    _ => None,
                };
                if let Some(label) = kind_label {
                    labels.push((label, owner.name.clone()));
                }
            }
        }
        Self { labels }
    }

    fn overflow() -> Self {
        Self {
            labels: vec![("service_name", Arc::from(OVERFLOW))],
        }
    }

    fn service(&self) -> &str {
        self.labels.first().map_or("", |(_, v)| v)
    }

    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (name, value) in &self.labels {
            (*name, &**value).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// `http_response_status_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StatusLabel {
    None,
    Code(u16),
    Overflow,
}

impl EncodeLabelValue for StatusLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self {
            Self::None => Ok(()),
            Self::Code(code) => write!(encoder, "{code}"),
            Self::Overflow => encoder.write_str(OVERFLOW),
        }
    }
}

/// `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ErrorType {
    None,
    Status(StatusLabel),
    Failure(Failure),
}

impl EncodeLabelValue for ErrorType {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::None => Ok(()),
            Self::Status(status) => EncodeLabelValue::encode(status, encoder),
            Self::Failure(failure) => {
                use std::fmt::Write as _;
                encoder.write_str(failure.as_str())
            }
        }
    }
}

/// `server_address` / `server_port` of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    Unknown,
    Known(IpAddr, u16),
    Overflow,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerLabels {
    who: Arc<Who>,
    method: &'static str,
    status: StatusLabel,
    route: Arc<str>,
    error_type: ErrorType,
}

impl EncodeLabelSet for ServerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.who.encode(encoder)?;
        ("http_request_method", self.method).encode(encoder.encode_label())?;
        ("http_response_status_code", self.status).encode(encoder.encode_label())?;
        ("http_route", &*self.route).encode(encoder.encode_label())?;
        ("error_type", self.error_type).encode(encoder.encode_label())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientLabels {
    common: ServerLabels,
    peer: Peer,
    callee: Option<Arc<PeerService>>,
}

impl EncodeLabelSet for ClientLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelSet::encode(&self.common, encoder)?;
        encode_peer(encoder, self.peer, self.callee.as_ref())
    }
}

/// `rpc_*_duration_seconds` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RpcLabels {
    who: Arc<Who>,
    service: Arc<str>,
    method: Arc<str>,
    status: GrpcStatus,
    error_type: ErrorType,
    /// Client side only.
    peer: Option<(Peer, Option<Arc<PeerService>>)>,
}

/// `rpc_grpc_status_code`: 0..=16 as defined by gRPC, else folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GrpcStatus {
    None,
    Code(u32),
    Overflow,
}

/// Highest status code gRPC defines (`UNAUTHENTICATED`).
const MAX_GRPC_STATUS: u32 = 16;

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self {
            Self::None => Ok(()),
            Self::Code(code) => write!(encoder, "{code}"),
            Self::Overflow => encoder.write_str(OVERFLOW),
        }
    }
}

impl EncodeLabelSet for RpcLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.who.encode(encoder)?;
        ("rpc_system", "grpc").encode(encoder.encode_label())?;
        ("rpc_service", &*self.service).encode(encoder.encode_label())?;
        ("rpc_method", &*self.method).encode(encoder.encode_label())?;
        ("rpc_grpc_status_code", self.status).encode(encoder.encode_label())?;
        ("error_type", self.error_type).encode(encoder.encode_label())?;
        if let Some((peer, callee)) = &self.peer {
            encode_peer(encoder, *peer, callee.as_ref())?;
        }
        Ok(())
    }
}

/// `db_client_operation_duration_seconds` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DbLabels {
    who: Arc<Who>,
    system: &'static str,
    operation: Arc<str>,
    collection: Option<Arc<str>>,
    /// The server's error code, a failure, or empty.
    error_type: Arc<str>,
    peer: Peer,
    callee: Option<Arc<PeerService>>,
}

impl EncodeLabelSet for DbLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.who.encode(encoder)?;
        ("db_system_name", self.system).encode(encoder.encode_label())?;
        ("db_operation_name", &*self.operation).encode(encoder.encode_label())?;
        let collection = self.collection.as_deref().unwrap_or("");
        ("db_collection_name", collection).encode(encoder.encode_label())?;
        ("error_type", &*self.error_type).encode(encoder.encode_label())?;
        encode_peer(encoder, self.peer, self.callee.as_ref())
    }
}

/// One series, as the pod index remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Series {
    Server(ServerLabels),
    Client(ClientLabels),
    RpcServer(RpcLabels),
    RpcClient(RpcLabels),
    Db(DbLabels),
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn family<L: Clone + Eq + std::hash::Hash>() -> HistogramFamily<L> {
    HistogramFamily::new_with_constructor(duration_histogram)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

fn size_family<L: Clone + Eq + std::hash::Hash>() -> HistogramFamily<L> {
    HistogramFamily::new_with_constructor(size_histogram)
}

/// A resolved observation: the histogram series its labels map to. Stores
/// the raw inputs so a hit is a comparison, not a templating + label lookup.
#[derive(Debug)]
struct CacheEntry {
    side: Side,
    identity: Arc<Identity>,
    call: Call,
    failure: Option<Failure>,
    peer: Option<(IpAddr, u16)>,
    callee: Option<Arc<PeerService>>,
    resolved: Resolved,
}

/// The series one observation lands in.
#[derive(Debug)]
struct Resolved {
    histogram: Histogram,
    /// The response body size histogram of the same labels, resolved when
    /// an observation had a size.
    size: Option<Histogram>,
    /// Budgets that folded this observation: each observation counts.
    folded: Vec<Counter>,
}

impl Resolved {
    fn observe(&self, duration_s: f64, body_bytes: Option<u64>) {
        self.histogram.observe(duration_s);
        if let (Some(size), Some(bytes)) = (&self.size, body_bytes) {
            // Bodies beyond 2^53 bytes do not happen; the cast is exact below.
            size.observe(bytes as f64);
        }
        for counter in &self.folded {
            counter.inc();
        }
    }
}

impl CacheEntry {
    fn matches(&self, obs: &Observation<'_>, peer: Option<(IpAddr, u16)>) -> bool {
        self.side == obs.side
            && self.failure == obs.failure
            && self.peer == peer
            && Arc::ptr_eq(&self.identity, obs.identity)
            && match (&self.callee, obs.peer_service) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
            && self.call == *obs.call
    }
}

/// Everything `observe` mutates, behind one lock.
#[derive(Debug)]
struct State {
    max_identities: usize,
    whos: HashMap<Arc<Identity>, Arc<Who>>,
    overflow_who: Arc<Who>,
    routes: RouteBudget,
    statuses: KeyBudget<u16>,
    peers: KeyBudget<(IpAddr, u16)>,
    rpc_methods: KeyBudget<(Arc<str>, Arc<str>)>,
    db_operations: KeyBudget<Arc<str>>,
    db_collections: KeyBudget<Arc<str>>,
    db_errors: KeyBudget<Arc<str>>,
    /// `_other`, shared by every folded value.
    overflow_value: Arc<str>,
    /// Series of each pod, so they can be dropped when it is deleted.
    by_pod: HashMap<Arc<str>, HashSet<Series>>,
    /// Direct-mapped: a colliding observation replaces the slot, so the cache
    /// never grows and hot entries win back their slot on the next miss.
    cache: Vec<Option<CacheEntry>>,
}

/// The histogram families and their budgets.
#[derive(Debug)]
pub struct CallMetrics {
    server: HistogramFamily<ServerLabels>,
    client: HistogramFamily<ClientLabels>,
    /// Response body sizes, by the labels of `server` and `client`.
    server_size: HistogramFamily<ServerLabels>,
    client_size: HistogramFamily<ClientLabels>,
    rpc_server: HistogramFamily<RpcLabels>,
    rpc_client: HistogramFamily<RpcLabels>,
    db_client: HistogramFamily<DbLabels>,
    overflow: [Counter; OVERFLOW_LABELS.len()],
    series_removed: Counter,
    state: Mutex<State>,
}

/// Cardinality budgets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_identities: usize,
    pub max_services: usize,
    /// HTTP routes, and database collections, per service.
    pub max_routes_per_service: usize,
    pub max_peers_per_service: usize,
}

impl Limits {
    /// The defaults, with `max_routes_per_service` routes.
    pub fn with_routes(max_routes_per_service: usize) -> Self {
        Self {
            max_identities: DEFAULT_MAX_IDENTITIES,
            max_services: DEFAULT_MAX_SERVICES,
            max_routes_per_service,
            max_peers_per_service: DEFAULT_MAX_PEERS_PER_SERVICE,
        }
    }
}

impl CallMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry, limits: Limits) -> Self {
        let server: HistogramFamily<ServerLabels> = family();
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP requests served by traced processes, from the first request byte \
             to the end of the response (or to the timeout or close that ended the wait)",
            Unit::Seconds,
            server.clone(),
        );
        let client: HistogramFamily<ClientLabels> = family();
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP requests sent by traced processes, from the first request byte to \
             the end of the response (or to the timeout or close that ended the wait)",
            Unit::Seconds,
            client.clone(),
        );
        let server_size: HistogramFamily<ServerLabels> = size_family();
        registry.register_with_unit(
            "http_server_response_body_size",
            "Size of HTTP/1.x response bodies sent by traced servers as they went on the wire \
             (chunk framing included, like nginx's $body_bytes_sent), by the labels of the \
             request's duration series",
            Unit::Bytes,
            server_size.clone(),
        );
        let client_size: HistogramFamily<ClientLabels> = size_family();
        registry.register_with_unit(
            "http_client_response_body_size",
            "Size of HTTP/1.x response bodies received by traced clients as they went on the \
             wire (chunk framing included), by the labels of the request's duration series",
            Unit::Bytes,
            client_size.clone(),
        );
        let rpc_server: HistogramFamily<RpcLabels> = family();
        registry.register_with_unit(
            "rpc_server_duration",
            "Duration of gRPC calls served by traced processes, from the request headers to the \
             end of the response stream",
            Unit::Seconds,
            rpc_server.clone(),
        );
        let rpc_client: HistogramFamily<RpcLabels> = family();
        registry.register_with_unit(
            "rpc_client_duration",
            "Duration of gRPC calls made by traced processes, from the request headers to the \
             end of the response stream",
            Unit::Seconds,
            rpc_client.clone(),
        );
        let db_client: HistogramFamily<DbLabels> = family();
        registry.register_with_unit(
            "db_client_operation_duration",
            "Duration of database operations (PostgreSQL, MySQL, Redis) made by traced \
             processes, from the request's first byte to the end of the server's answer",
            Unit::Seconds,
            db_client.clone(),
        );
        let overflow_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "tracer_label_overflow",
            "Observations whose label value exceeded its cardinality budget and was folded into \
             _other (or /** for routes), by label",
            overflow_family.clone(),
        );
        let overflow =
            OVERFLOW_LABELS.map(|l| overflow_family.get_or_create_owned(&[("label", l)]));
        let series_removed = Counter::default();
        registry.register(
            "tracer_series_removed",
            "Series dropped because their pod was deleted (after the grace period)",
            series_removed.clone(),
        );
        let services = limits.max_services;
        let state = State {
            max_identities: limits.max_identities,
            whos: HashMap::new(),
            overflow_who: Arc::new(Who::overflow()),
            routes: RouteBudget::new(limits.max_routes_per_service, services),
            statuses: KeyBudget::new(MAX_STATUS_CODES_PER_SERVICE, services),
            peers: KeyBudget::new(limits.max_peers_per_service, services),
            rpc_methods: KeyBudget::new(MAX_RPC_METHODS_PER_SERVICE, services),
            db_operations: KeyBudget::new(MAX_DB_OPERATIONS_PER_SERVICE, services),
            db_collections: KeyBudget::new(limits.max_routes_per_service, services),
            db_errors: KeyBudget::new(MAX_DB_ERRORS_PER_SERVICE, services),
            overflow_value: Arc::from(OVERFLOW),
            by_pod: HashMap::new(),
            cache: (0..CACHE_SLOTS).map(|_| None).collect(),
        };
        Self {
            server,
            client,
            server_size,
            client_size,
            rpc_server,
            rpc_client,
            db_client,
            overflow,
            series_removed,
            state: Mutex::new(state),
        }
    }

    /// Records one exchange: applies the budgets and observes the duration.
    /// A repeated (side, identity, call, failure, peer) is served from the
    /// cache without allocating.
    pub fn observe(&self, obs: &Observation<'_>) {
        let duration = if obs.duration_s.is_finite() && obs.duration_s > 0.0 {
            obs.duration_s
        } else {
            0.0
        };
        // The server histograms have no peer labels: ignoring the peer there
        // lets all clients of one route share a cache entry.
        let (peer, callee) = match obs.side {
            Side::Client => (
                obs.peer.map(|(ip, port)| (ip.to_canonical(), port)),
                obs.peer_service,
            ),
            Side::Server => (None, None),
        };
        let obs = Observation {
            peer_service: callee,
            ..*obs
        };

        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = (call_len(obs.call) <= MAX_CACHED_LEN).then(|| {
            // Fast and unkeyed: a collision only costs a cache miss, never a
            // lookup chain, so hostile paths slow nothing down.
            let hash = FxBuildHasher.hash_one((
                obs.side,
                Arc::as_ptr(obs.identity),
                obs.call,
                obs.failure,
                peer,
                callee.map(Arc::as_ptr),
            ));
            // The remainder is below CACHE_SLOTS, so it fits any usize.
            (hash % CACHE_SLOTS as u64) as usize
        });

        if let Some(Some(entry)) = slot.and_then(|s| state.cache.get(s)) {
            // An entry made without a size resolves again for one with.
            let sized = entry.resolved.size.is_some() || obs.response_body_bytes.is_none();
            if sized && entry.matches(&obs, peer) {
                entry.resolved.observe(duration, obs.response_body_bytes);
                return;
            }
        }

        let Some(resolved) = self.resolve(&mut state, &obs, peer) else {
            return;
        };
        resolved.observe(duration, obs.response_body_bytes);
        if let Some(cached) = slot.and_then(|s| state.cache.get_mut(s)) {
            *cached = Some(CacheEntry {
                side: obs.side,
                identity: obs.identity.clone(),
                call: obs.call.clone(),
                failure: obs.failure,
                peer,
                callee: callee.cloned(),
                resolved,
            });
        }
    }

    /// The slow path: computes the label set and finds (or creates) its
    /// series; None for a call no family takes (a database server side).
    fn resolve(
        &self,
        state: &mut State,
        obs: &Observation<'_>,
        peer: Option<(IpAddr, u16)>,
    ) -> Option<Resolved> {
        let mut folded = Vec::new();
        let who = match state.whos.get(obs.identity) {
            Some(who) => who.clone(),
            None if state.whos.len() < state.max_identities => {
                let who = Arc::new(Who::of(obs.identity));
                state.whos.insert(obs.identity.clone(), who.clone());
                who
            }
            None => {
                folded.push(self.overflowed(Budget::Identity));
                state.overflow_who.clone()
            }
        };
        let service = who.service().to_owned();
        let (histogram, series) = match obs.call {
            Call::Http(call) => {
                self.http_series(state, obs, call, who.clone(), &service, peer, &mut folded)
            }
            Call::Grpc(call) => {
                self.rpc_series(state, obs, call, who.clone(), &service, peer, &mut folded)
            }
            Call::Db(call) if obs.side == Side::Client => {
                self.db_series(state, obs, call, who.clone(), &service, peer, &mut folded)
            }
            Call::Db(_) => return None,
        };
        let size = match &series {
            _ if obs.response_body_bytes.is_none() => None,
            Series::Server(labels) => Some(self.server_size.get_or_create_owned(labels)),
            Series::Client(labels) => Some(self.client_size.get_or_create_owned(labels)),
            Series::RpcServer(_) | Series::RpcClient(_) | Series::Db(_) => None,
        };
        if let Some(pod) = &obs.identity.pod {
            if !Arc::ptr_eq(&who, &state.overflow_who) {
                state
                    .by_pod
                    .entry(pod.uid.clone())
                    .or_default()
                    .insert(series);
            }
        }
        Some(Resolved {
            histogram,
            size,
            folded,
        })
    }

    fn overflowed(&self, budget: Budget) -> Counter {
        self.overflow[budget as usize].clone()
    }

    #[expect(clippy::too_many_arguments, reason = "the parts of one observation")]
    fn http_series(
        &self,
        state: &mut State,
        obs: &Observation<'_>,
        call: &HttpCall,
        who: Arc<Who>,
        service: &str,
        peer: Option<(IpAddr, u16)>,
        folded: &mut Vec<Counter>,
    ) -> (Histogram, Series) {
        let admitted = state.routes.admit(service, route::template(&call.path));
        if admitted.overflowed {
            folded.push(self.overflowed(Budget::Route));
        }
        let status = match call.status {
            0 => StatusLabel::None,
            code => match state.statuses.admit(service, &code, || code) {
                Some(_) => StatusLabel::Code(code),
                None => {
                    folded.push(self.overflowed(Budget::Status));
                    StatusLabel::Overflow
                }
            },
        };
        let error_threshold = match obs.side {
            Side::Server => 500,
            Side::Client => 400,
        };
        let error_type = match obs.failure {
            Some(failure) => ErrorType::Failure(failure),
            None if call.status >= error_threshold => ErrorType::Status(status),
            None => ErrorType::None,
        };
        let common = ServerLabels {
            who,
            method: normalize_method(&call.method),
            status,
            route: admitted.route,
            error_type,
        };
        match obs.side {
            Side::Server => (
                self.server.get_or_create_owned(&common),
                Series::Server(common),
            ),
            Side::Client => {
                let labels = ClientLabels {
                    common,
                    peer: self.peer_label(state, service, peer, folded),
                    callee: obs.peer_service.cloned(),
                };
                (
                    self.client.get_or_create_owned(&labels),
                    Series::Client(labels),
                )
            }
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the parts of one observation")]
    fn rpc_series(
        &self,
        state: &mut State,
        obs: &Observation<'_>,
        call: &GrpcCall,
        who: Arc<Who>,
        service: &str,
        peer: Option<(IpAddr, u16)>,
        folded: &mut Vec<Counter>,
    ) -> (Histogram, Series) {
        // The slow path: allocating the key here costs nothing per request.
        let key: (Arc<str>, Arc<str>) = (Arc::from(&*call.service), Arc::from(&*call.method));
        let admitted = state
            .rpc_methods
            .admit(service, &key, || key.clone())
            .cloned();
        let (rpc_service, rpc_method) = admitted.unwrap_or_else(|| {
            folded.push(self.overflowed(Budget::RpcMethod));
            (state.overflow_value.clone(), state.overflow_value.clone())
        });
        let status = match call.status {
            None => GrpcStatus::None,
            Some(code) if code <= MAX_GRPC_STATUS => GrpcStatus::Code(code),
            Some(_) => GrpcStatus::Overflow,
        };
        let error_type = obs.failure.map_or(ErrorType::None, ErrorType::Failure);
        let mut labels = RpcLabels {
            who,
            service: rpc_service,
            method: rpc_method,
            status,
            error_type,
            peer: None,
        };
        match obs.side {
            Side::Server => (
                self.rpc_server.get_or_create_owned(&labels),
                Series::RpcServer(labels),
            ),
            Side::Client => {
                let peer = self.peer_label(state, service, peer, folded);
                labels.peer = Some((peer, obs.peer_service.cloned()));
                (
                    self.rpc_client.get_or_create_owned(&labels),
                    Series::RpcClient(labels),
                )
            }
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the parts of one observation")]
    fn db_series(
        &self,
        state: &mut State,
        obs: &Observation<'_>,
        call: &DbCall,
        who: Arc<Who>,
        service: &str,
        peer: Option<(IpAddr, u16)>,
        folded: &mut Vec<Counter>,
    ) -> (Histogram, Series) {
        let overflow = state.overflow_value.clone();
        let mut admit = |budget: &mut KeyBudget<Arc<str>>, which: Budget, value: &str| {
            budget
                .admit(service, value, || Arc::from(value))
                .cloned()
                .unwrap_or_else(|| {
                    folded.push(self.overflowed(which));
                    overflow.clone()
                })
        };
        let operation = admit(
            &mut state.db_operations,
            Budget::DbOperation,
            &call.operation,
        );
        let collection = call
            .collection
            .as_deref()
            .map(|c| admit(&mut state.db_collections, Budget::DbCollection, c));
        let error_type = match (obs.failure, &call.error) {
            (Some(failure), _) => Arc::from(failure.as_str()),
            (None, Some(code)) => admit(&mut state.db_errors, Budget::DbError, code),
            (None, None) => Arc::from(""),
        };
        let labels = DbLabels {
            who,
            system: call.system.as_str(),
            operation,
            collection,
            error_type,
            peer: self.peer_label(state, service, peer, folded),
            callee: obs.peer_service.cloned(),
        };
        (
            self.db_client.get_or_create_owned(&labels),
            Series::Db(labels),
        )
    }

    /// `server_address`/`server_port` within the service's peer budget.
    fn peer_label(
        &self,
        state: &mut State,
        service: &str,
        peer: Option<(IpAddr, u16)>,
        folded: &mut Vec<Counter>,
    ) -> Peer {
        match peer {
            None => Peer::Unknown,
            Some(p) => {
                if state.peers.admit(service, &p, || p).is_some() {
                    Peer::Known(p.0, p.1)
                } else {
                    folded.push(self.overflowed(Budget::Peer));
                    Peer::Overflow
                }
            }
        }
    }

    /// Drops every series of a deleted pod and frees its identity budget.
    /// Returns how many series went.
    pub fn forget_pod(&self, uid: &str) -> usize {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .whos
            .retain(|identity, _| identity.pod.as_ref().is_none_or(|p| &*p.uid != uid));
        let Some(series) = state.by_pod.remove(uid) else {
            return 0;
        };
        // Cached entries hold the removed histograms: start afresh.
        state.cache.iter_mut().for_each(|slot| *slot = None);
        let mut removed = 0;
        for s in &series {
            let gone = match s {
                Series::Server(labels) => {
                    self.server_size.remove(labels);
                    self.server.remove(labels)
                }
                Series::Client(labels) => {
                    self.client_size.remove(labels);
                    self.client.remove(labels)
                }
                Series::RpcServer(labels) => self.rpc_server.remove(labels),
                Series::RpcClient(labels) => self.rpc_client.remove(labels),
                Series::Db(labels) => self.db_client.remove(labels),
            };
            removed += usize::from(gone);
        }
        self.series_removed.inc_by(removed as u64);
        removed
    }
}

/// Longest string of a call, for the cache's length cap.
fn call_len(call: &Call) -> usize {
    match call {
        Call::Http(c) => c.path.len().max(c.method.len()),
        Call::Grpc(c) => c.service.len().max(c.method.len()),
        Call::Db(c) => c
            .operation
            .len()
            .max(c.collection.as_ref().map_or(0, String::len))
            .max(c.error.as_ref().map_or(0, String::len)),
    }
}

/// `server_address`, `server_port` and the callee's Service labels.
fn encode_peer(
    encoder: &mut LabelSetEncoder,
    peer: Peer,
    callee: Option<&Arc<PeerService>>,
) -> Result<(), std::fmt::Error> {
    let (address, port) = match peer {
        Peer::Unknown => (String::new(), String::new()),
        Peer::Known(ip, port) => (ip.to_string(), port.to_string()),
        Peer::Overflow => (OVERFLOW.to_string(), OVERFLOW.to_string()),
    };
    ("server_address", address.as_str()).encode(encoder.encode_label())?;
    ("server_port", port.as_str()).encode(encoder.encode_label())?;
    if let Some(callee) = callee {
        ("server_service_name", &*callee.name).encode(encoder.encode_label())?;
        ("server_service_namespace", &*callee.namespace).encode(encoder.encode_label())?;
    }
    Ok(())
}

/// OpenTelemetry's method normalisation: known methods as is, else `_OTHER`.
pub fn normalize_method(method: &str) -> &'static str {
    KNOWN_METHODS
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::Metrics;
    use crate::export::route::OVERFLOW_ROUTE;
    use crate::testutil::{encoded, sample};
    use std::net::Ipv4Addr;

    /// A process outside any pod, named `name`; leaked, as tests keep
    /// their identities for the whole run anyway.
    fn process(name: &str) -> &'static Arc<Identity> {
        Box::leak(Box::new(Arc::new(Identity {
            exe: Arc::from(name),
            service_name: Arc::from(name),
            container_id: None,
            partial: false,
            pod: None,
        })))
    }

    static SHOP: std::sync::LazyLock<Arc<Identity>> =
        std::sync::LazyLock::new(|| process("shop").clone());

    /// A call that lives for the test run, so observations can borrow it.
    fn leak(call: Call) -> &'static Call {
        Box::leak(Box::new(call))
    }

    fn obs(side: Side, method: &str, status: u16, path: &str) -> Observation<'static> {
        Observation {
            side,
            identity: &SHOP,
            call: leak(Call::Http(HttpCall {
                method: method.to_owned(),
                path: path.to_owned(),
                status,
            })),
            failure: None,
            duration_s: 0.02,
            peer: Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 8080)),
            peer_service: None,
            response_body_bytes: None,
        }
    }

    #[test]
    fn response_body_sizes_share_the_duration_labels() {
        let m = Metrics::new(10);
        let pod = in_pod("a", None);
        for (side, bytes) in [
            (Side::Server, 100),
            (Side::Server, 5000),
            (Side::Server, 5000),
            (Side::Client, 2 << 20),
        ] {
            let mut o = obs(side, "GET", 200, "/f/1");
            o.identity = &pod;
            o.response_body_bytes = Some(bytes);
            m.observe(&o);
        }
        // A request that got no response has no size.
        let mut failed = obs(Side::Server, "GET", 0, "/f/1");
        failed.identity = &pod;
        failed.failure = Some(Failure::Timeout);
        m.observe(&failed);
        let text = encoded(&m);
        assert!(text.contains("# UNIT http_server_response_body_size_bytes bytes"));
        let size = |family: &str, what: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{family}_{what}")))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        };
        let server = "http_server_response_body_size_bytes";
        assert_eq!(size(server, "sum"), [10100.0], "{text}");
        assert_eq!(size(server, "count"), [3.0], "{text}");
        let le_4096 = text
            .lines()
            .find(|l| l.starts_with(&format!("{server}_bucket{{le=\"4096.0\"")))
            .unwrap();
        assert!(le_4096.ends_with(" 1"), "{le_4096}");
        let client = "http_client_response_body_size_bytes";
        assert_eq!(size(client, "sum"), [2097152.0], "{text}");
        // Sizes go with their pod.
        assert_eq!(m.calls.forget_pod("uid-a"), 3);
        assert!(!encoded(&m).contains("response_body_size_bytes_count"));
    }

    #[test]
    fn server_histogram_names_labels_and_buckets() {
        let m = Metrics::new(100);
        m.observe(&obs(Side::Server, "GET", 200, "/users/123"));
        let text = encoded(&m);
        assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
        assert!(text.contains("# UNIT http_server_request_duration_seconds seconds"));
        let labels = r#"service_name="shop",http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",error_type="""#;
        for le in [
            "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5",
            "5.0", "7.5", "10.0",
        ] {
            let series =
                format!("http_server_request_duration_seconds_bucket{{le=\"{le}\",{labels}}}");
            let want = if le == "0.005" || le == "0.01" {
                0.0
            } else {
                1.0
            };
            assert_eq!(sample(&text, &series), Some(want), "{series}\n{text}");
        }
        let inf = format!("http_server_request_duration_seconds_bucket{{le=\"+Inf\",{labels}}}");
        assert_eq!(sample(&text, &inf), Some(1.0));
        let count = format!("http_server_request_duration_seconds_count{{{labels}}}");
        assert_eq!(sample(&text, &count), Some(1.0));
        // Server observations carry no peer labels.
        assert!(!text
            .lines()
            .any(|l| l.starts_with("http_server") && l.contains("server_address")));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn client_histogram_has_peer_labels() {
        let m = Metrics::new(100);
        m.observe(&obs(Side::Client, "POST", 201, "/orders"));
        let text = encoded(&m);
        let series = r#"http_client_request_duration_seconds_count{service_name="shop",http_request_method="POST",http_response_status_code="201",http_route="/orders",error_type="",server_address="10.0.0.7",server_port="8080"}"#;
        assert_eq!(sample(&text, series), Some(1.0), "{text}");
        assert!(text.contains("# TYPE http_client_request_duration_seconds histogram"));
    }

    #[test]
    fn error_type_semantics() {
        let m = Metrics::new(100);
        for (side, status) in [
            (Side::Server, 404),
            (Side::Server, 500),
            (Side::Server, 503),
            (Side::Client, 399),
            (Side::Client, 404),
            (Side::Client, 502),
        ] {
            m.observe(&obs(side, "GET", status, "/x"));
        }
        let text = encoded(&m);
        let has = |hist: &str, status: u16, err: &str| {
            text.lines().any(|l| {
                l.starts_with(&format!("{hist}_count{{"))
                    && l.contains(&format!("http_response_status_code=\"{status}\""))
                    && l.contains(&format!("error_type=\"{err}\""))
            })
        };
        let server = "http_server_request_duration_seconds";
        let client = "http_client_request_duration_seconds";
        assert!(has(server, 404, ""));
        assert!(has(server, 500, "500"));
        assert!(has(server, 503, "503"));
        assert!(has(client, 399, ""));
        assert!(has(client, 404, "404"));
        assert!(has(client, 502, "502"));
    }

    #[test]
    fn method_normalisation() {
        for m in KNOWN_METHODS {
            assert_eq!(normalize_method(m), m);
        }
        assert_eq!(normalize_method("get"), "_OTHER");
        assert_eq!(normalize_method("PROPFIND"), "_OTHER");
        assert_eq!(normalize_method(""), "_OTHER");

        let m = Metrics::new(100);
        m.observe(&obs(Side::Server, "BREW", 200, "/pot"));
        assert!(encoded(&m).contains(r#"http_request_method="_OTHER""#));
    }

    #[test]
    fn route_overflow_folds_and_counts() {
        let m = Metrics::new(2);
        for path in ["/a", "/b", "/c", "/d", "/c", "/a"] {
            m.observe(&obs(Side::Server, "GET", 200, path));
        }
        let text = encoded(&m);
        let count = |route: &str| {
            sample(
                &text,
                &format!(
                    r#"http_server_request_duration_seconds_count{{service_name="shop",http_request_method="GET",http_response_status_code="200",http_route="{route}",error_type=""}}"#
                ),
            )
        };
        assert_eq!(count("/a"), Some(2.0));
        assert_eq!(count("/b"), Some(1.0));
        assert_eq!(count(OVERFLOW_ROUTE), Some(3.0));
        assert_eq!(count("/c"), None);
        assert_eq!(
            sample(&text, r#"tracer_label_overflow_total{label="http_route"}"#),
            Some(3.0),
            "{text}"
        );
    }

    #[test]
    fn peer_overflow_folds_to_other() {
        let m = Metrics::with_limits(
            Limits {
                max_peers_per_service: 1,
                ..Limits::with_routes(10)
            },
            false,
        );
        for port in [80, 81, 82] {
            let mut o = obs(Side::Client, "GET", 200, "/");
            o.peer = Some((IpAddr::V4(Ipv4Addr::LOCALHOST), port));
            m.observe(&o);
        }
        let text = encoded(&m);
        assert!(text.contains(r#"server_address="127.0.0.1",server_port="80""#));
        assert!(
            text.contains(r#"server_address="_other",server_port="_other"} 2"#),
            "{text}"
        );
        assert!(!text.contains(r#"server_port="81""#));
    }

    #[test]
    fn unknown_peer_has_empty_labels() {
        let m = Metrics::new(10);
        let mut o = obs(Side::Client, "GET", 200, "/");
        o.peer = None;
        m.observe(&o);
        assert!(encoded(&m).contains(r#"server_address="",server_port="""#));
    }

    #[test]
    fn ipv4_mapped_peer_is_canonical() {
        let m = Metrics::new(10);
        let mut o = obs(Side::Client, "GET", 200, "/");
        o.peer = Some((IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()), 443));
        m.observe(&o);
        assert!(encoded(&m).contains(r#"server_address="10.1.2.3",server_port="443""#));
    }

    #[test]
    fn services_beyond_budget_share_overflow() {
        let m = Metrics::with_limits(
            Limits {
                max_services: 1,
                ..Limits::with_routes(10)
            },
            false,
        );
        let mut o = obs(Side::Server, "GET", 200, "/a");
        m.observe(&o);
        o.identity = process("late");
        m.observe(&o);
        let text = encoded(&m);
        // Past the service budget, every budgeted label folds.
        assert!(text.contains(r#"service_name="late",http_request_method="GET",http_response_status_code="_other",http_route="/**""#), "{text}");
        for label in ["http_route", "http_response_status_code"] {
            let series = format!(r#"tracer_label_overflow_total{{label="{label}"}}"#);
            assert_eq!(sample(&text, &series), Some(1.0), "{series}");
        }
    }

    #[test]
    fn cache_hits_and_collisions_keep_counts_right() {
        let m = Metrics::new(10_000);
        // More distinct raw paths than cache slots forces replacements; all
        // of them template to one route, so one series holds every count.
        for _ in 0..3 {
            for i in 0..(CACHE_SLOTS + 100) {
                let path = format!("/users/{i}");
                m.observe(&obs(Side::Server, "GET", 200, &path));
            }
            m.observe(&obs(Side::Server, "GET", 200, "/users"));
        }
        let text = encoded(&m);
        let count = |route: &str| {
            sample(
                &text,
                &format!(
                    r#"http_server_request_duration_seconds_count{{service_name="shop",http_request_method="GET",http_response_status_code="200",http_route="{route}",error_type=""}}"#
                ),
            )
        };
        assert_eq!(count("/users/{id}"), Some((3 * (CACHE_SLOTS + 100)) as f64));
        assert_eq!(count("/users"), Some(3.0));
    }

    #[test]
    fn bad_durations_are_zero() {
        let m = Metrics::new(10);
        for d in [f64::NAN, -1.0, f64::INFINITY] {
            let mut o = obs(Side::Server, "GET", 200, "/");
            o.duration_s = d;
            m.observe(&o);
        }
        let text = encoded(&m);
        assert!(text.contains(
            r#"http_server_request_duration_seconds_sum{service_name="shop",http_request_method="GET",http_response_status_code="200",http_route="/",error_type=""} 0.0"#
        ), "{text}");
    }

    fn in_pod(pod: &str, owner: Option<(&str, &str)>) -> Arc<Identity> {
        use crate::metadata::{Owner, PodIdentity};
        Arc::new(Identity {
            exe: Arc::from("python3.11"),
            service_name: Arc::from("web"),
            container_id: Some(Arc::from("abc")),
            partial: false,
            pod: Some(Arc::new(PodIdentity {
                uid: Arc::from(format!("uid-{pod}").as_str()),
                namespace: Arc::from("shop"),
                name: Arc::from(pod),
                node: Arc::from("node-a"),
                container: Some(Arc::from("app")),
                owner: owner.map(|(kind, name)| Owner {
                    kind: Arc::from(kind),
                    name: Arc::from(name),
                }),
                service_namespace: Arc::from("shop"),
            })),
        })
    }

    #[test]
    fn pod_identity_labels_and_callee() {
        let m = Metrics::new(10);
        let web = in_pod("web-1", Some(("Deployment", "web")));
        let callee = Arc::new(PeerService {
            name: Arc::from("db"),
            namespace: Arc::from("data"),
        });
        let mut o = obs(Side::Server, "GET", 200, "/a");
        o.identity = &web;
        m.observe(&o);
        o.side = Side::Client;
        o.peer_service = Some(&callee);
        m.observe(&o);
        let text = encoded(&m);
        let who = r#"service_name="web",service_namespace="shop",k8s_namespace_name="shop",k8s_pod_name="web-1",k8s_container_name="app",k8s_node_name="node-a",k8s_owner_name="web",k8s_deployment_name="web""#;
        let server = format!(
            r#"http_server_request_duration_seconds_count{{{who},http_request_method="GET",http_response_status_code="200",http_route="/a",error_type=""}}"#
        );
        assert_eq!(sample(&text, &server), Some(1.0), "{text}");
        let client = format!(
            r#"http_client_request_duration_seconds_count{{{who},http_request_method="GET",http_response_status_code="200",http_route="/a",error_type="",server_address="10.0.0.7",server_port="8080",server_service_name="db",server_service_namespace="data"}}"#
        );
        assert_eq!(sample(&text, &client), Some(1.0), "{text}");
        // A bare pod's owner is itself; no workload-kind label.
        let bare = in_pod("debug", None);
        let mut o = obs(Side::Server, "GET", 200, "/b");
        o.identity = &bare;
        m.observe(&o);
        let text = encoded(&m);
        assert!(text.contains(r#"k8s_pod_name="debug",k8s_container_name="app",k8s_node_name="node-a",k8s_owner_name="debug",http_request_method"#), "{text}");
    }

    #[test]
    fn failures_have_no_status_and_their_error_type() {
        let m = Metrics::new(10);
        for (side, failure) in [
            (Side::Server, Failure::Timeout),
            (Side::Client, Failure::ConnectionClosed),
        ] {
            let mut o = obs(side, "GET", 0, "/slow");
            o.failure = Some(failure);
            m.observe(&o);
        }
        let text = encoded(&m);
        assert!(text.contains(r#"http_server_request_duration_seconds_count{service_name="shop",http_request_method="GET",http_response_status_code="",http_route="/slow",error_type="timeout"} 1"#), "{text}");
        assert!(text.contains(r#"http_response_status_code="",http_route="/slow",error_type="connection_closed",server_address"#), "{text}");
    }

    #[test]
    fn forgetting_a_pod_drops_its_series_and_frees_its_budget() {
        let m = Metrics::with_limits(
            Limits {
                max_identities: 1,
                ..Limits::with_routes(10)
            },
            false,
        );
        let (a, b) = (in_pod("a", None), in_pod("b", None));
        for path in ["/x", "/y"] {
            let mut o = obs(Side::Server, "GET", 200, path);
            o.identity = &a;
            m.observe(&o);
        }
        // Past the identity budget, b folds into _other.
        let mut o = obs(Side::Server, "GET", 200, "/x");
        o.identity = &b;
        m.observe(&o);
        let text = encoded(&m);
        assert!(
            text.contains(r#"{service_name="_other",http_request_method="GET""#),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"tracer_label_overflow_total{label="service_name"}"#
            ),
            Some(1.0)
        );
        assert_eq!(m.calls.forget_pod("uid-a"), 2);
        assert_eq!(m.calls.forget_pod("uid-a"), 0);
        let text = encoded(&m);
        assert!(!text.contains(r#"k8s_pod_name="a""#), "{text}");
        assert_eq!(sample(&text, "tracer_series_removed_total"), Some(2.0));
        // The freed slot goes to b now.
        m.observe(&o);
        assert!(encoded(&m).contains(r#"k8s_pod_name="b""#));
    }

    #[test]
    fn status_codes_are_budgeted_per_service() {
        let m = Metrics::new(10);
        for code in 100..(100 + MAX_STATUS_CODES_PER_SERVICE as u16 + 3) {
            m.observe(&obs(Side::Server, "GET", code, "/s"));
        }
        let text = encoded(&m);
        assert!(
            text.contains(r#"http_response_status_code="_other",http_route="/s",error_type=""} 3"#),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"tracer_label_overflow_total{label="http_response_status_code"}"#
            ),
            Some(3.0)
        );
    }

    fn db(operation: &str, collection: Option<&str>, error: Option<&str>) -> Observation<'static> {
        Observation {
            call: leak(Call::Db(DbCall {
                system: crate::protocols::DbSystem::Postgres,
                operation: operation.to_owned(),
                collection: collection.map(str::to_owned),
                error: error.map(str::to_owned),
            })),
            ..obs(Side::Client, "", 0, "")
        }
    }

    fn grpc(side: Side, method: &str, status: Option<u32>) -> Observation<'static> {
        Observation {
            call: leak(Call::Grpc(GrpcCall {
                service: "shop.Cart".to_owned(),
                method: method.to_owned(),
                status,
            })),
            ..obs(side, "", 0, "")
        }
    }

    #[test]
    fn database_operations_have_their_own_family_and_labels() {
        let m = Metrics::new(10);
        m.observe(&db("SELECT", Some("accounts"), None));
        m.observe(&db("SELECT", Some("accounts"), None));
        m.observe(&db("INSERT", None, Some("23505")));
        let mut timed_out = db("UPDATE", Some("accounts"), None);
        timed_out.failure = Some(Failure::Timeout);
        m.observe(&timed_out);
        let text = encoded(&m);
        let series = |op: &str, table: &str, err: &str| {
            format!(
                "db_client_operation_duration_seconds_count{{service_name=\"shop\",\
                 db_system_name=\"postgresql\",db_operation_name=\"{op}\",\
                 db_collection_name=\"{table}\",error_type=\"{err}\",\
                 server_address=\"10.0.0.7\",server_port=\"8080\"}}"
            )
        };
        assert_eq!(
            sample(&text, &series("SELECT", "accounts", "")),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &series("INSERT", "", "23505")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &series("UPDATE", "accounts", "timeout")),
            Some(1.0),
            "{text}"
        );
        assert!(
            !text.contains("http_client_request_duration_seconds_count{"),
            "{text}"
        );
        // A database server's own side is not a family of its own.
        let mut server_side = db("SELECT", None, None);
        server_side.side = Side::Server;
        m.observe(&server_side);
        assert_eq!(
            encoded(&m)
                .matches("db_client_operation_duration_seconds_count{")
                .count(),
            3
        );
    }

    #[test]
    fn database_labels_are_budgeted() {
        let m = Metrics::new(2);
        for table in ["a", "b", "c", "d"] {
            m.observe(&db("SELECT", Some(table), None));
        }
        for n in 0..MAX_DB_OPERATIONS_PER_SERVICE + 1 {
            m.observe(&db(&format!("OP{n}"), None, None));
        }
        let text = encoded(&m);
        let overflow = |label: &str| {
            sample(
                &text,
                &format!("tracer_label_overflow_total{{label=\"{label}\"}}"),
            )
        };
        assert_eq!(overflow("db_collection_name"), Some(2.0), "{text}");
        // SELECT and 65 more: two past the 64.
        assert_eq!(overflow("db_operation_name"), Some(2.0), "{text}");
        assert!(text.contains(r#"db_collection_name="_other""#));
    }

    #[test]
    fn grpc_calls_are_rpc_series_not_http() {
        let m = Metrics::new(10);
        m.observe(&grpc(Side::Server, "Add", Some(0)));
        m.observe(&grpc(Side::Server, "Add", Some(5)));
        m.observe(&grpc(Side::Client, "Add", None));
        m.observe(&grpc(Side::Server, "Add", Some(99)));
        let text = encoded(&m);
        let server = |status: &str| {
            format!(
                "rpc_server_duration_seconds_count{{service_name=\"shop\",rpc_system=\"grpc\",\
                 rpc_service=\"shop.Cart\",rpc_method=\"Add\",rpc_grpc_status_code=\"{status}\",\
                 error_type=\"\"}}"
            )
        };
        assert_eq!(sample(&text, &server("0")), Some(1.0), "{text}");
        assert_eq!(sample(&text, &server("5")), Some(1.0), "{text}");
        assert_eq!(sample(&text, &server("_other")), Some(1.0), "{text}");
        let client = "rpc_client_duration_seconds_count{service_name=\"shop\",rpc_system=\"grpc\",\
                      rpc_service=\"shop.Cart\",rpc_method=\"Add\",rpc_grpc_status_code=\"\",\
                      error_type=\"\",server_address=\"10.0.0.7\",server_port=\"8080\"}";
        assert_eq!(sample(&text, client), Some(1.0), "{text}");
        assert!(
            !text.contains("http_server_request_duration_seconds_count{"),
            "{text}"
        );
    }

    #[test]
    fn forgetting_a_pod_drops_its_rpc_and_db_series_too() {
        let m = Metrics::new(10);
        let a = in_pod("a", None);
        for mut o in [grpc(Side::Server, "Add", Some(0)), db("GET", None, None)] {
            o.identity = &a;
            m.observe(&o);
        }
        assert_eq!(m.calls.forget_pod("uid-a"), 2);
        assert!(!encoded(&m).contains(r#"k8s_pod_name="a""#));
    }
}
