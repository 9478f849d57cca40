//! Every Prometheus metric the daemon exports, in OpenMetrics text.
//!
//! Input: finished exchanges (as [`Observation`], see [`calls`] for the
//! HTTP, gRPC and database histograms, their labels and budgets), loss and anomaly counts from
//! the ingest, conntrack, reassembly and protocol stages, the kernel's loss
//! counters read from the eBPF `STATS` map, and the metadata stage's
//! Kubernetes counters. Output: the text `server` returns on `GET /metrics`
//! ([`Metrics::encode`]). This stage never calls Kubernetes or /proc: the
//! identity behind each label set comes with the observation.
//!
//! Application metrics use the OpenTelemetry semantic-convention names the way
//! Grafana Beyla exports them to Prometheus, so existing dashboards work.
//! Internal metrics (prefix `tracer_`) count what the pipeline saw and lost;
//! see the HELP texts in [`Metrics::with_limits`].

pub mod calls;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use thiserror::Error;

pub use calls::{CallMetrics, Limits, Observation, DURATION_BUCKETS, OVERFLOW};

use crate::metadata::KubeStats;
use crate::protocols::{ParserCounters, Protocol};

/// Kernel stat whose value goes to `tracer_truncated_events_total` rather than
/// `tracer_kernel_drops_total` (a truncated chunk is not a lost event).
const TRUNCATED_STAT: &str = "truncated";

/// Drop causes the daemon reports, created at zero so dashboards see them.
const USER_DROP_CAUSES: [&str; 13] = [
    "conn_evicted",
    "unknown_conn",
    "decode_error",
    "stream_overlap",
    "packet_malformed",
    "packet_stale",
    "packet_after_close",
    "packet_no_flow",
    "packet_bad_checksum",
    "packet_other_interface",
    "packet_handshake_evicted",
    "packet_flow_evicted",
    "packet_flow_covered",
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
    /// A TCP segment of the packet path.
    Packet,
}

impl EventKind {
    const ALL: [EventKind; 5] = [
        Self::Data,
        Self::Open,
        Self::Close,
        Self::ProcessExit,
        Self::Packet,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Open => "open",
            Self::Close => "close",
            Self::ProcessExit => "process_exit",
            Self::Packet => "packet",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Data => 0,
            Self::Open => 1,
            Self::Close => 2,
            Self::ProcessExit => 3,
            Self::Packet => 4,
        }
    }
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

/// All metrics of the daemon, with the registry that encodes them.
///
/// Every method takes `&self`; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub calls: CallMetrics,
    events: [Counter; 5],
    event_bytes: Counter,
    kernel_drops: Family<CauseLabel, Counter>,
    truncated: Counter,
    user_drops: Family<CauseLabel, Counter>,
    resyncs: Family<ProtocolLabel, Counter>,
    unmatched: Family<UnmatchedLabel, Counter>,
    partial: Family<ProtocolLabel, Counter>,
    gaps: Counter,
    gap_bytes: Counter,
    connections: Gauge,
    kernel_connections: Gauge,
    evictions: Counter,
    late_events: Counter,
    pending_records: Gauge,
    identity_queue_full: Counter,
    memory_budget: Gauge,
    memory_used: Gauge,
    memory_pressure: Gauge,
    packet_interfaces: Gauge,
    packet_interface_errors: Counter,
    kubernetes: Option<KubeMetrics>,
}

impl Metrics {
    /// Metrics with a budget of `max_routes_per_service` routes, the
    /// default other budgets, and no Kubernetes metrics.
    pub fn new(max_routes_per_service: usize) -> Self {
        Self::with_limits(Limits::with_routes(max_routes_per_service), false)
    }

