//! `cargo xtask soak`: the tracer under long load and under connection
//! churn, checked for what a long-running daemon must not do: grow, lose
//! count, or leave connections behind in its own table or the kernel's.
//!
//! Input: a `tracer` binary, Debian's nginx, wrk, ab (apache2-utils) and
//! python3, root. One nginx (the bench's: 1 worker, `return 200`; its access log holds
//! `$connection_requests $request_uri` per request) and one `tracer run` serve
//! the whole soak, in three parts:
//!
//! 1. Keep-alive saturation: the bench's `wrk -t1 -c16` (nginx's one worker
//!    and wrk each keep a core busy), one 60 s run per minute of `--minutes`,
//!    with a barrier after each run. The tracer's VmRSS is read every 10 s;
//!    the first minute is warm-up, after it max/min must be at most 1.05.
//! 2. Churn: `ab -n N` (HTTP/1.0 without keep-alive: one request per
//!    connection). nginx's log must show N requests, each the first of its
//!    connection, the tracer must have seen at least 2N connections open
//!    (both ends are traced), and VmRSS after the churn must be at most 1.05
//!    times VmRSS before it. Then a process makes connections a closed port
//!    refuses and exits without closing them: sockets never established,
//!    which the kernel's table once kept for good.
//! 3. Rest: both connection tables, the daemon's (`tracer_connections`) and
//!    the kernel's (`tracer_kernel_connections`), must come back to what they
//!    held before the load: the soak's own scrape connection (one keep-alive
//!    connection for the whole soak, see [`MetricsConn`]) and whatever other
//!    processes kept open meanwhile.
//!
//! At every barrier counted must equal served exactly: the tracer's
//! server-side count for nginx, once settled, against the lines of nginx's
//! access log. A barrier is exact because the load has stopped and a marker
//! request, sent last, has reached the log (see [`barrier`]).
//!
//! Output: progress on stderr; a markdown report (machine, command, figures,
//! criteria with pass/FAIL) on stdout. The exit status is non-zero if a
//! criterion failed or a part could not run; the peers' logs are kept then.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::bench::{
    command_line, fmt_int, fmt_kib, foreign_tracers, free_port, http_get, machine_table, preflight,
    run_wrk, vm_kib, wait_for_quiet, wrk_command, Nginx, Proc, Scrape, Tracer, TracerBin, WorkDir,
    LOSS_COUNTERS, NGINX_SERVICE, SERVER_COUNT,
};

/// Options of `cargo xtask soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Minutes of keep-alive load at saturation; the first is warm-up.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=1440))]
    pub minutes: u64,
    /// Short connections (one request each) of the churn part.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1_000_000,
        value_parser = clap::value_parser!(u64).range(1_000..=100_000_000)
    )]
    pub short_connections: u64,
    /// The tracer binary to soak; without it the release binary is built.
    #[arg(long, value_name = "PATH")]
    pub tracer: Option<PathBuf>,
}

/// VmRSS is read this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples before this much of the keep-alive part are warm-up (the ring
/// buffers' pages and the allocator's arenas fill during it).
const WARM_UP: Duration = Duration::from_secs(60);
/// Largest max/min of VmRSS after warm-up, and of after/before the churn.
const RSS_FLAT: f64 = 1.05;
/// Seconds of each keep-alive wrk run: one barrier a minute.
const WRK_RUN_SECONDS: u64 = 60;
/// ab's concurrent connections: enough to keep nginx's one worker busy.
const AB_CONCURRENCY: u32 = 32;
/// The path of the barrier requests, found in the access log.
const MARKER: &str = "/soak-barrier";
/// nginx's access log line: whether the request was its connection's
/// first (churn: every one must be), and its path (the barrier marker).
const LOG_FORMAT: &str = "$connection_requests $request_uri";
/// Longer than the daemon's refresh of `tracer_kernel_connections` (5 s),
/// so that a scrape this long after another has a fresh count.
const KERNEL_COUNT_FRESH: Duration = Duration::from_secs(6);
/// Connections the closed port refuses (fewer than the default limit of
/// 1,024 open files).
const REFUSED_CONNECTS: u32 = 500;
/// Makes `n` non-blocking connects to `port` and exits without closing the
/// sockets: the kernel closes them at exit, with no `close` call to see.
const REFUSED_CLIENT: &str = r#"
import os, socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
sockets = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except (BlockingIOError, ConnectionRefusedError):
        pass
    sockets.append(s)
