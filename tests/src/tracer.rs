//! The daemon under test: start `tracer run` on a free port, wait for
//! `/readyz`, scrape `/metrics`, and assert exact counts against ground truth.
//!
//! The binary is `$TRACER_BIN` (the xtask sets it), else
//! `<workspace>/target/release/tracer`.
//!
//! Counting is asynchronous (kernel ring buffer → daemon pipeline), so an
//! assertion goes in two steps:
//! 1. [`Tracer::barrier`]: one more request to the peer, on a path no one else
//!    uses, and a wait until the tracer has counted it. Every event of the
//!    test's traffic entered the (single, ordered) ring buffer before the
//!    barrier's, so the pipeline has seen them all by then — which makes an
//!    over-count visible instead of racing with it;
//! 2. [`Tracer::expect`]: poll until every [`Want`] holds or
//!    [`METRICS_TIMEOUT`] passes, then assert equality on one final scrape and
//!    print the relevant series, the tracer's own counters and its stderr.

use std::fmt::Write as _;
use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::net::{free_port, read_response, Response};
use crate::openmetrics::Scrape;
use crate::peers::Peer;
use crate::process::{Guard, TestDir};
use crate::wait::{wait_until, METRICS_TIMEOUT, START_TIMEOUT};

pub const SERVER_COUNT: &str = "http_server_request_duration_seconds_count";
pub const CLIENT_COUNT: &str = "http_client_request_duration_seconds_count";

/// The tracer binary: `$TRACER_BIN` or `<workspace>/target/release/tracer`.
pub fn tracer_bin() -> PathBuf {
    let bin = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/release/tracer"));
    assert!(
        bin.is_file(),
        "tracer binary {} not found: build it with `cargo build --release -p tracer` \
         or set TRACER_BIN",
        bin.display()
    );
    bin
}

/// Runs `tracer <args>` to completion (at most `timeout`) and returns its
/// exit status, stdout and stderr.
pub fn run_cli(
    dir: &TestDir,
    name: &str,
    args: &[&str],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(tracer_bin());
    cmd.args(args);
    let mut guard = Guard::spawn(name, &mut cmd, dir);
    let status = wait_until(timeout, || guard.exited());
    let Some(status) = status else {
        panic!(
            "`tracer {}` did not exit within {timeout:?}; stderr:\n{}",
            args.join(" "),
            guard.stderr()
        );
    };
    (status, guard.stdout(), guard.stderr())
}

/// Starts `tracer watch <args>`; its stdout (one line per exchange) is in
/// the guard's stdout file.
pub fn spawn_watch(dir: &TestDir, args: &[&str]) -> Guard {
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("watch").args(with_budget(args));
    Guard::spawn("tracer-watch", &mut cmd, dir)
}

/// `args` with `--memory-mib 512` unless they set it: the sizes the tests
/// assume (8 MiB of rings, 65,536 connections), whatever memory limit the
/// cgroup running the suite has.
fn with_budget<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    if !args.contains(&"--memory-mib") {
        args.extend(["--memory-mib", "512"]);
    }
    args
}

/// The complete lines `tracer watch` (or any guard) printed so far.
pub fn printed_lines(watch: &Guard) -> Vec<String> {
    let out = watch.stdout();
    let complete = out.rfind('\n').map_or("", |i| &out[..i]);
    complete.lines().map(str::to_string).collect()
}

/// Bytes [`try_get`] reads per call at most. Each read of a traced socket
/// is one event, truncated and counted when it is longer than the capture
/// limit, and shed to 512 bytes under pressure: reads this short keep the
/// suite's own scrapes out of `tracer_truncated_events_total` with any
/// `--capture-bytes` from 512 up (`tests/forced_loss.rs` counts truncations
/// exactly) and out of `capture_shed` (`tests/memory_budget.rs`).
pub const READ_CHUNK: usize = 512;

/// A reader that reads at most [`READ_CHUNK`] bytes per call, even into a
/// larger buffer.
struct Capped<R>(R);

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(READ_CHUNK);
        self.0.read(&mut buf[..n])
    }
}

/// `GET path` on a fresh connection, without panicking on network errors.
pub fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut reader = BufReader::with_capacity(READ_CHUNK, Capped(stream));
    read_response(&mut reader, false)
}

