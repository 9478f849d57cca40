//! The command line outside the data path: `tracer check` proves both attach
//! paths load (tracepoints attach here; the 24 kprobe programs, the two
//! frame programs reached by tail call included, pass the
//! verifier even though this kernel cannot attach kprobes) and positions
//! come from the sockets' sequence counters, bad flags are
//! rejected up front with an error naming the flag, and SIGTERM stops the
//! daemon cleanly. A tracer that picked kprobes here, lost a program, accepted
//! nonsense flags or ignored SIGTERM fails one of these.

use std::time::Duration;

use tracer_e2e::tracer::{run_cli, try_get};
use tracer_e2e::{privileged, TestDir, Tracer};

#[test]
fn check_reports_tracepoint_mode_and_24_verified_kprobe_programs() {
    if !privileged("check_reports_tracepoint_mode_and_24_verified_kprobe_programs") {
        return;
    }
    let dir = TestDir::new("check");
    let (status, stdout, stderr) = run_cli(&dir, "check", &["check"], Duration::from_secs(120));
    assert!(
        status.success(),
        "`tracer check` failed ({status});\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let mode = stdout.lines().find(|l| l.contains("attach mode"));
    assert!(
        mode.is_some_and(|l| l.to_ascii_lowercase().contains("tracepoint")),
        "`tracer check` should report the tracepoint attach mode on this kernel (no kprobes); \
         got {mode:?}\nstdout:\n{stdout}"
    );
    let verified = stdout
        .lines()
        .find(|l| l.contains("kprobe programs loaded through the verifier"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|n| n.trim().parse::<u32>().ok());
    assert_eq!(
        verified,
        Some(24),
        "`tracer check` should load all 24 kprobe programs through the verifier\nstdout:\n{stdout}"
    );
    // This kernel's BTF has every field: positions come from the sockets.
    assert!(
        stdout
            .lines()
            .any(|l| l == "stream positions: the sockets' TCP sequence counters"),
        "`tracer check` should take positions from the sequence counters here\nstdout:\n{stdout}"
    );
}

/// Runs `tracer run` with one bad flag and checks the error.
fn assert_rejected(dir: &TestDir, name: &str, bad: &[&str], flag: &str) {
    let mut args = vec!["run", "--metrics-addr", "127.0.0.1:0"];
    args.extend_from_slice(bad);
    let (status, stdout, stderr) = run_cli(dir, name, &args, Duration::from_secs(20));
    let shown = format!("`tracer {}`", args.join(" "));
    assert!(
        !status.success(),
        "{shown} should fail, exited {status}\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.to_ascii_lowercase().contains("backtrace"),
        "{shown} should fail with an error, not a panic:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    // The error itself is one line naming the flag; clap may add its hint
    // lines ("[possible values: ...]", "For more information, try '--help'.").
    let first = lines.first().copied().unwrap_or("");
    assert!(
        first.contains(flag) && first.to_ascii_lowercase().contains("error"),
        "{shown}: the first line of stderr should be the error naming {flag}; stderr:\n{stderr}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(flag)).count(),
        1,
        "{shown}: exactly one line should name {flag}; stderr:\n{stderr}"
    );
    assert!(
        lines.len() <= 4,
        "{shown}: a bad flag deserves a short error, got {} lines:\n{stderr}",
        lines.len()
    );
    assert!(
        stdout.trim().is_empty(),
        "{shown} printed to stdout:\n{stdout}"
    );
}

/// No root needed: the flags are rejected before anything touches the kernel
/// (a tracer that loaded first would fail differently as non-root, or keep
/// running as root, and fail the assertions either way).
#[test]
fn bad_flags_exit_nonzero_with_one_line_naming_the_flag() {
    let dir = TestDir::new("flags");
    assert_rejected(
        &dir,
        "capture0",
        &["--capture-bytes", "0"],
        "--capture-bytes",
    );
    assert_rejected(&dir, "attach-bogus", &["--attach", "bogus"], "--attach");
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    if !privileged("sigterm_stops_the_daemon_cleanly") {
        return;
    }
    let dir = TestDir::new("sigterm");
    let tracer = Tracer::start(&dir, &[]);
    let health = try_get(tracer.metrics_addr(), "/healthz").expect("GET /healthz");
    assert_eq!(health.status, 200, "/healthz of a running daemon");
    let (status, killed, stderr) = tracer.stop();
    assert!(
        !killed,
        "the daemon ignored SIGTERM for 10 s\nstderr:\n{stderr}"
    );
    assert!(
        status.success(),
        "the daemon exited {status} on SIGTERM\nstderr:\n{stderr}"
    );
}

/// The daemon never traces itself: its own `/metrics` answers would otherwise
/// appear as server-side exchanges of service "tracer". The scraping test
/// process is traced as the client of the same exchanges, which proves they
/// went through the pipeline.
#[test]
fn the_tracer_never_traces_itself() {
    if !privileged("the_tracer_never_traces_itself") {
        return;
    }
    let dir = TestDir::new("self");
    let tracer = Tracer::start(&dir, &[]);
    let nginx = tracer_e2e::Nginx::start(&dir, "");
    for _ in 0..5 {
        tracer.scrape();
    }
    tracer.barrier(&nginx);
    let me = tracer_e2e::own_service_name();
    let scrape = tracer.scrape();
    let served_by_tracer = scrape.count(
        "http_server_request_duration_seconds_count",
        &[("service_name", "tracer")],
    );
    let scraped_by_me = scrape.count(
        "http_client_request_duration_seconds_count",
        &[("service_name", me.as_str()), ("http_route", "/metrics")],
    );
    assert_eq!(served_by_tracer, 0, "the tracer traced its own server");
    assert!(
        scraped_by_me >= 5,
        "the scrapes were not seen from the client side: {scraped_by_me}"
    );
}
