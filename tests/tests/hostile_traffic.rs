//! Hostile traffic on a traced port, all at once against one nginx: 300
//! slowloris connections holding half-sent headers, megabyte header lines,
//! a pipeline of 100,000 tiny requests written in one burst, and random
//! bytes on 200 connections. Meanwhile curl sends valid requests.
//!
//! What must hold: the daemon keeps serving `/metrics` during the attack,
//! its peak resident memory stays under [`MAX_RSS_MIB`], no event is lost,
//! and the valid requests are counted exactly on both sides, against
//! nginx's access log and curl's own statuses.
//!
//! Default settings. On a 2-CPU machine the pipeline burst outruns the
//! daemon, which shares the CPUs with nginx and the attackers: its rings
//! pass half full, and the kernel side captures chunks to 512 bytes only
//! (`tracer_kernel_drops_total{cause="capture_shed"}`, 300 to 1,700 here)
//! instead of losing whole events. Without that, about 800 events were
//! lost (`ringbuf_full`) and with them one of the valid exchanges.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

use tracer_e2e::net::{connect, url};
use tracer_e2e::tracer::try_get;
use tracer_e2e::{curl, noise, privileged, Nginx, Peer, TestDir, Tracer, Want};

/// The ring buffers in total (`--ring-buffer-mib`).
const RING_MIB: u64 = 8;

/// Peak RSS the daemon may reach: the rings (mapped twice, so resident
/// twice once full), plus 48 MiB for the connection and route tables and
/// per-connection parser state that the capture settings bound (at most
/// 16 KiB of held header bytes each) for about 800 connections. Idle it
/// sits near 30 MiB.
const MAX_RSS_MIB: u64 = 2 * RING_MIB + 48;

const SLOWLORIS: usize = 300;
const RANDOM_CONNECTIONS: usize = 200;
const PIPELINED: usize = 100_000;
const VALID: u64 = 20;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn hostile_traffic_leaves_valid_counts_exact_and_memory_bounded() {
    if !privileged("hostile_traffic_leaves_valid_counts_exact_and_memory_bounded") {
        return;
    }
    let dir = TestDir::new("hostile");
    let tracer = Tracer::start(&dir, &[]);
    // The whole pipeline on one connection (nginx closes after 1,000
    // requests by default).
    let nginx = Nginx::start(&dir, "        keepalive_requests 200000;\n");
    let addr = nginx.addr();

    // Slowloris: half a header each, held open for the whole test.
    let slow: Vec<TcpStream> = (0..SLOWLORIS)
        .map(|i| {
            let mut s = connect(addr);
            s.write_all(format!("GET /slow/{i} HTTP/1.1\r\nHost: e2e\r\nX-Wait: ").as_bytes())
                .expect("slowloris write");
            s
        })
        .collect();

    // A pipeline of tiny requests in one burst; its responses are drained
    // on another thread so that neither side's buffers fill up.
    let pipeline = thread::spawn(move || {
        let mut s = connect(addr);
        let mut reader = s.try_clone().expect("clone");
        let drain = thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let mut burst = Vec::with_capacity(PIPELINED * 32);
        for _ in 0..PIPELINED {
            burst.extend_from_slice(b"GET /pipe HTTP/1.1\r\nHost: e\r\n\r\n");
        }
        burst.extend_from_slice(b"GET /pipe HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n");
        s.write_all(&burst).expect("pipeline write");
        drain.join().expect("drain thread");
    });

    // Megabyte header lines: nginx answers 400 and closes.
    let big = thread::spawn(move || {
        for _ in 0..4 {
            let mut s = connect(addr);
            let mut request = b"GET /big HTTP/1.1\r\nHost: e2e\r\nX-Big: ".to_vec();
            request.extend(std::iter::repeat_n(b'a', 1 << 20));
            request.extend_from_slice(b"\r\n\r\n");
            let _ = s.write_all(&request);
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
        }
    });

    // Random bytes on many connections.
    let random: Vec<TcpStream> = (0..RANDOM_CONNECTIONS)
        .map(|i| {
            let mut s = connect(addr);
            let _ = s.write_all(&noise(4096, i as u64 + 1));
            s
        })
        .collect();

    // Valid traffic beside it, and /metrics answering throughout.
    for i in 0..VALID {
        let got = curl(&[], &[url(addr, "/valid")]);
        assert_eq!(got[0].status, 200, "valid request {i}");
        let metrics = try_get(tracer.metrics_addr(), "/metrics")
            .unwrap_or_else(|e| panic!("/metrics during the attack: {e}"));
        assert_eq!(metrics.status, 200, "/metrics during the attack");
    }
    pipeline.join().expect("pipeline thread");
    big.join().expect("big header thread");

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    assert_eq!(
        log.under("/valid").count() as u64,
        VALID,
        "nginx's log of the valid requests"
    );
    assert_eq!(
        log.under("/pipe").count(),
        PIPELINED + 1,
        "nginx served the whole pipeline"
    );
    tracer.expect(&[
        Want::server("nginx", "/valid")
            .method("GET")
            .status(200)
            .is(VALID),
        Want::client("curl", "/valid")
            .method("GET")
            .status(200)
            .is(VALID),
    ]);

    let peak = status_kib(tracer.pid(), "VmHWM:") / 1024;
    assert!(
        peak < MAX_RSS_MIB,
        "the daemon's peak RSS was {peak} MiB under the attack (bound {MAX_RSS_MIB} MiB)"
    );
    // Read again once everything above has settled: nothing may have been
    // lost in the kernel since either.
    let scrape = tracer.scrape();
    let drops = scrape.lines("tracer_kernel_drops_total", &[]);
    assert_eq!(
        scrape.count("tracer_kernel_drops_total", &[("cause", "ringbuf_full")]),
        0,
        "events lost in the kernel:\n{drops}"
    );
    eprintln!("hostile traffic: the daemon's peak RSS was {peak} MiB\n{drops}");
    drop(slow);
    drop(random);
}
