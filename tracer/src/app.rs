//! The commands, wired end to end: load the kernel side, adopt connections
//! that predate us, run the pipeline on the ring buffer, and serve metrics
//! (`run`) or print exchanges (`watch`) until SIGINT or SIGTERM.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::{
    budget::{Budget, Pressure},
    cli::{CaptureArgs, RecordArgs, RunArgs, WatchArgs},
    config::{Config, PipelineConfig},
    export::metrics::{EventKind, Limits, Metrics, Observation},
    export::server::{self, Health},
    export::watch::{Filter, PrintSink},
    metadata::{self, procfs, procfs::ExistingConn},
    pipeline::conntrack::{Counters, Pipeline},
    pipeline::records::{ip_of, Record, Sink},
    protocols::{ParserCounters, Protocol, Side},
    source::ingest,
    source::loader::{self, AttachMode, Kernel, KernelNotes, Shedding},
    source::packets::{Flows, PacketCounters, ProcOwners},
};

/// Prints a line to stdout; a closed stdout (piped into `head`) is not an
/// error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Feeds records into the Prometheus histograms.
pub struct MetricsSink(pub Arc<Metrics>);

impl Sink for MetricsSink {
    fn record(&mut self, record: &Record) {
        let peer = match record.side {
            Side::Client => ip_of(&record.remote).map(|ip| (ip, record.remote.port)),
            Side::Server => None,
        };
        self.0.observe(&Observation {
            side: record.side,
            identity: &record.identity,
            call: &record.exchange.call,
            failure: record.exchange.failure,
            duration_s: record.duration_s(),
            peer,
            peer_service: record.peer_service.as_ref(),
            response_body_bytes: record.exchange.response_body_bytes,
        });
    }
}

/// Both sinks at once: `watch` prints and still keeps metrics consistent.
struct Tee<A, B>(A, B);

impl<A: Sink, B: Sink> Sink for Tee<A, B> {
    fn record(&mut self, record: &Record) {
        self.0.record(record);
        self.1.record(record);
    }
}

/// Publishes the pipeline's counters to the metrics as deltas.
#[derive(Default)]
pub struct Publisher {
    last: Counters,
    last_queue_full: u64,
    last_packets: PacketCounters,
}

impl Publisher {
    pub fn publish<S: Sink>(&mut self, pipeline: &Pipeline<S>, metrics: &Metrics) {
        let now = pipeline.counters;
        let last = std::mem::replace(&mut self.last, now);
        metrics.count_events(EventKind::Data, now.data_events - last.data_events);
        metrics.count_events(EventKind::Open, now.open_events - last.open_events);
        metrics.count_events(EventKind::Close, now.close_events - last.close_events);
        metrics.count_events(EventKind::ProcessExit, now.exit_events - last.exit_events);
        metrics.count_event_bytes(now.event_bytes - last.event_bytes);
        metrics.count_user_drop("decode_error", now.decode_errors - last.decode_errors);
        metrics.count_user_drop("unknown_conn", now.unknown_conn - last.unknown_conn);
        metrics.count_user_drop("conn_evicted", now.evictions - last.evictions);
        metrics.count_evictions(now.evictions - last.evictions);
        metrics.count_late_events(now.late_events - last.late_events);
        metrics.count_user_drop("identity_pending", now.pending_full - last.pending_full);
        metrics.set_pending_records(pipeline.pending() as i64);
        let queue_full = pipeline.identity_queue_full();
        metrics.count_identity_queue_full(queue_full - self.last_queue_full);
        self.last_queue_full = queue_full;
        let (r, lr) = (now.reassembly, last.reassembly);
        metrics.count_gaps(r.gaps - lr.gaps, r.gap_bytes - lr.gap_bytes);
        metrics.count_user_drop("stream_overlap", r.overlaps - lr.overlaps);
        for protocol in Protocol::ALL {
            let (p, lp) = (now.parser[protocol.index()], last.parser[protocol.index()]);
            let delta = ParserCounters {
                resyncs: p.resyncs - lp.resyncs,
                unmatched_requests: p.unmatched_requests - lp.unmatched_requests,
                unmatched_responses: p.unmatched_responses - lp.unmatched_responses,
                partial: p.partial - lp.partial,
            };
            metrics.count_parser(protocol.as_str(), &delta);
        }
        metrics.set_connections(pipeline.connections() as i64);
        if let Some(flows) = pipeline.packets() {
            let (now, last) = (
                flows.counters,
                std::mem::replace(&mut self.last_packets, flows.counters),
            );
            metrics.count_events(EventKind::Packet, now.records - last.records);
            for (cause, n, was) in [
                ("packet_malformed", now.malformed, last.malformed),
                ("packet_stale", now.stale, last.stale),
                ("packet_after_close", now.after_close, last.after_close),
                ("packet_no_flow", now.no_flow, last.no_flow),
                ("packet_bad_checksum", now.bad_checksum, last.bad_checksum),
                (
                    "packet_other_interface",
                    now.other_interface,
                    last.other_interface,
                ),
                (
                    "packet_handshake_evicted",
                    now.syn_evicted,
                    last.syn_evicted,
                ),
                ("packet_flow_evicted", now.flows_evicted, last.flows_evicted),
            ] {
                metrics.count_user_drop(cause, n - was);
            }
        }
        metrics.count_user_drop(
            "packet_flow_covered",
            now.packet_flows_covered - last.packet_flows_covered,
        );
    }
}

