//! Every Prometheus metric the daemon exports, in OpenMetrics text.
//!
//! Input: finished HTTP exchanges (as [`HttpObservation`]) and loss/anomaly
//! counts from the ingest, conntrack, reassembly and protocol stages, plus the
//! kernel's loss counters read from the eBPF `STATS` map. Output: the text
//! `server` returns on `GET /metrics` ([`Metrics::encode`]).
//!
//! Application metrics use the OpenTelemetry semantic-convention names the way
//! Grafana Beyla exports them to Prometheus, so existing dashboards work:
//!
//! - `http_server_request_duration_seconds` (histogram; the traced process
//!   served the request), labels `service_name`, `http_request_method`,
//!   `http_response_status_code`, `http_route`, `error_type`;
//! - `http_client_request_duration_seconds` (histogram; the traced process sent
//!   the request), the same labels plus `server_address` and `server_port`.
//!
//! Buckets are the OpenTelemetry default duration buckets
//! ([`DURATION_BUCKETS`]). `http_request_method` is the method if it is one of
//! the nine standard ones (case-sensitive, as OpenTelemetry specifies) and
//! `_OTHER` otherwise. `error_type` is the status code when the exchange
//! failed in OpenTelemetry's sense (server: >= 500, client: >= 400) and empty
//! otherwise. `http_route` is the path through [`route::template`] and a
//! per-service [`RouteBudget`]; the peer (`server_address`, `server_port`)
//! goes through a per-service budget too and folds into [`OVERFLOW_PEER`];
//! an unknown peer has both labels empty. Services beyond the service budget
//! keep their `service_name` but get [`route::OVERFLOW_ROUTE`] and [`OVERFLOW_PEER`]
//! for everything, so memory stays bounded whatever the traffic.
//!
//! Internal metrics (prefix `tracer_`) count what the pipeline saw and lost;
//! see the HELP texts in [`Metrics::new`].

use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use thiserror::Error;

use crate::protocols::Side;
use crate::route::{self, KeyBudget, RouteBudget};

/// OpenTelemetry's default explicit bucket boundaries for durations, seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Services that get a route and peer budget; later ones share the overflow
/// values.
pub const DEFAULT_MAX_SERVICES: usize = 512;

/// Distinct (address, port) peers per service on the client histogram.
pub const DEFAULT_MAX_PEERS_PER_SERVICE: usize = 64;

/// `server_address` and `server_port` of peers beyond the budget.
pub const OVERFLOW_PEER: &str = "_other";

/// The methods OpenTelemetry knows; anything else is reported as `_OTHER`.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Slots of the direct-mapped cache of resolved label sets. A slot holds one
/// entry of at most a few hundred bytes, so the cache stays around 1 MiB.
const CACHE_SLOTS: usize = 4096;

/// Longer paths (or service names, methods) skip the cache: they are rare, and
/// caching them would let one request pin that much memory per slot.
const MAX_CACHED_LEN: usize = 256;

/// Kernel stat whose value goes to `tracer_truncated_events_total` rather than
/// `tracer_kernel_drops_total` (a truncated chunk is not a lost event).
const TRUNCATED_STAT: &str = "truncated";

/// Drop causes the daemon reports, created at zero so dashboards see them.
const USER_DROP_CAUSES: [&str; 4] = [
    "conn_evicted",
    "unknown_conn",
    "decode_error",
    "stream_overlap",
];

/// Encoding the registry failed (only possible if a metric is malformed).
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("encoding metrics as OpenMetrics text failed")]
    Encode(#[from] std::fmt::Error),
}

/// What the ring-buffer reader decoded, for `tracer_events_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Data,
    Open,
    Close,
    ProcessExit,
}

impl EventKind {
    const ALL: [EventKind; 4] = [Self::Data, Self::Open, Self::Close, Self::ProcessExit];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Open => "open",
            Self::Close => "close",
            Self::ProcessExit => "process_exit",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Data => 0,
            Self::Open => 1,
            Self::Close => 2,
            Self::ProcessExit => 3,
        }
    }
}

/// One finished HTTP exchange, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct HttpObservation<'a> {
    /// Which end the traced process was: picks the server or client histogram.
    pub side: Side,
    pub service: &'a str,
    /// As sent on the wire; normalised here.
    pub method: &'a str,
    pub status: u16,
    /// Raw request path (query removed); templated here.
    pub path: &'a str,
    /// Negative or non-finite values are recorded as 0.
    pub duration_s: f64,
    /// The remote end; used for the client histogram only.
    pub peer: Option<(IpAddr, u16)>,
}

