//! Replay benchmark of the user-space pipeline: how much CPU the daemon spends
//! per ring-buffer event and per HTTP exchange, with the kernel taken out.
//!
//! Input: a file written by `tracer record` (each record a little-endian u32
//! length and the record's bytes), named by the `TRACER_RECORDING`
//! environment variable. `cargo xtask bench` records one while wrk drives
//! nginx and runs this on it; by hand:
//!
//! A recording of the packet path (`tracer record --source packets`) is
//! replayed through its flows, and its events are TCP segments.
//!
//! ```text
//! sudo target/release/tracer record --output /tmp/rec.bin --seconds 5   # while traffic runs
//! TRACER_RECORDING=/tmp/rec.bin cargo bench -p tracer --bench pipeline
//! ```
//!
//! Output (stdout): one line per pass, then the median pass, then one
//! `pipeline-bench:` line of `key=value` pairs that `cargo xtask bench`
//! parses. Every pass replays the whole file through a fresh `Pipeline` (and
//! fresh `Metrics`), the way the daemon would see it after a restart, feeding
//! the real `MetricsSink`. "Per core" figures divide by the process's CPU
//! time, not by wall time, so they do not depend on how busy the machine is.
//!
//! The live daemon tells the kernel to stop tracing a connection it gave up
//! on (a database server's side, a protocol it does not parse), and the
//! kernel then sends nothing more of it. `tracer record` keeps every record,
//! so a first, untimed pass finds the records the live daemon would never
//! have received, and the timed passes leave them out (`kept=` of
//! `records=`). The map updates themselves are not in the figures.
//!
//! This measures and reports; it never asserts on a timing.

use std::{
    collections::{HashMap, HashSet},
    mem::size_of,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracer::{
    app::{read_recording, MetricsSink},
    export::metrics::Metrics,
    pipeline::conntrack::{KernelSockets, Pipeline},
    pipeline::records::{Record, Sink},
    source::packets::{FixedOwners, Flows},
};
use tracer_common::ConnInfo;

/// Passes over the recording; the median is reported, so an odd number.
const PASSES: usize = 5;

/// The daemon's default `--max-connections`, so eviction behaves as in production.
const CAPACITY: usize = 65_536;

/// The daemon's default `--max-routes-per-service`.
const MAX_ROUTES: usize = 100;

/// The real metrics sink, plus a count of the exchanges it was handed.
struct CountingSink {
    inner: MetricsSink,
    exchanges: u64,
}

impl Sink for CountingSink {
    fn record(&mut self, record: &Record) {
        self.exchanges += 1;
        self.inner.record(record);
    }
}

/// What one pass measured.
#[derive(Debug, Clone, Copy)]
struct Pass {
    wall: Duration,
    cpu: Duration,
    exchanges: u64,
    data_events: u64,
    open_events: u64,
    close_events: u64,
    decode_errors: u64,
    unknown_conn: u64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pipeline bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    // `cargo bench` passes `--bench` (and any filter); nothing to configure
    // from the command line, so extra arguments are ignored on purpose.
    let path = std::env::var_os("TRACER_RECORDING").ok_or_else(|| {
        "TRACER_RECORDING is not set: point it at a file written by \
         `tracer record --output FILE --seconds N` (or run `cargo xtask bench`, \
         which records one)"
            .to_string()
    })?;
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("TRACER_RECORDING={}: {e}", path.to_string_lossy()))?;
    let records = read_recording(&bytes);
    if records.is_empty() {
        return Err(format!(
            "TRACER_RECORDING={}: no records in {} bytes (not a `tracer record` file, or empty)",
            path.to_string_lossy(),
            bytes.len()
        ));
    }
    let payload: usize = records.iter().map(|r| r.len()).sum();
    println!(
        "recording: {} ({} records, {:.1} MiB)",
        path.to_string_lossy(),
        records.len(),
        payload as f64 / (1024.0 * 1024.0)
    );
    let recorded = records.len();
    let records = as_the_kernel_would_send(records);
    println!(
        "kept {} records; left out {} of connections the daemon had stopped tracing",
        records.len(),
        recorded - records.len()
    );

    let mut passes = Vec::with_capacity(PASSES);
    for i in 0..PASSES {
        let pass = replay(&records)?;
        print_pass(&format!("pass {}", i + 1), records.len(), &pass);
        passes.push(pass);
    }
    // Median by CPU time: the figure least disturbed by other processes.
    passes.sort_by_key(|p| p.cpu);
    let median = passes[PASSES / 2];
    print_pass("median", records.len(), &median);
    println!(
        "pipeline: data={} open={} close={} decode_errors={} unknown_conn={}",
        median.data_events,
        median.open_events,
        median.close_events,
        median.decode_errors,
        median.unknown_conn
    );
    if median.exchanges == 0 {
        println!(
            "note: no exchanges came out of this recording (no HTTP traffic in it, \
             or only connections opened before it started)"
        );
    }
    let f = Figures::of(records.len(), &median);
    println!(
        "pipeline-bench: records={recorded} kept={} exchanges={} events_per_cpu_s={:.0} exchanges_per_cpu_s={:.0} \
         ns_per_event={:.1} us_per_exchange={:.3} events_per_wall_s={:.0} cpu_s={:.3} wall_s={:.3}",
        records.len(),
        median.exchanges,
        f.events_per_cpu_s,
        f.exchanges_per_cpu_s,
        f.ns_per_event,
        f.us_per_exchange,
        f.events_per_wall_s,
        median.cpu.as_secs_f64(),
        median.wall.as_secs_f64(),
    );
    Ok(())
}