os._exit(0)
"#;
/// Longest wait for the tables to come back to their baseline.
const REST_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(tracer: &Path, args: &SoakArgs) -> Result<()> {
    if let Some(path) = &args.tracer {
        if !path.is_file() {
            bail!("--tracer {}: no such file", path.display());
        }
    }
    preflight("soak", tracer, &["nginx", "wrk", "ab", "python3"])?;
    let started = Instant::now();
    let dir = WorkDir::named("tracer-soak")?;
    let result = soak(tracer, &dir, args);
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            dir.keep();
            return Err(e.context(format!(
                "soak could not run (logs kept in {})",
                dir.path.display()
            )));
        }
    };
    let text = report.markdown(args, tracer, started.elapsed());
    println!("{text}");
    let failed: Vec<&str> = report
        .criteria()
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.what)
        .collect();
    if !failed.is_empty() {
        dir.keep();
        bail!(
            "soak failed: {} (logs kept in {})",
            failed.join("; "),
            dir.path.display()
        );
    }
    Ok(())
}

fn say(message: &str) {
    eprintln!("xtask soak: {message}");
}

/// Everything the soak measured.
struct Report {
    /// Other `tracer` processes seen at the start or the end: their hooks tax
    /// nginx too (throughput only; their tables are their own).
    foreign: Vec<u32>,
    baseline: Tables,
    keep_alive: KeepAlive,
    churn: Churn,
    rest: Tables,
    /// How long the tables took to come back to the baseline.
    rest_after: Duration,
    /// Non-zero loss counters at the end, `name{labels} value`.
    losses: Vec<String>,
}

/// Both connection tables, from one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tables {
    daemon: f64,
    kernel: f64,
}

impl Tables {
    fn of(scrape: &Scrape) -> Self {
        Self {
            daemon: scrape.sum("tracer_connections", &[]),
            kernel: scrape.sum("tracer_kernel_connections", &[]),
        }
    }
}

/// One reading of the tracer, every `SAMPLE_EVERY` from the keep-alive
/// part's start.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    tables: Tables,
}

/// Counted and served at one barrier, both since nginx started.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    served: u64,
    counted: f64,
}

struct KeepAlive {
    /// Requests/s of each wrk run.
    rps: Vec<f64>,
    /// Socket errors and non-2xx answers wrk reported.
    wrk_errors: Vec<String>,
    checkpoints: Vec<Checkpoint>,
    /// Until the end of the churn, so that part can be read from them too.
    samples: Vec<Sample>,
    /// When the keep-alive part ended, from its start.
    ended: Duration,
    /// Sampling stopped early (the tracer stopped answering, say).
    sampling_error: Option<String>,
}

struct Churn {
    /// `--short-connections`.
    asked: u64,
    /// ab's own figures: complete and failed requests, and requests/s.
    complete: u64,
    failed: u64,
    rps: f64,
    /// From nginx's log: requests, and those that were their connection's
    /// first.
    requests: u64,
    first_requests: u64,
    /// `tracer_events_total{kind="open"}` and `{kind="close"}` during it.
    opens: f64,
    closes: f64,
    checkpoint: Checkpoint,
    rss_before_kib: u64,
    rss_after_kib: u64,
}

