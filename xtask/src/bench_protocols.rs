//! `cargo xtask bench --protocols`: what each protocol parser costs, and
//! what tracing costs the servers of the new protocols.
//!
//! Input: the release tracer and the peers the end-to-end suite uses
//! (started through its harness, `tracer_e2e`, so there is one way to run
//! them): nginx with an `http2` listener and h2load, the grpcio peer
//! (`tests/peers/grpc_peer.py`), PostgreSQL with pgbench, MariaDB with
//! mysqlslap, redis-server with redis-benchmark; root.
//!
//! 1. Replay per protocol: `tracer record` while one workload runs, then the
//!    pipeline benchmark on that recording, as the HTTP/1.x replay does:
//!    exchanges per CPU-second of the replaying process and µs per
//!    exchange, beside the HTTP/1.x figure of the same run.
//! 2. Overhead: h2load against nginx and redis-benchmark against
//!    redis-server, each with the tracer off and on, alternated over the
//!    rounds: the clients' own requests per second (medians), and
//!    counted/served with the tracer on: the tracer's count against the
//!    server's (nginx's access log, `INFO commandstats`).
//!
//! Output: a markdown section for the bench's report.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Output},
};

use anyhow::{anyhow, bail, Context, Result};
use tracer_e2e::databases::{Mariadb, Postgres, Redis};
use tracer_e2e::{free_port, Nginx, Peer, TestDir};

use super::{
    fmt_int, median, record, replay_file, say, BenchArgs, Replay, Tracer, TracerBin, WorkDir,
    RECORD_LOAD_SECONDS,
};

/// Options of the protocols part (flattened into `cargo xtask bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProtocolArgs {
    /// Also measure the protocol parsers (a replay per protocol) and the
    /// overhead of tracing h2load against nginx and redis-benchmark against
    /// redis-server. About 3 minutes.
    #[arg(long)]
    pub protocols: bool,
}

/// Requests per h2load overhead run.
const H2LOAD_REQUESTS: u64 = 200_000;

/// Requests per redis-benchmark overhead run (per command).
const REDIS_REQUESTS: u64 = 200_000;

/// One protocol's replay.
pub struct ProtocolReplay {
    pub protocol: &'static str,
    pub workload: String,
    pub replay: Result<Replay, String>,
}

/// One overhead comparison: client throughput off and on, counted/served.
pub struct Overhead {
    pub what: &'static str,
    pub command: String,
    pub off_rps: Vec<f64>,
    pub on_rps: Vec<f64>,
    /// (counted by the tracer, served by the server), per run with the tracer on.
    pub counted: Vec<(u64, u64)>,
}

pub struct Protocols {
    pub replays: Vec<ProtocolReplay>,
    pub overheads: Vec<Result<Overhead, String>>,
}

pub fn run(root: &Path, bin: &TracerBin, dir: &WorkDir, args: &BenchArgs) -> Result<Protocols> {
    let test_dir = TestDir::new("bench-protocols");
    let mut replays = Vec::new();
    for (protocol, workload) in WORKLOADS {
        say(&format!("protocols: recording {protocol}"));
        let result = replay_workload(root, bin.path, dir, &test_dir, protocol, workload)
            .map_err(|e| format!("{e:#}"));
        replays.push(ProtocolReplay {
            protocol,
            workload: workload.to_string(),
            replay: result,
        });
    }
    let overheads = vec![
        h2load_overhead(bin, dir, &test_dir, args.rounds).map_err(|e| format!("{e:#}")),
        redis_overhead(bin, dir, &test_dir, args.rounds).map_err(|e| format!("{e:#}")),
    ];
    Ok(Protocols { replays, overheads })
}

/// The workloads recorded for the replay, by protocol: each runs for about
/// `RECORD_LOAD_SECONDS`.
const WORKLOADS: [(&str, &str); 6] = [
    ("http2", "h2load -c 4 -m 16 -D 3 http://127.0.0.1:PORT/h2"),
    ("grpc", "grpc_peer.py call --unary 4000 (one channel)"),
    ("postgresql", "pgbench -c 2 -T 3 -M prepared"),
    (
        "mysql",
        "mysqlslap --concurrency=2 --number-of-queries=20000 (mixed)",
    ),
    ("redis", "redis-benchmark -c 4 -n 40000 -t set,get"),
    (
        "redis pipelined",
        "redis-benchmark -c 4 -P 16 -n 200000 -t set,get",
    ),
];