/// `tracer run`.
pub async fn run(args: RunArgs) -> Result<()> {
    let config = Config::from_args(&args.capture, args.hooks_only)?;
    let pipeline_config = PipelineConfig::from_args(&args.pipeline)?;
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}: cannot listen", args.metrics_addr))?;
    let stage = metadata::start(config.service_names.clone(), &pipeline_config.kube).await?;
    let kernel = loader::load(&config.load)?;
    tracing::info!(
        mode = ?kernel.mode,
        metrics_addr = %args.metrics_addr,
        capture_bytes = config.load.capture_limit,
        kubernetes = stage.kube_stats.is_some(),
        memory_mib = config.budget.bytes >> 20,
        memory_from = ?config.budget.source,
        ring_buffer_mib = config.load.ring_buffer_bytes >> 20,
        max_connections = config.max_connections,
        "kernel programs attached"
    );
    let metrics = Arc::new(Metrics::with_limits(
        Limits::with_routes(config.max_routes_per_service),
        stage.kube_stats.is_some(),
    ));
    let health = Arc::new(Health::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(wait_for_signal(stop_tx));

    let Kernel {
        ebpf,
        events,
        control,
        socket_counter,
        stats,
        shedding,
        notes,
        packet_sockets,
        ..
    } = kernel;
    let interfaces = packet_sockets.counts();
    tokio::spawn(watch_memory(
        config.budget.clone(),
        shedding,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    let stats = Arc::new(Mutex::new(stats));
    let kernel_table = Mutex::new((socket_counter, Every::new(KERNEL_TABLE_EVERY)));
    let before_scrape = {
        let (metrics, stats, kube) = (metrics.clone(), stats.clone(), stage.kube_stats.clone());
        Arc::new(move || {
            if let Ok(stats) = stats.lock() {
                metrics.set_kernel_stats(&loader::read_stats(&stats));
            }
            if let Ok(mut table) = kernel_table.lock() {
                let (counter, every) = &mut *table;
                if every.due(Instant::now()) {
                    metrics.set_kernel_connections(counter.count() as i64);
                }
            }
            if let Some(kube) = &kube {
                metrics.set_kube_stats(kube);
            }
            metrics.set_packet_interfaces(interfaces.captured(), interfaces.failures());
        })
    };
    let server = tokio::spawn(server::serve(
        listener,
        metrics.clone(),
        health.clone(),
        before_scrape,
        stopped(stop_rx.clone()),
    ));

    let metadata::Stage {
        identities,
        kube_stats,
        gone_pods,
    } = stage;
    let existing = if args.hooks_only {
        Vec::new()
    } else {
        procfs::existing_connections(std::process::id())
    };
    let mut pipeline = with_packet_path(
        Pipeline::new(
            config.max_connections,
            identities,
            Some(Box::new(control)),
            MetricsSink(metrics.clone()),
        ),
        &config,
        notes,
        &existing,
    );
    adopt_existing(&mut pipeline, &config, &existing);
    let mut publisher = Publisher::default();
    let mut housekeeping = Housekeeping::new(pipeline_config.request_timeout);
    ingest::run(
        events,
        &mut pipeline,
        |p, record| p.handle(record),
        |p| {
            housekeeping.after_batch(p);
            for uid in gone_pods.try_iter() {
                metrics.calls.forget_pod(&uid);
            }
            publisher.publish(p, &metrics);
            let synced = kube_stats.as_ref().is_none_or(|s| s.synced());
            health.set_ready(synced);
            health.beat();
        },
        stopped(stop_rx),
    )
    .await
    .context("reading the ring buffer")?;
    health.set_ready(false);
    drop(packet_sockets);
    drop(ebpf);
    server.await.context("metrics server task")??;
    tracing::info!("stopped");
    Ok(())
}

/// Once a second: memory in use against the budget; at 90% the kernel side
/// sheds payload capture until usage is below 80% again.
async fn watch_memory(
    budget: Budget,
    mut shedding: Shedding,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut pressure = Pressure::default();
    let mut was_shedding = false;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let Some(used) = budget.used() else {
            continue;
        };
        let shed = pressure.update(used, budget.bytes);
        if shed != was_shedding {
            shedding.set(shed);
            was_shedding = shed;
            if shed {
                tracing::warn!(
                    used_mib = used >> 20,
                    budget_mib = budget.bytes >> 20,
                    "90% of the memory budget in use: payload capture is shed until below 80%"
                );
            } else {
                tracing::info!(
                    used_mib = used >> 20,
                    "memory below 80% of the budget again"
                );
            }
        }
        metrics.set_memory(budget.bytes, used, shed);
    }
}

/// How often at most a scrape refreshes `tracer_kernel_connections`: the
/// count walks the kernel table's keys, a syscall per entry, and a full
/// table has `--max-connections` of them.
const KERNEL_TABLE_EVERY: Duration = Duration::from_secs(5);

/// Says yes at most once per period.
struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    fn new(period: Duration) -> Self {
        Self { period, last: None }
    }

    fn due(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.period)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// What the pipeline does between batches of events: hand over exchanges
/// whose identity has been resolved, and about once a second report
/// requests that have waited past the timeout.
struct Housekeeping {
    timeout_ns: u64,
    next_expiry: std::time::Instant,
}

impl Housekeeping {
    fn new(timeout: std::time::Duration) -> Self {
        Self {
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            next_expiry: std::time::Instant::now(),
        }
    }

    fn after_batch<S: Sink>(&mut self, pipeline: &mut Pipeline<S>) {
        let now = std::time::Instant::now();
        if now >= self.next_expiry {
            self.next_expiry = now + std::time::Duration::from_secs(1);
            pipeline.expire_requests(crate::source::rings::monotonic_ns(), self.timeout_ns);
        }
        pipeline.flush_pending();
    }
}

/// `tracer watch`.
pub async fn watch(args: WatchArgs) -> Result<()> {
    let config = Config::from_args(&args.capture, false)?;
    let pipeline_config = PipelineConfig::from_args(&args.pipeline)?;
    let stage = metadata::start(config.service_names.clone(), &pipeline_config.kube).await?;
    let kernel = loader::load(&config.load)?;
    tracing::info!(mode = ?kernel.mode, "kernel programs attached; printing exchanges");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(wait_for_signal(stop_tx));
    let Kernel {
        ebpf,
        events,
        control,
        notes,
        ..
    } = kernel;
    let filter = Filter {
        pids: args.pid.clone(),
        processes: args.process.clone(),
        ports: args.port.clone(),
        namespaces: args.namespace.clone(),
        pods: args.pod.clone(),
    };
    let metrics = Arc::new(Metrics::new(config.max_routes_per_service));
    let sink = Tee(
        PrintSink::new(filter, std::io::stdout()),
        MetricsSink(metrics),
    );
    let existing = procfs::existing_connections(std::process::id());
    let mut pipeline = with_packet_path(
        Pipeline::new(
            config.max_connections,
            stage.identities,
            Some(Box::new(control)),
            sink,
        ),
        &config,
        notes,
        &existing,
    );
    adopt_existing(&mut pipeline, &config, &existing);
    let mut housekeeping = Housekeeping::new(pipeline_config.request_timeout);
    ingest::run(
        events,
        &mut pipeline,
        |p, record| p.handle(record),
        |p| housekeeping.after_batch(p),
        stopped(stop_rx),
    )
    .await
    .context("reading the ring buffer")?;
    drop(ebpf);
    Ok(())
}

/// `tracer record`: raw ring-buffer records to a file, for replay benchmarks
/// and bug reports. Each record is a little-endian u32 length and the bytes.
/// Payload bytes are written as captured: the file is as sensitive as the
/// traffic, which is why this is an explicit command and never a default.
pub async fn record(args: RecordArgs) -> Result<()> {
    use std::io::Write;
    let config = Config::from_args(&args.capture, false)?;
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("--output {}: cannot create", args.output.display()))?;
    let kernel = loader::load(&config.load)?;
    tracing::info!(output = %args.output.display(), seconds = args.seconds, "recording");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(wait_for_signal(stop_tx.clone()));
    let seconds = args.seconds;
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        let _ = stop_tx.send(true);
    });
    let Kernel { ebpf, events, .. } = kernel;
    let mut out = (std::io::BufWriter::new(file), 0u64, None::<std::io::Error>);
    ingest::run(
        events,
        &mut out,
        |(w, n, err), record| {
            let len = (record.len() as u32).to_le_bytes();
            if let Err(e) = w.write_all(&len).and_then(|()| w.write_all(record)) {
                err.get_or_insert(e);
            }
            *n += 1;
        },
        |_| {},
        stopped(stop_rx),
    )
    .await
    .context("reading the ring buffer")?;
    drop(ebpf);
    let (mut w, n, err) = out;
    if let Some(e) = err {
        return Err(e).context("writing the recording");
    }
    w.flush().context("writing the recording")?;
    say!("recorded {n} records to {}", args.output.display());
    Ok(())
}