fn soak(tracer: &Path, dir: &WorkDir, args: &SoakArgs) -> Result<Report> {
    let mut foreign = wait_for_quiet(Duration::from_secs(30));
    let mut nginx = Nginx::start_with_log_format(dir, "soak", Some(LOG_FORMAT))?;
    let mut daemon = Tracer::start(&TracerBin::plain(tracer), dir, "soak", &[])?;
    let mut log = AccessLog::new(nginx.log.clone());
    let mut conn = MetricsConn::new(daemon.addr);
    // The first scrape opens the connection; the daemon may not have read
    // its open yet. One a while later finds it, and a fresh kernel count.
    conn.scrape()?;
    thread::sleep(KERNEL_COUNT_FRESH);
    let baseline = Tables::of(&conn.scrape()?);
    say(&format!(
        "at rest before the load: {} connections in the daemon's table, {} in the kernel's",
        baseline.daemon, baseline.kernel
    ));

    let start = Instant::now();
    let sampler = Sampler::spawn(daemon.proc.pid(), conn, start);
    let mut barriers = Barriers::default();
    let mut keep_alive = KeepAlive {
        rps: Vec::new(),
        wrk_errors: Vec::new(),
        checkpoints: Vec::new(),
        samples: Vec::new(),
        ended: Duration::ZERO,
        sampling_error: None,
    };
    for minute in 1..=args.minutes {
        say(&format!(
            "keep-alive minute {minute}/{}: {}",
            args.minutes,
            wrk_command(nginx.port, WRK_RUN_SECONDS)
        ));
        let wrk = run_wrk(dir, &format!("soak-{minute}"), nginx.port, WRK_RUN_SECONDS)?;
        keep_alive.rps.push(wrk.rps);
        keep_alive.wrk_errors.extend(wrk.errors);
        let checkpoint = barriers.pass(&nginx, &mut daemon, &mut log)?;
        say(&format!(
            "  {} req/s; counted {:.0} of {} served so far, VmRSS {}",
            fmt_int(wrk.rps),
            checkpoint.counted,
            checkpoint.served,
            fmt_kib(vm_kib(daemon.proc.pid(), "VmRSS")?)
        ));
        keep_alive.checkpoints.push(checkpoint);
    }
    keep_alive.ended = start.elapsed();

    let churn = churn(dir, &nginx, &mut daemon, &mut log, &mut barriers, args)?;
    let (samples, mut conn, sampling_error) = sampler.stop()?;
    keep_alive.samples = samples;
    keep_alive.sampling_error = sampling_error;

    say("waiting for both connection tables to come back to their baseline");
    let (rest, rest_after) = wait_for_rest(&mut conn, baseline)?;
    let losses = conn.scrape()?.nonzero(&LOSS_COUNTERS);
    foreign.extend(foreign_tracers(&[daemon.proc.pid()]));
    foreign.sort_unstable();
    foreign.dedup();
    daemon.proc.stop(libc::SIGTERM, Duration::from_secs(10))?;
    nginx.stop_and_count()?;
    Ok(Report {
        foreign,
        baseline,
        keep_alive,
        churn,
        rest,
        rest_after,
        losses,
    })
}