/// The connections the pipeline stopped tracing, by connection id: what the
/// kernel's socket table loses through [`KernelSockets::forget`].
#[derive(Clone, Default)]
struct Forgotten(Arc<Mutex<HashSet<u64>>>);

impl KernelSockets for Forgotten {
    fn forget(&mut self, _key: u64, conn_id: u64) {
        self.0.lock().expect("not poisoned").insert(conn_id);
    }

    fn adopt(&mut self, _key: u64, _info: &ConnInfo) -> bool {
        true
    }

    // As in the timed passes: no socket is known beyond what was recorded.
    fn lookup(&self, _key: u64) -> Option<ConnInfo> {
        None
    }
}

/// The records a live daemon would have received: none of a connection
/// after the pipeline told the kernel to forget it.
fn as_the_kernel_would_send(records: Vec<&[u8]>) -> Vec<&[u8]> {
    let forgotten = Forgotten::default();
    let mut pipeline = with_packet_path(
        &records,
        Pipeline::new(
            CAPACITY,
            tracer::metadata::Identities::inline(HashMap::new()),
            Some(Box::new(forgotten.clone())),
            CountingSink {
                inner: MetricsSink(Arc::new(Metrics::new(MAX_ROUTES))),
                exchanges: 0,
            },
        ),
    );
    let mut kept = Vec::with_capacity(records.len());
    for record in records {
        let gone = conn_id(record)
            .is_some_and(|id| id != 0 && forgotten.0.lock().expect("not poisoned").contains(&id));
        if !gone {
            pipeline.handle(record);
            kept.push(record);
        }
    }
    kept
}

/// A recording of `tracer record --source packets` (or `both`) has packet
/// records: the pipeline reads them as the daemon would, through the packet
/// path's flows (roles from the SYNs; no /proc lookups in a replay). Both
/// ends of every connection whose SYN was recorded are taken to be local,
/// as the listeners in /proc and the kernel's `CLIENTS` table say of the
/// benchmark's loopback traffic: such a flow is seen from each end, as
/// live.
fn with_packet_path<S: Sink>(records: &[&[u8]], pipeline: Pipeline<S>) -> Pipeline<S> {
    use tracer_common::{kind, tcp_flag, PacketEvent};
    let packets = records
        .iter()
        .filter(|r| r.first() == Some(&kind::PACKET) && r.len() >= size_of::<PacketEvent>());
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for record in packets.clone() {
        // SAFETY: at least one PacketEvent's bytes; plain-old-data.
        let event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<PacketEvent>()) };
        if event.flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN {
            if !servers.iter().any(|&(s, _)| s == event.dst) {
                servers.push((event.dst, 2));
            }
            clients.push((event.src, event.dst));
        }
    }
    if packets.count() == 0 {
        return pipeline;
    }
    let owners = clients
        .iter()
        .fold(FixedOwners::listening(servers), |owners, (c, s)| {
            owners.with_client(c, s, 1)
        });
    pipeline.with_packets(Flows::new(CAPACITY, Box::new(owners)))
}