fn replay_workload(
    root: &Path,
    tracer: &Path,
    dir: &WorkDir,
    test_dir: &TestDir,
    protocol: &str,
    workload: &str,
) -> Result<Replay> {
    let slug = protocol.replace(' ', "-");
    let seconds = RECORD_LOAD_SECONDS.to_string();
    let (recorded, file) = match protocol {
        "http2" => {
            let (nginx, port) = nginx_h2(test_dir, "        access_log off;\n");
            let url = format!("http://127.0.0.1:{port}/h2");
            let out = record(tracer, dir, &slug, || {
                ok(Command::new("h2load")
                    .args(["-c", "4", "-m", "16", "-D", &seconds])
                    .arg(&url))
            });
            drop(nginx);
            out?
        }
        "grpc" => {
            let port = free_port();
            let log = test_dir.join("grpc-bench.log");
            let script = tracer_e2e::peers_dir().join("grpc_peer.py");
            let _server = tracer_e2e::Guard::spawn(
                "grpc-bench-server",
                Command::new("/usr/bin/python3")
                    .arg(&script)
                    .args(["serve", "--port", &port.to_string(), "--log"])
                    .arg(&log),
                test_dir,
            );
            wait_listening(port)?;
            record(tracer, dir, &slug, || {
                ok(Command::new("/usr/bin/python3").arg(&script).args([
                    "call",
                    "--port",
                    &port.to_string(),
                    "--unary",
                    "4000",
                ]))
            })?
        }
        "postgresql" => {
            let pg = Postgres::start(test_dir);
            let socket = test_dir.join("pgsock");
            ok(Command::new("pgbench")
                .args(["-i", "-s", "1", "-q", "-U", "postgres"])
                .args(["-p", &pg.port().to_string()])
                .arg("-h")
                .arg(&socket)
                .env("PGDATABASE", "postgres"))?;
            record(tracer, dir, &slug, || {
                ok(Command::new("pgbench")
                    .args(pg.tcp_args())
                    .args(["-n", "-c", "2", "-T", &seconds, "-M", "prepared"])
                    .env("PGDATABASE", "postgres"))
            })?
        }
        "mysql" => {
            let db = Mariadb::start(test_dir);
            record(tracer, dir, &slug, || {
                ok(Command::new("mysqlslap")
                    .args(["--host=127.0.0.1", "--protocol=tcp", "--user=root"])
                    .arg(format!("--port={}", db.port()))
                    .args([
                        "--concurrency=2",
                        "--iterations=1",
                        "--number-of-queries=20000",
                    ])
                    .args([
                        "--auto-generate-sql",
                        "--auto-generate-sql-add-autoincrement",
                    ]))
            })?
        }
        _ => {
            let redis = Redis::start(test_dir);
            let port = redis.port().to_string();
            let (pipeline, n) = if protocol == "redis" {
                ("1", "40000")
            } else {
                ("16", "200000")
            };
            record(tracer, dir, &slug, || {
                ok(Command::new("redis-benchmark")
                    .args(["-h", "127.0.0.1", "-p", &port, "-q", "-c", "4"])
                    .args(["-P", pipeline, "-n", n, "-t", "set,get"]))
            })?
        }
    };
    let _ = workload;
    replay_file(root, recorded, &file)
}

/// nginx with an `http2` (prior knowledge) listener on a port of its own,
/// where `/h2` answers 200 "ok". nginx ends an HTTP/2 connection after
/// `keepalive_requests` (1000) requests and h2load does not reconnect:
/// lifted so a run is not cut short.
fn nginx_h2(dir: &TestDir, extra: &str) -> (Nginx, u16) {
    let port = free_port();
    let nginx = Nginx::start(
        dir,
        &format!("        listen 127.0.0.1:{port} http2;\n        keepalive_requests 100000000;\n{extra}"),
    );
    (nginx, port)
}