fn churn(
    dir: &WorkDir,
    nginx: &Nginx,
    daemon: &mut Tracer,
    log: &mut AccessLog,
    barriers: &mut Barriers,
    args: &SoakArgs,
) -> Result<Churn> {
    let n = args.short_connections;
    let command = ab_command(nginx.port, n);
    say(&format!("churn: {command}"));
    let before = daemon.scrape()?;
    let rss_before_kib = vm_kib(daemon.proc.pid(), "VmRSS")?;
    let (requests_before, first_before) = (log.requests(), log.first_requests);
    let mut cmd = Command::new("ab");
    cmd.args(command.split_whitespace().skip(1));
    let mut ab = Proc::spawn("ab-soak", &mut cmd, &dir.path)?;
    // ab has done at least 2,000 connections/s on a busy 2-CPU machine.
    let timeout = Duration::from_secs(n / 500 + 300);
    let status = ab
        .wait_timeout(timeout)?
        .ok_or_else(|| anyhow!("ab did not finish within {timeout:?}"))?;
    let out = fs::read_to_string(&ab.stdout).unwrap_or_default();
    if !status.success() {
        bail!("ab failed ({status}):\n{out}\n{}", ab.stderr_tail());
    }
    let ab_figure = |label: &str| -> Result<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("ab printed no `{label}` line:\n{out}"))
    };
    refused_connects(dir)?;
    let checkpoint = barriers.pass(nginx, daemon, log)?;
    let after = daemon.scrape()?;
    let events = |s: &Scrape, kind: &str| s.sum("tracer_events_total", &[("kind", kind)]);
    let churn = Churn {
        asked: n,
        complete: ab_figure("Complete requests:")? as u64,
        failed: ab_figure("Failed requests:")? as u64,
        rps: ab_figure("Requests per second:")?,
        requests: log.requests() - requests_before,
        first_requests: log.first_requests - first_before,
        opens: events(&after, "open") - events(&before, "open"),
        closes: events(&after, "close") - events(&before, "close"),
        checkpoint,
        rss_before_kib,
        rss_after_kib: vm_kib(daemon.proc.pid(), "VmRSS")?,
    };
    say(&format!(
        "  {} connections/s; {} requests logged, {} of them first on their connection; \
         {:.0} opens seen; counted {:.0} of {} served so far",
        fmt_int(churn.rps),
        churn.requests,
        churn.first_requests,
        churn.opens,
        checkpoint.counted,
        checkpoint.served
    ));
    Ok(churn)
}

fn refused_connects(dir: &WorkDir) -> Result<()> {
    // Nothing listens on a port just found free.
    let port = free_port()?;
    say(&format!(
        "churn: {REFUSED_CONNECTS} connects refused by port {port}, left open at exit"
    ));
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(REFUSED_CLIENT)
        .arg(REFUSED_CONNECTS.to_string())
        .arg(port.to_string());
    let mut client = Proc::spawn("refused-client", &mut cmd, &dir.path)?;
    let status = client
        .wait_timeout(Duration::from_secs(60))?
        .ok_or_else(|| anyhow!("the refused-connects client did not finish within 60 s"))?;
    if !status.success() {
        bail!(
            "the refused-connects client failed ({status}):\n{}",
            client.stderr_tail()
        );
    }
    Ok(())
}

fn ab_command(port: u16, n: u64) -> String {
    // -r: a failed receive is counted, not fatal; -s 30: its socket timeout.
    format!("ab -q -r -s 30 -n {n} -c {AB_CONCURRENCY} http://127.0.0.1:{port}/")
}