    /// Metrics with explicit cardinality budgets; `kubernetes` adds the
    /// `tracer_kubernetes_*` family.
    pub fn with_limits(limits: Limits, kubernetes: bool) -> Self {
        let mut registry = Registry::default();
        let calls = CallMetrics::register(&mut registry, limits);

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

        let partial = Family::<ProtocolLabel, Counter>::default();
        registry.register(
            "tracer_partial_exchanges",
            "Exchanges reported with fields that could not be decoded (an HTTP/2 connection \
             picked up mid-stream refers to header tables built before), by protocol",
            partial.clone(),
        );
        // Every protocol's counters exist from the start, at zero.
        for protocol in Protocol::ALL {
            let protocol = protocol.as_str();
            let _ = resyncs.get_or_create(&ProtocolLabel { protocol });
            let _ = partial.get_or_create(&ProtocolLabel { protocol });
            for kind in ["request", "response"] {
                let _ = unmatched.get_or_create(&UnmatchedLabel { protocol, kind });
            }
        }

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
        let kernel_connections = Gauge::default();
        registry.register(
            "tracer_kernel_connections",
            "Entries in the kernel's table of traced sockets (one per traced descriptor), \
             counted when /metrics is scraped, at most every 5 s",
            kernel_connections.clone(),
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
        let pending_records = Gauge::default();
        registry.register(
            "tracer_pending_records",
            "Finished exchanges waiting for their process's identity (its pod) before they are \
             counted",
            pending_records.clone(),
        );
        let memory_budget = Gauge::default();
        registry.register_with_unit(
            "tracer_memory_budget",
            "Memory the tracer may use in all (--memory-mib, else its cgroup's memory.max)",
            Unit::Bytes,
            memory_budget.clone(),
        );
        let memory_used = Gauge::default();
        registry.register_with_unit(
            "tracer_memory_used",
            "Memory in use against the budget: the cgroup's memory.current when the budget is \
             the cgroup's limit, else the daemon's resident set",
            Unit::Bytes,
            memory_used.clone(),
        );
        let memory_pressure = Gauge::default();
        registry.register(
            "tracer_memory_pressure",
            "1 while payload capture is shed because 90% of the memory budget is in use (until \
             below 80%); the chunks shed are counted in tracer_kernel_drops_total{cause=\"capture_shed\"}",
            memory_pressure.clone(),
        );
        let identity_queue_full = Counter::default();
        registry.register(
            "tracer_identity_queue_full",
            "Processes named by their task name at once because the metadata stage's queue was \
             full; looked up again 30 s later",
            identity_queue_full.clone(),
        );
        let packet_interfaces = Gauge::default();
        registry.register(
            "tracer_packet_interfaces",
            "AF_PACKET sockets the packet path holds now, one per interface (0 without \
             --source packets or both)",
            packet_interfaces.clone(),
        );
        let packet_interface_errors = Counter::default();
        registry.register(
            "tracer_packet_interface_errors",
            "Failed attempts to open the packet path's socket on an interface that appeared \
             after start-up (each retried at the next link change)",
            packet_interface_errors.clone(),
        );
        let kubernetes = kubernetes.then(|| KubeMetrics::register(&mut registry));

        Self {
            registry,
            calls,
            events,
            event_bytes,
            kernel_drops,
            truncated,
            user_drops,
            resyncs,
            unmatched,
            partial,
            gaps,
            gap_bytes,
            connections,
            kernel_connections,
            evictions,
            late_events,
            pending_records,
            identity_queue_full,
            memory_budget,
            memory_used,
            memory_pressure,
            packet_interfaces,
            packet_interface_errors,
            kubernetes,
        }
    }

    /// The memory budget, what is in use against it, and whether payload
    /// is being shed.
    pub fn set_memory(&self, budget: u64, used: u64, shedding: bool) {
        self.memory_budget
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
        self.memory_used
            .set(i64::try_from(used).unwrap_or(i64::MAX));
        self.memory_pressure.set(i64::from(shedding));
    }

    /// Records one exchange (see [`CallMetrics::observe`]).
    pub fn observe(&self, obs: &Observation<'_>) {
        self.calls.observe(obs);
    }

    /// Adds processes the metadata stage could not take at once.
    pub fn count_identity_queue_full(&self, n: u64) {
        self.identity_queue_full.inc_by(n);
    }

    /// Sets the number of exchanges waiting for their identity.
    pub fn set_pending_records(&self, n: i64) {
        self.pending_records.set(n);
    }

    /// Copies the Kubernetes watch counters (running totals) into the
    /// `tracer_kubernetes_*` metrics.
    pub fn set_kube_stats(&self, stats: &KubeStats) {
        if let Some(k) = &self.kubernetes {
            k.set(stats);
        }
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

    /// Adds a parser's anomaly counts (a `ParserCounters` delta) for
    /// `protocol`.
    pub fn count_parser(&self, protocol: &'static str, delta: &ParserCounters) {
        self.resyncs
            .get_or_create(&ProtocolLabel { protocol })
            .inc_by(delta.resyncs);
        self.partial
            .get_or_create(&ProtocolLabel { protocol })
            .inc_by(delta.partial);
        for (kind, n) in [
            ("request", delta.unmatched_requests),
            ("response", delta.unmatched_responses),
        ] {
            self.unmatched
                .get_or_create(&UnmatchedLabel { protocol, kind })
                .inc_by(n);
        }
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

    /// Sets the number of entries in the kernel's socket table.
    pub fn set_kernel_connections(&self, n: i64) {
        self.kernel_connections.set(n);
    }

    /// The packet path's interfaces captured now, and the sockets that
    /// could not be opened on later ones so far (a running total, stored:
    /// the follower keeps it, so the counter stays monotonic).
    pub fn set_packet_interfaces(&self, captured: usize, errors: u64) {
        self.packet_interfaces
            .set(i64::try_from(captured).unwrap_or(i64::MAX));
        self.packet_interface_errors
            .inner()
            .store(errors, std::sync::atomic::Ordering::Relaxed);
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

/// `tracer_kubernetes_*`: the metadata stage's view of the API server.
#[derive(Debug)]
struct KubeMetrics {
    watch_up: Family<ResourceLabel, Gauge>,
    restarts: Family<ResourceLabel, Counter>,
    errors: Family<ResourceLabel, Counter>,
    objects: Family<ResourceLabel, Gauge>,
    synced: Gauge,
    unresolved: Counter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

impl KubeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let watch_up = Family::<ResourceLabel, Gauge>::default();
        registry.register(
            "tracer_kubernetes_watch_up",
            "1 while the watch of this resource is established and its list complete, else 0 \
             (the cache keeps serving what it had)",
            watch_up.clone(),
        );
        let restarts = Family::<ResourceLabel, Counter>::default();
        registry.register(
            "tracer_kubernetes_watch_restarts",
            "Re-lists and re-watches after a failure, a dropped stream or 410 Gone",
            restarts.clone(),
        );
        let errors = Family::<ResourceLabel, Counter>::default();
        registry.register(
            "tracer_kubernetes_errors",
            "Failed API requests and error events, by resource (owners: ReplicaSet and Job \
             lookups)",
            errors.clone(),
        );
        let objects = Family::<ResourceLabel, Gauge>::default();
        registry.register(
            "tracer_kubernetes_cache_objects",
            "Objects kept in the metadata cache, by resource",
            objects.clone(),
        );
        let synced = Gauge::default();
        registry.register(
            "tracer_kubernetes_synced",
            "1 once the pods of this node, the Services and the EndpointSlices have each been listed \
             once from the API server",
            synced.clone(),
        );
        let unresolved = Counter::default();
        registry.register(
            "tracer_kubernetes_unresolved_pods",
            "Processes in a pod the API server did not know within the wait; their series \
             carry the process's own labels",
            unresolved.clone(),
        );
        Self {
            watch_up,
            restarts,
            errors,
            objects,
            synced,
            unresolved,
        }
    }

    fn set(&self, stats: &KubeStats) {
        use std::sync::atomic::Ordering::Relaxed;
        for (resource, s) in stats.resources() {
            let label = ResourceLabel { resource };
            if resource != "owners" {
                self.watch_up
                    .get_or_create(&label)
                    .set(s.up.load(Relaxed) as i64);
            }
            self.restarts
                .get_or_create(&label)
                .inner()
                .store(s.restarts.load(Relaxed), Relaxed);
            self.errors
                .get_or_create(&label)
                .inner()
                .store(s.errors.load(Relaxed), Relaxed);
            self.objects
                .get_or_create(&label)
                .set(s.objects.load(Relaxed) as i64);
        }
        self.synced.set(i64::from(stats.synced()));
        self.unresolved
            .inner()
            .store(stats.unresolved_pods.load(Relaxed), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{encoded, sample};

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
        m.count_parser(
            "http1",
            &ParserCounters {
                resyncs: 1,
                unmatched_requests: 2,
                unmatched_responses: 3,
                partial: 0,
            },
        );
        m.count_gaps(4, 4096);
        m.set_connections(17);
        m.set_kernel_connections(16);
        m.set_packet_interfaces(3, 2);
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
            ("tracer_kernel_connections", 16.0),
            ("tracer_packet_interfaces", 3.0),
            ("tracer_packet_interface_errors_total", 2.0),
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