fn wait_listening(port: u16) -> Result<()> {
    super::wait_for(
        std::time::Duration::from_secs(30),
        "the gRPC server to listen",
        || Ok(tracer_e2e::net::accepts(([127, 0, 0, 1], port).into())),
    )
}

/// Runs `cmd`, failing with its output unless it succeeds.
fn ok(cmd: &mut Command) -> Result<()> {
    output(cmd).map(|_| ())
}

fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// h2load against nginx's `http2` listener, off and on, alternated.
fn h2load_overhead(
    bin: &TracerBin,
    dir: &WorkDir,
    test_dir: &TestDir,
    rounds: u64,
) -> Result<Overhead> {
    let (nginx, port) = nginx_h2(test_dir, "");
    let url = format!("http://127.0.0.1:{port}/h2bench");
    let command = format!("h2load -c 4 -m 16 -n {H2LOAD_REQUESTS} http://127.0.0.1:PORT/h2bench");
    let mut overhead = Overhead {
        what: "h2load against nginx (HTTP/2, prior knowledge)",
        command,
        off_rps: Vec::new(),
        on_rps: Vec::new(),
        counted: Vec::new(),
    };
    let h2load = || -> Result<f64> {
        let out = output(
            Command::new("h2load")
                .args(["-c", "4", "-m", "16", "-n", &H2LOAD_REQUESTS.to_string()])
                .arg(&url),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("finished in "))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| {
                anyhow!("no \"finished in ..., N req/s\" in h2load's output:\n{text}")
            })?;
        Ok(rps)
    };
    for round in 0..rounds {
        say(&format!(
            "protocols: h2load round {} of {rounds}",
            round + 1
        ));
        overhead.off_rps.push(h2load()?);
        let served_before = served(&nginx);
        let mut tracer = Tracer::start(bin, dir, "h2load", &[])?;
        overhead.on_rps.push(h2load()?);
        let (counted, _) = tracer.settle(|s| {
            s.sum(
                "http_server_request_duration_seconds_count",
                &[("service_name", "nginx"), ("http_route", "/h2bench")],
            )
        })?;
        overhead
            .counted
            .push((counted as u64, served(&nginx) - served_before));
    }
    Ok(overhead)
}

fn served(nginx: &Nginx) -> u64 {
    nginx
        .access_log()
        .under("/h2bench")
        .filter(|e| e.status == 200)
        .count() as u64
}

/// redis-benchmark (SET and GET, no pipelining) against redis-server, off
/// and on, alternated.
fn redis_overhead(
    bin: &TracerBin,
    dir: &WorkDir,
    test_dir: &TestDir,
    rounds: u64,
) -> Result<Overhead> {
    let redis = Redis::start(test_dir);
    let port = redis.port().to_string();
    let n = REDIS_REQUESTS.to_string();
    let mut overhead = Overhead {
        what: "redis-benchmark against redis-server (SET and GET)",
        command: format!("redis-benchmark -c 4 -n {REDIS_REQUESTS} -t set,get --csv"),
        off_rps: Vec::new(),
        on_rps: Vec::new(),
        counted: Vec::new(),
    };
    let bench = || -> Result<f64> {
        let out = output(
            Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &port, "-c", "4", "-n", &n])
                .args(["-t", "set,get", "--csv"]),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "SET","123456.79",... per command: the mean of the two rates.
        let rates: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
            .collect();
        if rates.is_empty() {
            bail!("no rates in redis-benchmark's CSV:\n{text}");
        }
        Ok(rates.iter().sum::<f64>() / rates.len() as f64)
    };
    let calls = |redis: &Redis| {
        let stats = redis.commandstats();
        stats.get("SET").copied().unwrap_or(0) + stats.get("GET").copied().unwrap_or(0)
    };
    for round in 0..rounds {
        say(&format!(
            "protocols: redis-benchmark round {} of {rounds}",
            round + 1
        ));
        overhead.off_rps.push(bench()?);
        let before = calls(&redis);
        let mut tracer = Tracer::start(bin, dir, "redis", &[])?;
        overhead.on_rps.push(bench()?);
        let served = calls(&redis) - before;
        // Only SET and GET: redis-benchmark also asks CONFIG GET at start.
        let (counted, _) = tracer.settle(|s| {
            ["SET", "GET"]
                .into_iter()
                .map(|op| {
                    s.sum(
                        "db_client_operation_duration_seconds_count",
                        &[
                            ("service_name", "redis-benchmark"),
                            ("db_system_name", "redis"),
                            ("db_operation_name", op),
                        ],
                    )
                })
                .sum()
        })?;
        overhead.counted.push((counted as u64, served));
    }
    Ok(overhead)
}