/// Polls until both tables hold what they held before the load, then checks
/// once more after a fresh kernel count; the tables and the time taken.
fn wait_for_rest(conn: &mut MetricsConn, baseline: Tables) -> Result<(Tables, Duration)> {
    let start = Instant::now();
    loop {
        let tables = Tables::of(&conn.scrape()?);
        if tables == baseline {
            // The kernel count may be up to 5 s old: confirm with a new one.
            thread::sleep(KERNEL_COUNT_FRESH);
            let confirmed = Tables::of(&conn.scrape()?);
            if confirmed == baseline {
                return Ok((confirmed, start.elapsed()));
            }
        }
        if start.elapsed() > REST_TIMEOUT {
            return Ok((tables, start.elapsed()));
        }
        thread::sleep(Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------- barrier

/// Barriers passed so far: the number of marker lines the log must show.
#[derive(Default)]
struct Barriers {
    passed: u64,
}

impl Barriers {
    /// With the load stopped: sends a marker request to nginx, has nginx
    /// write out its buffered log (SIGUSR1 reopens the log, which flushes it)
    /// until the marker is in it, then lets the tracer's count settle. nginx's
    /// one worker logs requests in the order it finishes them, so every
    /// request before the marker is in the log, and the tracer has seen them
    /// all once its count stops moving.
    fn pass(
        &mut self,
        nginx: &Nginx,
        daemon: &mut Tracer,
        log: &mut AccessLog,
    ) -> Result<Checkpoint> {
        self.passed += 1;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, nginx.port));
        match http_get(addr, MARKER)? {
            (200, _) => {}
            (status, _) => bail!("nginx answered {status} to the barrier request"),
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        'flushed: loop {
            nginx.proc.signal(libc::SIGUSR1);
            let again = Instant::now() + Duration::from_secs(2);
            while Instant::now() < again {
                log.read_new()?;
                if log.markers >= self.passed {
                    break 'flushed;
                }
                thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() > deadline {
                bail!(
                    "barrier {}: the marker request never reached {}",
                    self.passed,
                    log.path.display()
                );
            }
        }
        let (counted, _) =
            daemon.settle(|s| s.sum(SERVER_COUNT, &[("service_name", NGINX_SERVICE)]))?;
        Ok(Checkpoint {
            served: log.lines,
            counted,
        })
    }
}

/// nginx's access log (`LOG_FORMAT`), read as it grows.
struct AccessLog {
    path: PathBuf,
    /// Bytes read so far: always just after a newline.
    offset: u64,
    lines: u64,
    /// Lines of the barrier's marker requests.
    markers: u64,
    /// Lines of other requests that were the first of their connection.
    first_requests: u64,
}

impl AccessLog {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            lines: 0,
            markers: 0,
            first_requests: 0,
        }
    }

    /// Requests other than the barriers' markers.
    fn requests(&self) -> u64 {
        self.lines - self.markers
    }

    /// Counts the whole lines written since the last call.
    fn read_new(&mut self) -> Result<()> {
        let mut file = match fs::File::open(&self.path) {
            Ok(file) => file,
            // nginx creates it at start, but a log reopen renames nothing:
            // missing means nothing logged yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", self.path.display()))?;
        // A line nginx is still writing waits for the next call.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in bytes[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            self.lines += 1;
            let (requests, uri) = match line.iter().position(|&b| b == b' ') {
                Some(space) => (&line[..space], &line[space + 1..]),
                None => (line, &b""[..]),
            };
            if uri == MARKER.as_bytes() {
                self.markers += 1;
            } else if requests == b"1" {
                self.first_requests += 1;
            }
        }
        self.offset += whole as u64;
        Ok(())
    }
}

// ---------------------------------------------------------------- sampling

/// One keep-alive connection to the tracer's `/metrics` for the whole soak
/// (reopened only if the server closes it). A connection per scrape would
/// leave the daemon's table at rest to a race, its open read or not yet
/// read when the daemon answers; this one is always in both tables, once.
struct MetricsConn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl MetricsConn {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, stream: None }
    }

    fn scrape(&mut self) -> Result<Scrape> {
        self.get().or_else(|_| {
            // The server may have closed the idle connection: one new try.
            self.stream = None;
            self.get()
        })
    }

    fn get(&mut self) -> Result<Scrape> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                self.stream.insert(BufReader::new(stream))
            }
        };
        stream
            .get_mut()
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: tracer\r\n\r\n")?;
        let mut status = String::new();
        stream.read_line(&mut status)?;
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        let mut length = None;
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header)? == 0 {
                bail!("/metrics: connection closed in the headers");
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.ok_or_else(|| anyhow!("/metrics: no Content-Length"))?;
        let mut body = vec![0; length];
        stream.read_exact(&mut body)?;
        let body = String::from_utf8(body).context("/metrics: not UTF-8")?;
        if code != "200" {
            bail!("/metrics answered {}: {}", status.trim(), body.trim());
        }
        Ok(Scrape(body))
    }
}

/// Reads the tracer's VmRSS and both tables every `SAMPLE_EVERY` on a
/// thread of its own, while the load runs on this one.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(Vec<Sample>, MetricsConn, Option<String>)>,
}

impl Sampler {
    fn spawn(pid: u32, mut conn: MetricsConn, start: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = start;
            let error = loop {
                let rss = vm_kib(pid, "VmRSS");
                let tables = conn.scrape().map(|s| Tables::of(&s));
                match (rss, tables) {
                    (Ok(rss_kib), Ok(tables)) => samples.push(Sample {
                        at: start.elapsed(),
                        rss_kib,
                        tables,
                    }),
                    (Err(e), _) | (_, Err(e)) => break Some(format!("{e:#}")),
                }
                next += SAMPLE_EVERY;
                while Instant::now() < next && !stopped.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                }
                if stopped.load(Ordering::Relaxed) {
                    break None;
                }
            };
            (samples, conn, error)
        });
        Self { stop, thread }
    }

    /// The samples, the connection back, and why sampling stopped early.
    fn stop(self) -> Result<(Vec<Sample>, MetricsConn, Option<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the sampling thread panicked"))
    }
}