/// A running `tracer run`, stopped (SIGTERM) on drop.
#[derive(Debug)]
pub struct Tracer {
    guard: Guard,
    addr: SocketAddr,
}

impl Tracer {
    /// Starts `tracer run --metrics-addr 127.0.0.1:<free> <extra>` and waits
    /// until `/readyz` answers 200 (probes attached, reader running).
    pub fn start(dir: &TestDir, extra: &[&str]) -> Self {
        Self::start_via(dir, &[], &tracer_bin(), &with_budget(extra))
    }

    /// As [`Tracer::start`], with `bin` started by `launcher` (a command
    /// and its arguments, such as `setpriv ...`) when it is not empty.
    pub fn start_via(dir: &TestDir, launcher: &[&str], bin: &Path, extra: &[&str]) -> Self {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.args(["run", "--metrics-addr", &addr.to_string()])
            .args(extra);
        let mut guard = Guard::spawn("tracer", &mut cmd, dir);
        let ready = wait_until(START_TIMEOUT, || {
            guard.assert_running();
            try_get(addr, "/readyz").ok().filter(|r| r.status == 200)
        });
        assert!(
            ready.is_some(),
            "tracer not ready on {addr}/readyz within {START_TIMEOUT:?}; stderr:\n{}",
            guard.stderr()
        );
        Self { guard, addr }
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Scrapes and parses `/metrics` (which must answer 200 with `# EOF`).
    pub fn scrape(&self) -> Scrape {
        let response = try_get(self.addr, "/metrics").unwrap_or_else(|e| {
            panic!(
                "scraping {}/metrics failed: {e}; tracer stderr:\n{}",
                self.addr,
                self.guard.stderr_tail(40)
            )
        });
        assert_eq!(
            response.status, 200,
            "/metrics answered {}",
            response.status
        );
        let text = response.body_text();
        let scrape = Scrape::parse(&text)
            .unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics text: {e}"));
        assert!(scrape.has_eof, "/metrics does not end with # EOF");
        scrape
    }

    /// Sends `GET /barrier/<token>` to `peer` and waits until the tracer has
    /// counted it on the peer's server side (and the peer has logged it), so
    /// everything the test sent before has gone through the pipeline.
    pub fn barrier(&self, peer: &dyn Peer) {
        let path = format!("/barrier/{}", barrier_token());
        let response = try_get(peer.addr(), &path)
            .unwrap_or_else(|e| panic!("barrier request to {}: {e}", peer.addr()));
        assert_eq!(response.status, 204, "barrier answered {}", response.status);
        let logged = wait_until(METRICS_TIMEOUT, || {
            peer.access_log().has_path(&path).then_some(())
        });
        assert!(logged.is_some(), "{} never logged {path}", peer.service());
        let filter = [
            ("service_name", peer.service()),
            ("http_route", path.as_str()),
        ];
        let counted = wait_until(METRICS_TIMEOUT, || {
            (self.scrape().count(SERVER_COUNT, &filter) >= 1).then_some(())
        });
        if counted.is_none() {
            let scrape = self.scrape();
            panic!(
                "the tracer never counted the barrier request GET {path} served by {} within \
                 {METRICS_TIMEOUT:?}: it is not turning this peer's traffic into metrics.\n\
                 server series of {}:\n{}tracer internals:\n{}tracer stderr:\n{}",
                peer.service(),
                peer.service(),
                scrape.lines(SERVER_COUNT, &[("service_name", peer.service())]),
                scrape.lines("tracer_", &[]),
                self.guard.stderr_tail(40),
            );
        }
    }

    /// Waits until every want holds (or [`METRICS_TIMEOUT`]), then asserts
    /// them all on one scrape. Call [`Tracer::barrier`] first.
    pub fn expect(&self, wants: &[Want]) {
        let _ = wait_until(METRICS_TIMEOUT, || {
            let scrape = self.scrape();
            wants
                .iter()
                .all(|w| w.got(&scrape) == w.count)
                .then_some(())
        });
        let scrape = self.scrape();
        if wants.iter().all(|w| w.got(&scrape) == w.count) {
            return;
        }
        panic!("{}", self.report(&scrape, wants));
    }

    /// The failure report of [`Tracer::expect`].
    pub fn report(&self, scrape: &Scrape, wants: &[Want]) -> String {
        let mut out =
            format!("tracer counts differ from ground truth (waited {METRICS_TIMEOUT:?}):\n");
        for w in wants {
            let got = w.got(scrape);
            let mark = if got == w.count { "ok  " } else { "FAIL" };
            let _ = writeln!(
                out,
                "  [{mark}] {}: want {}, got {got}",
                w.describe(),
                w.count
            );
        }
        let mut services: Vec<&str> = wants
            .iter()
            .filter_map(|w| w.label_value("service_name"))
            .collect();
        services.sort_unstable();
        services.dedup();
        out.push_str("relevant series (_count of the services involved):\n");
        for service in services {
            out.push_str(&scrape.lines(SERVER_COUNT, &[("service_name", service)]));
            out.push_str(&scrape.lines(CLIENT_COUNT, &[("service_name", service)]));
        }
        for w in wants.iter().filter(|w| w.metric.ends_with("_bucket")) {
            let mut base: Vec<(&str, &str)> = w.filter();
            base.retain(|(k, _)| *k != "le");
            out.push_str(&scrape.lines(&w.metric, &base));
        }
        out.push_str("tracer internals:\n");
        out.push_str(&scrape.lines("tracer_", &[]));
        let _ = write!(
            out,
            "tracer stderr (last 40 lines):\n{}",
            self.guard.stderr_tail(40)
        );
        out
    }

    /// Everything the tracer logged so far.
    pub fn stderr(&self) -> String {
        self.guard.stderr()
    }

    /// Panics if the daemon has exited.
    pub fn assert_running(&mut self) {
        self.guard.assert_running();
    }

    /// SIGTERM and wait: the exit status, whether it needed a SIGKILL, and
    /// everything it logged.
    pub fn stop(mut self) -> (ExitStatus, bool, String) {
        let (status, killed) = self.guard.terminate();
        (status, killed, self.guard.stderr())
    }
}

/// A unique barrier path segment: letters g–z only, so the tracer's route
/// templating (numbers, UUIDs, hex) leaves it alone.
fn barrier_token() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let mut n =
        u64::from(std::process::id()) << 16 | u64::from(SEQ.fetch_add(1, Ordering::Relaxed));
    let mut token = String::new();
    loop {
        token.push(char::from(b'g' + (n % 20) as u8));
        n /= 20;
        if n == 0 {
            break;
        }
    }
    token
}