/// The report section.
pub fn section(m: &mut String, p: &Protocols, http1: Option<&Replay>) {
    let _ = writeln!(
        m,
        "Replay per protocol: `tracer record` while the workload ran, then \
         `cargo bench -p tracer --bench pipeline` on the recording (median of 5 passes by CPU \
         time). The recording holds every traced connection of the machine, the servers' own \
         sides included. A database server's side is recognised and the kernel told to stop \
         tracing it; the replay leaves out what the kernel then no longer sends (records: \
         recorded, and replayed).\n"
    );
    let _ = writeln!(
        m,
        "| protocol | workload | records | exchanges | exchanges/s per core | µs per exchange |\n\
         | --- | --- | ---: | ---: | ---: | ---: |"
    );
    if let Some(r) = http1 {
        replay_row(
            m,
            "http1 (reference)",
            "the replay above (wrk against nginx)",
            r,
        );
    }
    for p in &p.replays {
        match &p.replay {
            Ok(r) => replay_row(m, p.protocol, &p.workload, r),
            Err(e) => {
                let _ = writeln!(
                    m,
                    "| {} | {} | could not run: {e} | | | |",
                    p.protocol, p.workload
                );
            }
        }
    }
    let _ = writeln!(m);
    for o in &p.overheads {
        match o {
            Ok(o) => overhead_table(m, o),
            Err(e) => {
                let _ = writeln!(m, "Overhead could not run: {e}\n");
            }
        }
    }
}

fn replay_row(m: &mut String, protocol: &str, workload: &str, r: &Replay) {
    let per_core = r
        .get("exchanges_per_cpu_s")
        .parse::<f64>()
        .map_or_else(|_| "?".into(), fmt_int);
    let _ = writeln!(
        m,
        "| {protocol} | `{workload}` | {} ({}) | {} | {per_core} | {} |",
        r.recorded,
        r.get("kept"),
        r.get("exchanges"),
        r.get("us_per_exchange"),
    );
}

/// counted/served to four places, and never rounded to 1.0000 unless equal.
fn ratio(counted: u64, served: u64) -> String {
    if counted == served {
        "1.0000".into()
    } else {
        format!(
            "{:.4} (off by {})",
            counted as f64 / served.max(1) as f64,
            counted.abs_diff(served)
        )
    }
}

fn overhead_table(m: &mut String, o: &Overhead) {
    let _ = writeln!(
        m,
        "Overhead, {}: `{}`, tracer off and on alternated.\n",
        o.what, o.command
    );
    let _ = writeln!(
        m,
        "| run | off req/s | on req/s | on/off | counted | served | counted/served |"
    );
    let _ = writeln!(m, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, ((off, on), (counted, served))) in
        o.off_rps.iter().zip(&o.on_rps).zip(&o.counted).enumerate()
    {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {:.2} | {counted} | {served} | {} |",
            i + 1,
            fmt_int(*off),
            fmt_int(*on),
            on / off,
            ratio(*counted, *served),
        );
    }
    if let (Some(off), Some(on)) = (median(o.off_rps.clone()), median(o.on_rps.clone())) {
        let _ = writeln!(
            m,
            "| median | {} | {} | {:.2} | | | |",
            fmt_int(off),
            fmt_int(on),
            on / off
        );
    }
    let _ = writeln!(m);
}