// ---------------------------------------------------------------- report

/// One line of the criteria table.
struct Criterion {
    what: &'static str,
    measured: String,
    pass: bool,
}

/// VmRSS after warm-up: min, max, last (KiB) and how many samples.
struct Flatness {
    min: u64,
    max: u64,
    last: u64,
    samples: usize,
}

impl Flatness {
    fn ratio(&self) -> f64 {
        self.max as f64 / self.min.max(1) as f64
    }
}

impl KeepAlive {
    fn after_warm_up(&self) -> Option<Flatness> {
        let rss: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.at >= WARM_UP && s.at <= self.ended)
            .map(|s| s.rss_kib)
            .collect();
        Some(Flatness {
            min: *rss.iter().min()?,
            max: *rss.iter().max()?,
            last: *rss.last()?,
            samples: rss.len(),
        })
    }
}

impl Report {
    fn criteria(&self) -> Vec<Criterion> {
        let ka = &self.keep_alive;
        let churn = &self.churn;
        let n = churn.asked;
        let mut criteria = Vec::new();
        let flat = ka.after_warm_up();
        criteria.push(Criterion {
            what: "keep-alive: VmRSS after warm-up flat, max/min ≤ 1.05",
            measured: match &flat {
                Some(f) => format!(
                    "{:.3} ({} to {}, {} samples)",
                    f.ratio(),
                    fmt_kib(f.min),
                    fmt_kib(f.max),
                    f.samples
                ),
                None => "no samples after warm-up".into(),
            },
            // One sample cannot show a trend.
            pass: flat
                .as_ref()
                .is_some_and(|f| f.samples >= 2 && f.ratio() <= RSS_FLAT)
                && ka.sampling_error.is_none(),
        });
        let exact = |c: &Checkpoint| c.counted == c.served as f64;
        let worst = ka
            .checkpoints
            .iter()
            .map(|c| c.counted / c.served.max(1) as f64)
            .fold(f64::INFINITY, f64::min);
        criteria.push(Criterion {
            what: "keep-alive: counted/served = 1.000 at every barrier",
            measured: format!(
                "{} of {} barriers exact, worst {worst:.4}",
                ka.checkpoints.iter().filter(|c| exact(c)).count(),
                ka.checkpoints.len()
            ),
            pass: !ka.checkpoints.is_empty() && ka.checkpoints.iter().all(exact),
        });
        criteria.push(Criterion {
            what: "churn: N requests on N connections in nginx's log",
            measured: format!(
                "{} requests, {} first on their connection (N = {n})",
                churn.requests, churn.first_requests
            ),
            pass: churn.requests == n && churn.first_requests == n,
        });
        criteria.push(Criterion {
            what: "churn: the tracer saw every connection open and close (≥ 2N opens, as many closes)",
            measured: format!("{:.0} opens, {:.0} closes", churn.opens, churn.closes),
            // Both ends of each of the N connections, and the few the soak
            // and other processes made meanwhile; every one closed again.
            pass: churn.opens >= 2.0 * n as f64 && churn.closes == churn.opens,
        });
        criteria.push(Criterion {
            what: "churn: counted/served = 1.000",
            measured: format!(
                "{:.0} of {} ({:.4})",
                churn.checkpoint.counted,
                churn.checkpoint.served,
                churn.checkpoint.counted / churn.checkpoint.served.max(1) as f64
            ),
            pass: exact(&churn.checkpoint),
        });
        let grown = churn.rss_after_kib as f64 / churn.rss_before_kib.max(1) as f64;
        criteria.push(Criterion {
            what: "churn: VmRSS after ≤ 1.05 × before",
            measured: format!(
                "{grown:.3} ({} to {})",
                fmt_kib(churn.rss_before_kib),
                fmt_kib(churn.rss_after_kib)
            ),
            pass: grown <= RSS_FLAT,
        });
        criteria.push(Criterion {
            what: "rest: daemon's table back to its baseline",
            measured: format!("{} (baseline {})", self.rest.daemon, self.baseline.daemon),
            pass: self.rest.daemon == self.baseline.daemon,
        });
        criteria.push(Criterion {
            what: "rest: kernel's table back to its baseline",
            measured: format!("{} (baseline {})", self.rest.kernel, self.baseline.kernel),
            pass: self.rest.kernel == self.baseline.kernel,
        });
        criteria
    }
}