/// The connection id every record carries in its header (0 for process
/// events).
fn conn_id(record: &[u8]) -> Option<u64> {
    let at = std::mem::offset_of!(tracer_common::EventHeader, conn_id);
    let bytes = record.get(at..at + 8)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// One pass over every record with a fresh pipeline.
fn replay(records: &[&[u8]]) -> Result<Pass, String> {
    let sink = CountingSink {
        inner: MetricsSink(Arc::new(Metrics::new(MAX_ROUTES))),
        exchanges: 0,
    };
    // No kernel: a replay cannot adopt or forget kernel sockets.
    let mut pipeline = with_packet_path(
        records,
        Pipeline::new(
            CAPACITY,
            tracer::metadata::Identities::inline(HashMap::new()),
            None,
            sink,
        ),
    );
    let (cpu0, wall0) = (process_cpu()?, Instant::now());
    for record in records {
        pipeline.handle(record);
    }
    let (cpu1, wall) = (process_cpu()?, wall0.elapsed());
    let c = pipeline.counters;
    Ok(Pass {
        wall,
        cpu: cpu1.saturating_sub(cpu0),
        exchanges: pipeline.sink.exchanges,
        data_events: c.data_events,
        open_events: c.open_events,
        close_events: c.close_events,
        decode_errors: c.decode_errors,
        unknown_conn: c.unknown_conn,
    })
}

/// Rates derived from one pass.
struct Figures {
    events_per_cpu_s: f64,
    exchanges_per_cpu_s: f64,
    ns_per_event: f64,
    us_per_exchange: f64,
    events_per_wall_s: f64,
}

impl Figures {
    fn of(records: usize, p: &Pass) -> Self {
        // Guard the divisions: a tiny recording can take less than the
        // clock's resolution, and a recording may hold no exchanges at all.
        let cpu = p.cpu.as_secs_f64().max(1e-9);
        let wall = p.wall.as_secs_f64().max(1e-9);
        let n = records.max(1) as f64;
        let x = p.exchanges as f64;
        Self {
            events_per_cpu_s: records as f64 / cpu,
            exchanges_per_cpu_s: x / cpu,
            ns_per_event: cpu * 1e9 / n,
            us_per_exchange: if p.exchanges == 0 {
                f64::NAN
            } else {
                cpu * 1e6 / x
            },
            events_per_wall_s: records as f64 / wall,
        }
    }
}

fn print_pass(label: &str, records: usize, p: &Pass) {
    let f = Figures::of(records, p);
    println!(
        "{label:>7}: {records} events, {} exchanges in {:.3} s CPU ({:.3} s wall): \
         {:.0} events/s/core, {:.0} exchanges/s/core, {:.1} ns/event, {:.3} µs/exchange",
        p.exchanges,
        p.cpu.as_secs_f64(),
        p.wall.as_secs_f64(),
        f.events_per_cpu_s,
        f.exchanges_per_cpu_s,
        f.ns_per_event,
        f.us_per_exchange,
    );
}

/// CPU time (user + system) this process has used so far. The clock counts
/// in nanoseconds, finer than getrusage's microseconds or /proc's ticks,
/// which matters for short passes.
fn process_cpu() -> Result<Duration, String> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Err(format!(
            "clock_gettime(CLOCK_PROCESS_CPUTIME_ID): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}