/// One expected count: a metric, a label filter (every other label summed
/// over) and the exact value.
#[derive(Debug, Clone)]
pub struct Want {
    pub metric: String,
    pub labels: Vec<(String, String)>,
    pub count: u64,
}

impl Want {
    /// `http_server_request_duration_seconds_count` of `service` on `route`.
    pub fn server(service: &str, route: &str) -> Self {
        Self::metric(SERVER_COUNT)
            .label("service_name", service)
            .label("http_route", route)
    }

    /// `http_client_request_duration_seconds_count` of `service` on `route`.
    pub fn client(service: &str, route: &str) -> Self {
        Self::metric(CLIENT_COUNT)
            .label("service_name", service)
            .label("http_route", route)
    }

    /// Any metric, no labels yet, count 0.
    pub fn metric(name: &str) -> Self {
        Self {
            metric: name.to_string(),
            labels: Vec::new(),
            count: 0,
        }
    }

    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.push((name.to_string(), value.to_string()));
        self
    }

    pub fn method(self, method: &str) -> Self {
        self.label("http_request_method", method)
    }

    pub fn status(self, status: u16) -> Self {
        self.label("http_response_status_code", &status.to_string())
    }

    /// The histogram bucket `le` of the same series instead of its count.
    pub fn bucket(mut self, le: &str) -> Self {
        if let Some(base) = self.metric.strip_suffix("_count") {
            self.metric = format!("{base}_bucket");
        }
        self.label("le", le)
    }

    /// The expected value.
    pub fn is(mut self, count: u64) -> Self {
        self.count = count;
        self
    }

    fn label_value(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn filter(&self) -> Vec<(&str, &str)> {
        self.labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// The value on `scrape`.
    pub fn got(&self, scrape: &Scrape) -> u64 {
        scrape.count(&self.metric, &self.filter())
    }

    pub fn describe(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(n, v)| format!("{n}=\"{v}\""))
            .collect();
        format!("{}{{{}}}", self.metric, labels.join(","))
    }
}