/// `server_address` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerAddr {
    Unknown,
    Ip(IpAddr),
    Overflow,
}

impl EncodeLabelValue for PeerAddr {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self {
            Self::Unknown => Ok(()),
            Self::Ip(ip) => write!(encoder, "{ip}"),
            Self::Overflow => encoder.write_str(OVERFLOW_PEER),
        }
    }
}

/// `server_port` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerPort {
    Unknown,
    Port(u16),
    Overflow,
}

impl EncodeLabelValue for PeerPort {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self {
            Self::Unknown => Ok(()),
            Self::Port(port) => write!(encoder, "{port}"),
            Self::Overflow => encoder.write_str(OVERFLOW_PEER),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServerLabels {
    service_name: Arc<str>,
    http_request_method: &'static str,
    http_response_status_code: u16,
    http_route: Arc<str>,
    /// `None` encodes as the empty string.
    error_type: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClientLabels {
    service_name: Arc<str>,
    http_request_method: &'static str,
    http_response_status_code: u16,
    http_route: Arc<str>,
    error_type: Option<u16>,
    server_address: PeerAddr,
    server_port: PeerPort,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UnmatchedLabel {
    protocol: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabel {
    service_name: Arc<str>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A resolved observation: the histogram series its labels map to. Stores the
/// raw inputs so a hit is a comparison, not a templating + label lookup.
#[derive(Debug)]
struct CacheEntry {
    side: Side,
    service: Box<str>,
    method: Box<str>,
    status: u16,
    path: Box<str>,
    peer: Option<(IpAddr, u16)>,
    histogram: Histogram,
    /// Set when the route was folded: each observation counts as a fold.
    overflow: Option<Counter>,
}

impl CacheEntry {
    fn matches(&self, obs: &HttpObservation<'_>, peer: Option<(IpAddr, u16)>) -> bool {
        self.side == obs.side
            && self.status == obs.status
            && self.peer == peer
            && *self.path == *obs.path
            && *self.method == *obs.method
            && *self.service == *obs.service
    }
}

/// Everything `observe_http` mutates, behind one lock.
#[derive(Debug)]
struct HttpState {
    routes: RouteBudget,
    peers: KeyBudget<(IpAddr, u16)>,
    /// Direct-mapped: a colliding observation replaces the slot, so the cache
    /// never grows and hot entries win back their slot on the next miss.
    cache: Vec<Option<CacheEntry>>,
}

/// All metrics of the daemon, with the registry that encodes them.
///
/// Every method takes `&self`; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    server: HistogramFamily<ServerLabels>,
    client: HistogramFamily<ClientLabels>,
    route_overflow: Family<ServiceLabel, Counter>,
    events: [Counter; 4],
    event_bytes: Counter,
    kernel_drops: Family<CauseLabel, Counter>,
    truncated: Counter,
    user_drops: Family<CauseLabel, Counter>,
    resyncs: Family<ProtocolLabel, Counter>,
    unmatched: Family<UnmatchedLabel, Counter>,
    gaps: Counter,
    gap_bytes: Counter,
    connections: Gauge,
    evictions: Counter,
    late_events: Counter,
    http: Mutex<HttpState>,
}

impl Metrics {
    /// Metrics with a budget of `max_routes_per_service` routes, and the
    /// default service and peer budgets.
    pub fn new(max_routes_per_service: usize) -> Self {
        Self::with_limits(
            max_routes_per_service,
            DEFAULT_MAX_SERVICES,
            DEFAULT_MAX_PEERS_PER_SERVICE,
        )
    }

    /// Metrics with explicit cardinality budgets.
    pub fn with_limits(
        max_routes_per_service: usize,
        max_services: usize,
        max_peers_per_service: usize,
    ) -> Self {
        let mut registry = Registry::default();

        let server = HistogramFamily::<ServerLabels>::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP requests served by traced processes, from the first request byte \
             to the end of the response",
            Unit::Seconds,
            server.clone(),
        );
        let client = HistogramFamily::<ClientLabels>::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP requests sent by traced processes, from the first request byte to \
             the end of the response",
            Unit::Seconds,
            client.clone(),
        );

        let events_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "tracer_events",
            "Events read from the kernel ring buffer, by kind",
            events_family.clone(),
        );
        let events = EventKind::ALL
            .map(|k| events_family.get_or_create_owned(&KindLabel { kind: k.as_str() }));

        let event_bytes = Counter::default();
        registry.register_with_unit(
            "tracer_event",
            "Bytes of the records read from the kernel ring buffer, headers included",
            Unit::Bytes,
            event_bytes.clone(),
        );

        let kernel_drops = Family::<CauseLabel, Counter>::default();
        registry.register(
            "tracer_kernel_drops",
            "Events or connections the kernel side lost, by cause (read from the eBPF stats map)",
            kernel_drops.clone(),
        );
        for name in tracer_common::stat::NAMES {
            if name != TRUNCATED_STAT {
                // Created at zero so dashboards see every cause before a loss.
                let _ = kernel_drops.get_or_create(&CauseLabel { cause: name });
            }
        }

        let truncated = Counter::default();
        registry.register(
            "tracer_truncated_events",
            "Data events whose payload exceeded the capture limit; the rest became a stream gap",
            truncated.clone(),
        );

        let user_drops = Family::<CauseLabel, Counter>::default();
        registry.register(
            "tracer_user_drops",
            "Events or connections the daemon discarded, by cause",
            user_drops.clone(),
        );
        for cause in USER_DROP_CAUSES {
            let _ = user_drops.get_or_create(&CauseLabel { cause });
        }

        let resyncs = Family::<ProtocolLabel, Counter>::default();
        registry.register(
            "tracer_parser_resyncs",
            "Times a protocol parser skipped malformed or missing input to find the next message",
            resyncs.clone(),
        );
        let unmatched = Family::<UnmatchedLabel, Counter>::default();
        registry.register(
            "tracer_unmatched",
            "Requests without a response, or responses without a request, by protocol",
            unmatched.clone(),
        );

        let gaps = Counter::default();
        registry.register(
            "tracer_stream_gaps",
            "Runs of stream bytes that passed without being captured",
            gaps.clone(),
        );
        let gap_bytes = Counter::default();
        registry.register_with_unit(
            "tracer_stream_gap",
            "Stream bytes that passed without being captured",
            Unit::Bytes,
            gap_bytes.clone(),
        );

        let connections = Gauge::default();
        registry.register(
            "tracer_connections",
            "Connections currently tracked by the daemon",
            connections.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "tracer_connection_evictions",
            "Tracked connections evicted to make room for new ones",
            evictions.clone(),
        );
        let late_events = Counter::default();
        registry.register(
            "tracer_late_events",
            "Events that reached the daemon after a younger event of another CPU (a CPU stalled past the 2 ms hold-back, or CPUs sharing one of the 16 rings)",
            late_events.clone(),
        );
        let route_overflow = Family::<ServiceLabel, Counter>::default();
        registry.register(
            "tracer_http_route_overflow",
            "HTTP observations whose route or peer exceeded the per-service budget and was folded",
            route_overflow.clone(),
        );

        let http = HttpState {
            routes: RouteBudget::new(max_routes_per_service, max_services),
            peers: KeyBudget::new(max_peers_per_service, max_services),
            cache: (0..CACHE_SLOTS).map(|_| None).collect(),
        };

        Self {
            registry,
            server,
            client,
            route_overflow,
            events,
            event_bytes,
            kernel_drops,
            truncated,
            user_drops,
            resyncs,
            unmatched,
            gaps,
            gap_bytes,
            connections,
            evictions,
            late_events,
            http: Mutex::new(http),
        }
    }

    /// Records one exchange: templates the path, applies the budgets, and
    /// observes the duration. A repeated (side, service, method, status, path,
    /// peer) is served from a cache without allocating.
    pub fn observe_http(&self, obs: &HttpObservation<'_>) {
        let duration = if obs.duration_s.is_finite() && obs.duration_s > 0.0 {
            obs.duration_s
        } else {
            0.0
        };
        // The server histogram has no peer labels: ignoring the peer there
        // lets all clients of one route share a cache entry.
        let peer = match obs.side {
            Side::Client => obs.peer.map(|(ip, port)| (ip.to_canonical(), port)),
            Side::Server => None,
        };

        let mut state = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = (obs.path.len() <= MAX_CACHED_LEN
            && obs.service.len() <= MAX_CACHED_LEN
            && obs.method.len() <= MAX_CACHED_LEN)
            .then(|| {
                // Fast and unkeyed: a collision only costs a cache miss,
                // never a lookup chain, so hostile paths slow nothing down.
                let hash = FxBuildHasher.hash_one((
                    obs.side,
                    obs.service,
                    obs.method,
                    obs.status,
                    obs.path,
                    peer,
                ));
                // The remainder is below CACHE_SLOTS, so it fits any usize.
                (hash % CACHE_SLOTS as u64) as usize
            });

        if let Some(Some(entry)) = slot.and_then(|s| state.cache.get(s)) {
            if entry.matches(obs, peer) {
                entry.histogram.observe(duration);
                if let Some(counter) = &entry.overflow {
                    counter.inc();
                }
                return;
            }
        }

        let (histogram, overflow) = self.resolve(&mut state, obs, peer);
        histogram.observe(duration);
        if let Some(counter) = &overflow {
            counter.inc();
        }
        if let Some(cached) = slot.and_then(|s| state.cache.get_mut(s)) {
            *cached = Some(CacheEntry {
                side: obs.side,
                service: obs.service.into(),
                method: obs.method.into(),
                status: obs.status,
                path: obs.path.into(),
                peer,
                histogram,
                overflow,
            });
        }
    }

    /// The slow path: computes the label set and finds (or creates) its series.
    fn resolve(
        &self,
        state: &mut HttpState,
        obs: &HttpObservation<'_>,
        peer: Option<(IpAddr, u16)>,
    ) -> (Histogram, Option<Counter>) {
        let admitted = state.routes.admit(obs.service, route::template(obs.path));
        let service: Arc<str> = Arc::from(obs.service);
        let method = normalize_method(obs.method);
        let status = obs.status;
        let mut folded = admitted.overflowed;

        let histogram = match obs.side {
            Side::Server => self.server.get_or_create_owned(&ServerLabels {
                service_name: Arc::clone(&service),
                http_request_method: method,
                http_response_status_code: status,
                http_route: admitted.route,
                error_type: (status >= 500).then_some(status),
            }),
            Side::Client => {
                let (server_address, server_port) = match peer {
                    None => (PeerAddr::Unknown, PeerPort::Unknown),
                    Some(p) => {
                        if state.peers.admit(obs.service, &p, || p).is_some() {
                            (PeerAddr::Ip(p.0), PeerPort::Port(p.1))
                        } else {
                            folded = true;
                            (PeerAddr::Overflow, PeerPort::Overflow)
                        }
                    }
                };
                self.client.get_or_create_owned(&ClientLabels {
                    service_name: Arc::clone(&service),
                    http_request_method: method,
                    http_response_status_code: status,
                    http_route: admitted.route,
                    error_type: (status >= 400).then_some(status),
                    server_address,
                    server_port,
                })
            }
        };
        let overflow = folded.then(|| {
            self.route_overflow.get_or_create_owned(&ServiceLabel {
                service_name: service,
            })
        });
        (histogram, overflow)
    }

    /// Counts one decoded ring-buffer event and its payload bytes.
    pub fn count_event(&self, kind: EventKind, bytes: u64) {
        self.count_events(kind, 1);
        self.count_event_bytes(bytes);
    }

    /// Adds `n` events of `kind` (for callers that publish batched deltas).
    pub fn count_events(&self, kind: EventKind, n: u64) {
        if let Some(counter) = self.events.get(kind.index()) {
            counter.inc_by(n);
        }
    }

    /// Adds payload bytes carried by data events.
    pub fn count_event_bytes(&self, bytes: u64) {
        self.event_bytes.inc_by(bytes);
    }

    /// Sets the kernel loss counters to the totals read from the stats map
    /// (names from `tracer_common::stat::NAMES`). `truncated` goes to
    /// `tracer_truncated_events_total`, every other name is a `cause` of
    /// `tracer_kernel_drops_total`.
    ///
    /// The values are stored, not added: the kernel keeps the running totals.
    /// They only grow while the maps live, which is the daemon's lifetime, so
    /// the series stay monotonic as OpenMetrics counters must.
    pub fn set_kernel_stats(&self, stats: &[(&'static str, u64)]) {
        use std::sync::atomic::Ordering;
        for &(name, value) in stats {
            if name == TRUNCATED_STAT {
                self.truncated.inner().store(value, Ordering::Relaxed);
            } else {
                self.kernel_drops
                    .get_or_create(&CauseLabel { cause: name })
                    .inner()
                    .store(value, Ordering::Relaxed);
            }
        }
    }

    /// Adds `n` to `tracer_user_drops_total{cause}`.
    pub fn count_user_drop(&self, cause: &'static str, n: u64) {
        self.user_drops
            .get_or_create(&CauseLabel { cause })
            .inc_by(n);
    }

    /// Adds a parser's anomaly counts (usually a `protocols::ParserCounters`
    /// delta) for `protocol`.
    pub fn count_parser(
        &self,
        protocol: &'static str,
        resyncs: u64,
        unmatched_requests: u64,
        unmatched_responses: u64,
    ) {
        self.resyncs
            .get_or_create(&ProtocolLabel { protocol })
            .inc_by(resyncs);
        self.unmatched
            .get_or_create(&UnmatchedLabel {
                protocol,
                kind: "request",
            })
            .inc_by(unmatched_requests);
        self.unmatched
            .get_or_create(&UnmatchedLabel {
                protocol,
                kind: "response",
            })
            .inc_by(unmatched_responses);
    }

    /// Adds stream gaps (count and total bytes) found by reassembly.
    pub fn count_gaps(&self, gaps: u64, gap_bytes: u64) {
        self.gaps.inc_by(gaps);
        self.gap_bytes.inc_by(gap_bytes);
    }

    /// Sets the number of tracked connections.
    pub fn set_connections(&self, n: i64) {
        self.connections.set(n);
    }

    /// Adds `n` connection evictions.
    pub fn count_evictions(&self, n: u64) {
        self.evictions.inc_by(n);
    }

    /// Adds `n` events that came after younger ones.
    pub fn count_late_events(&self, n: u64) {
        self.late_events.inc_by(n);
    }

    /// The registry as OpenMetrics text, ending in `# EOF`.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// OpenTelemetry's method normalisation: known methods as is, else `_OTHER`.
fn normalize_method(method: &str) -> &'static str {
    KNOWN_METHODS
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::OVERFLOW_ROUTE;
    use std::net::Ipv4Addr;

    fn obs<'a>(side: Side, method: &'a str, status: u16, path: &'a str) -> HttpObservation<'a> {
        HttpObservation {
            side,
            service: "shop",
            method,
            status,
            path,
            duration_s: 0.02,
            peer: Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 8080)),
        }
    }

    fn encoded(m: &Metrics) -> String {
        m.encode().expect("encoding never fails for these metrics")
    }

    /// The value of the sample whose line starts with `series` exactly.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn server_histogram_names_labels_and_buckets() {
        let m = Metrics::new(100);
        m.observe_http(&obs(Side::Server, "GET", 200, "/users/123"));
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
        assert!(!text.contains("server_address"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn client_histogram_has_peer_labels() {
        let m = Metrics::new(100);
        m.observe_http(&obs(Side::Client, "POST", 201, "/orders"));
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
            m.observe_http(&obs(side, "GET", status, "/x"));
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
        m.observe_http(&obs(Side::Server, "BREW", 200, "/pot"));
        assert!(encoded(&m).contains(r#"http_request_method="_OTHER""#));
    }

    #[test]
    fn route_overflow_folds_and_counts() {
        let m = Metrics::new(2);
        for path in ["/a", "/b", "/c", "/d", "/c", "/a"] {
            m.observe_http(&obs(Side::Server, "GET", 200, path));
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
            sample(
                &text,
                r#"tracer_http_route_overflow_total{service_name="shop"}"#
            ),
            Some(3.0),
            "{text}"
        );
    }

    #[test]
    fn peer_overflow_folds_to_other() {
        let m = Metrics::with_limits(10, 10, 1);
        for port in [80, 81, 82] {
            let mut o = obs(Side::Client, "GET", 200, "/");
            o.peer = Some((IpAddr::V4(Ipv4Addr::LOCALHOST), port));
            m.observe_http(&o);
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
        m.observe_http(&o);
        assert!(encoded(&m).contains(r#"server_address="",server_port="""#));
    }

    #[test]
    fn ipv4_mapped_peer_is_canonical() {
        let m = Metrics::new(10);
        let mut o = obs(Side::Client, "GET", 200, "/");
        o.peer = Some((IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()), 443));
        m.observe_http(&o);
        assert!(encoded(&m).contains(r#"server_address="10.1.2.3",server_port="443""#));
    }

    #[test]
    fn services_beyond_budget_share_overflow() {
        let m = Metrics::with_limits(10, 1, 10);
        let mut o = obs(Side::Server, "GET", 200, "/a");
        m.observe_http(&o);
        o.service = "late";
        m.observe_http(&o);
        let text = encoded(&m);
        assert!(text.contains(r#"service_name="late",http_request_method="GET",http_response_status_code="200",http_route="/**""#));
        assert_eq!(
            sample(
                &text,
                r#"tracer_http_route_overflow_total{service_name="late"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn cache_hits_and_collisions_keep_counts_right() {
        let m = Metrics::new(10_000);
        // More distinct raw paths than cache slots forces replacements; all
        // of them template to one route, so one series holds every count.
        for _ in 0..3 {
            for i in 0..(CACHE_SLOTS + 100) {
                let path = format!("/users/{i}");
                m.observe_http(&obs(Side::Server, "GET", 200, &path));
            }
            m.observe_http(&obs(Side::Server, "GET", 200, "/users"));
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
            m.observe_http(&o);
        }
        let text = encoded(&m);
        assert!(text.contains(
            r#"http_server_request_duration_seconds_sum{service_name="shop",http_request_method="GET",http_response_status_code="200",http_route="/",error_type=""} 0.0"#
        ), "{text}");
    }

    #[test]
    fn kernel_stats_keep_latest_value() {
        let m = Metrics::new(10);
        let text = encoded(&m);
        // Created at zero so dashboards see every cause before a loss happens.
        assert_eq!(
            sample(&text, r#"tracer_kernel_drops_total{cause="ringbuf_full"}"#),
            Some(0.0)
        );
        assert!(!text.contains(r#"cause="truncated""#));

        m.set_kernel_stats(&[("ringbuf_full", 5), ("truncated", 3), ("read_failed", 1)]);
        m.set_kernel_stats(&[("ringbuf_full", 9), ("truncated", 4), ("read_failed", 1)]);
        let text = encoded(&m);
        assert_eq!(
            sample(&text, r#"tracer_kernel_drops_total{cause="ringbuf_full"}"#),
            Some(9.0)
        );
        assert_eq!(
            sample(&text, r#"tracer_kernel_drops_total{cause="read_failed"}"#),
            Some(1.0)
        );
        assert_eq!(sample(&text, "tracer_truncated_events_total"), Some(4.0));
        assert!(text.contains("# TYPE tracer_kernel_drops counter"));
    }

    #[test]
    fn internal_counters() {
        let m = Metrics::new(10);
        m.count_event(EventKind::Data, 100);
        m.count_event(EventKind::Data, 50);
        m.count_event(EventKind::ProcessExit, 0);
        m.count_events(EventKind::Close, 3);
        m.count_event_bytes(7);
        m.count_user_drop("conn_evicted", 2);
        m.count_user_drop("brand_new_cause", 1);
        m.count_parser("http1", 1, 2, 3);
        m.count_gaps(4, 4096);
        m.set_connections(17);
        m.count_evictions(5);
        m.count_late_events(6);
        let text = encoded(&m);
        let expect = [
            (r#"tracer_events_total{kind="data"}"#, 2.0),
            (r#"tracer_events_total{kind="open"}"#, 0.0),
            (r#"tracer_events_total{kind="process_exit"}"#, 1.0),
            (r#"tracer_events_total{kind="close"}"#, 3.0),
            ("tracer_event_bytes_total", 157.0),
            (r#"tracer_user_drops_total{cause="conn_evicted"}"#, 2.0),
            (r#"tracer_user_drops_total{cause="unknown_conn"}"#, 0.0),
            (r#"tracer_user_drops_total{cause="brand_new_cause"}"#, 1.0),
            (r#"tracer_parser_resyncs_total{protocol="http1"}"#, 1.0),
            (
                r#"tracer_unmatched_total{protocol="http1",kind="request"}"#,
                2.0,
            ),
            (
                r#"tracer_unmatched_total{protocol="http1",kind="response"}"#,
                3.0,
            ),
            ("tracer_stream_gaps_total", 4.0),
            ("tracer_stream_gap_bytes_total", 4096.0),
            ("tracer_connections", 17.0),
            ("tracer_connection_evictions_total", 5.0),
            ("tracer_late_events_total", 6.0),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE tracer_")) {
            let name = line.split(' ').nth(2).unwrap_or_default();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
    }

    #[test]
    fn metrics_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
    }
}