/// Reads a file written by `tracer record`.
pub fn read_recording(bytes: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some((record, tail)) = tail.split_at_checked(len) else {
            break;
        };
        records.push(record);
        rest = tail;
    }
    records
}

/// `tracer check`.
pub fn check(args: CaptureArgs) -> Result<()> {
    let config = Config::from_args(&args, false)?;
    let kernel = loader::load(&config.load)?;
    say!("attach mode (auto picks): {:?}", kernel.mode);
    drop(kernel);
    match loader::position_fields() {
        Ok(()) => say!("stream positions: the sockets' TCP sequence counters"),
        Err(reason) => say!("stream positions: sums of the hooked syscalls ({reason})"),
    }
    let mut packets = config.load.clone();
    packets.source = loader::SourceChoice::Packets;
    match loader::load(&packets) {
        Ok(_) => say!("packet path (socket filter on AF_PACKET sockets): ok"),
        Err(e) => say!("packet path: unavailable ({e})"),
    }
    let kprobes = loader::verify_kprobe_programs(&config.load)?;
    say!("kprobe programs loaded through the verifier: {kprobes}");
    let mut tp = config.load.clone();
    tp.mode = AttachMode::Tracepoint;
    match loader::load(&tp) {
        Ok(_) => say!("tracepoint attach: ok"),
        Err(e) => say!("tracepoint attach: unavailable ({e})"),
    }
    let mut kp = config.load;
    kp.mode = AttachMode::Kprobe;
    match loader::load(&kp) {
        Ok(_) => say!("kprobe attach: ok"),
        Err(e) => say!("kprobe attach: unavailable ({e})"),
    }
    Ok(())
}