impl Report {
    fn markdown(&self, args: &SoakArgs, tracer: &Path, elapsed: Duration) -> String {
        let mut md = String::new();
        let m = &mut md;
        let _ = writeln!(m, "## Soak results\n");
        machine_table(m, &[("nginx", "-v"), ("wrk", "-v"), ("ab", "-V")]);
        let _ = writeln!(
            m,
            "Command: `{}` (took {:.0} s), tracer `{}`.\n",
            command_line(),
            elapsed.as_secs_f64(),
            tracer.display()
        );
        if !self.foreign.is_empty() {
            let _ = writeln!(
                m,
                "Other `tracer` processes ran meanwhile (pids {:?}): their hooks slowed nginx \
                 too.\n",
                self.foreign
            );
        }
        self.keep_alive_section(m, args);
        self.churn_section(m, args);
        let _ = writeln!(m, "### At rest\n");
        let _ = writeln!(
            m,
            "Both tables hold the soak's own keep-alive scrape connection (its client end; \
             the tracer does not trace itself) and whatever other processes had open.\n"
        );
        let _ = writeln!(
            m,
            "| table | before the load | after it |\n| --- | ---: | ---: |"
        );
        let _ = writeln!(
            m,
            "| daemon's (`tracer_connections`) | {} | {} |",
            self.baseline.daemon, self.rest.daemon
        );
        let _ = writeln!(
            m,
            "| kernel's (`tracer_kernel_connections`) | {} | {} |",
            self.baseline.kernel, self.rest.kernel
        );
        let _ = writeln!(
            m,
            "\n{} {:.0} s after the churn ended. Non-zero loss counters at the end: {}.\n",
            if self.rest == self.baseline {
                "Back to the baseline"
            } else {
                "Not back to the baseline"
            },
            self.rest_after.as_secs_f64(),
            if self.losses.is_empty() {
                "none".to_string()
            } else {
                self.losses
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
        if self.losses.iter().any(|l| l.contains("ringbuf_full")) {
            let _ = writeln!(
                m,
                "Events were lost to full rings (`ringbuf_full`): each lost close leaves its \
                 connection in the daemon's table until its process exits, and each lost data \
                 event can cost a request its count.\n"
            );
        }
        let _ = writeln!(
            m,
            "### Criteria\n\n| criterion | measured | result |\n| --- | --- | --- |"
        );
        for c in self.criteria() {
            let _ = writeln!(
                m,
                "| {} | {} | {} |",
                c.what,
                c.measured,
                if c.pass { "pass" } else { "**FAIL**" }
            );
        }
        md
    }

    fn keep_alive_section(&self, m: &mut String, args: &SoakArgs) {
        let ka = &self.keep_alive;
        let _ = writeln!(
            m,
            "### Keep-alive saturation: {} runs of `{}`\n",
            args.minutes,
            wrk_command(0, WRK_RUN_SECONDS).replace(":0/", ":PORT/")
        );
        let _ = writeln!(
            m,
            "After each run, a barrier: served = nginx's access-log lines so far, counted = \
             `{SERVER_COUNT}{{service_name=\"{NGINX_SERVICE}\"}}` once settled.\n"
        );
        let _ = writeln!(
            m,
            "| minute | req/s | served | counted | counted/served |\n| ---: | ---: | ---: | ---: | ---: |"
        );
        for (i, (c, rps)) in ka.checkpoints.iter().zip(&ka.rps).enumerate() {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {:.0} | {:.4} |",
                i + 1,
                fmt_int(*rps),
                c.served,
                c.counted,
                c.counted / c.served.max(1) as f64
            );
        }
        if !ka.wrk_errors.is_empty() {
            let _ = writeln!(m, "\nwrk reported: {}", ka.wrk_errors.join("; "));
        }
        let keep_alive: Vec<&Sample> = ka.samples.iter().filter(|s| s.at <= ka.ended).collect();
        let _ = writeln!(
            m,
            "\nVmRSS every {} s from the first run's start (warm-up: the first {} s): {}.",
            SAMPLE_EVERY.as_secs(),
            WARM_UP.as_secs(),
            keep_alive
                .iter()
                .map(|s| format!("{:.1}", s.rss_kib as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(f) = ka.after_warm_up() {
            let _ = writeln!(
                m,
                "After warm-up: min {}, max {}, last {}, max/min {:.3} ({} samples).",
                fmt_kib(f.min),
                fmt_kib(f.max),
                fmt_kib(f.last),
                f.ratio(),
                f.samples
            );
        }
        if let Some(e) = &ka.sampling_error {
            let _ = writeln!(m, "Sampling stopped early: {e}.");
        }
        let most = |of: fn(&Tables) -> f64| {
            keep_alive
                .iter()
                .map(|s| of(&s.tables))
                .fold(f64::NAN, f64::max)
        };
        let _ = writeln!(
            m,
            "Under load the daemon's table held up to {} connections, the kernel's up to {} \
             (both ends of wrk's 16 connections, and the baseline).\n",
            most(|t| t.daemon),
            most(|t| t.kernel)
        );
    }

    fn churn_section(&self, m: &mut String, args: &SoakArgs) {
        let c = &self.churn;
        let ka = &self.keep_alive;
        let _ = writeln!(
            m,
            "### Churn: `{}`\n",
            ab_command(0, args.short_connections).replace(":0/", ":PORT/")
        );
        let _ = writeln!(m, "| figure | value |\n| --- | ---: |");
        let rows = [
            ("ab: complete requests", c.complete.to_string()),
            ("ab: failed requests", c.failed.to_string()),
            ("ab: connections/s", fmt_int(c.rps)),
            ("nginx's log: requests", c.requests.to_string()),
            (
                "nginx's log: requests that were their connection's first",
                c.first_requests.to_string(),
            ),
            (
                "tracer: connections opened (`tracer_events_total{kind=\"open\"}`)",
                format!("{:.0}", c.opens),
            ),
            (
                "tracer: connections closed (`{kind=\"close\"}`)",
                format!("{:.0}", c.closes),
            ),
            (
                "counted / served since nginx started",
                format!("{:.0} / {}", c.checkpoint.counted, c.checkpoint.served),
            ),
            (
                "connects refused by a closed port, left open at exit",
                REFUSED_CONNECTS.to_string(),
            ),
            ("tracer VmRSS before", fmt_kib(c.rss_before_kib)),
            ("tracer VmRSS after", fmt_kib(c.rss_after_kib)),
        ];
        for (label, value) in rows {
            let _ = writeln!(m, "| {label} | {value} |");
        }
        let during: Vec<&Sample> = ka.samples.iter().filter(|s| s.at > ka.ended).collect();
        if !during.is_empty() {
            let _ = writeln!(
                m,
                "\nDuring the churn, every {} s: VmRSS (MiB) {}; daemon's table {}; kernel's \
                 table {} (a walk of a changing table may count a socket twice).",
                SAMPLE_EVERY.as_secs(),
                during
                    .iter()
                    .map(|s| format!("{:.1}", s.rss_kib as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(", "),
                during
                    .iter()
                    .map(|s| s.tables.daemon.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                during
                    .iter()
                    .map(|s| s.tables.kernel.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        let _ = writeln!(m);
    }
}