/// The pipeline reads the packet path's records too when it runs; the
/// kernel's client table and the connections open before start-up name
/// the processes of its flows' client ends.
fn with_packet_path<S: Sink>(
    pipeline: Pipeline<S>,
    config: &Config,
    notes: Option<KernelNotes>,
    existing: &[ExistingConn],
) -> Pipeline<S> {
    if !config.load.source.packets() {
        return pipeline;
    }
    let mut owners = ProcOwners::new();
    if let Some(notes) = notes {
        owners = owners.with_notes(Box::new(notes), existing);
    }
    pipeline.with_packets(Flows::new(config.max_connections, Box::new(owners)))
}

/// Connections open before start-up: the syscall hooks adopt them (the
/// packet path picks them up mid-stream by itself).
fn adopt_existing<S: Sink>(pipeline: &mut Pipeline<S>, config: &Config, existing: &[ExistingConn]) {
    if !config.load.source.syscalls() {
        return;
    }
    let adopted = pipeline.adopt_existing(existing);
    tracing::info!(
        found = existing.len(),
        adopted,
        "connections open before start-up"
    );
}

async fn wait_for_signal(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = stop.send(true);
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_says_yes_once_per_period() {
        let start = Instant::now();
        let mut every = Every::new(Duration::from_secs(5));
        assert!(every.due(start));
        assert!(!every.due(start + Duration::from_secs(4)));
        assert!(every.due(start + Duration::from_secs(5)));
        assert!(!every.due(start + Duration::from_secs(9)));
        assert!(every.due(start + Duration::from_secs(11)));
    }
}
