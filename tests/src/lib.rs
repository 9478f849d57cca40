//! Harness of the privileged end-to-end suite: the real `tracer` binary against
//! real servers and clients from Debian's packages, on loopback, with exact
//! counts checked against ground truth the peers keep themselves (nginx's and
//! the Python peer's access logs, curl's and wrk's own counts).
//!
//! What lives where:
//! - [`process`]: child processes killed on drop (SIGTERM, then SIGKILL) and
//!   per-test temporary directories;
//! - [`net`]: free ports, a tiny HTTP/1.1 client on `std::net::TcpStream`,
//!   curl invocations;
//! - [`openmetrics`]: a small OpenMetrics text parser and label queries;
//! - [`accesslog`]: the access-log format nginx and the Python peer share;
//! - [`peers`]: nginx and the Python `http.server` peer (`peers/http_server.py`);
//! - [`databases`]: Redis, PostgreSQL and MariaDB with their own statistics;
//! - [`kube`]: the Kubernetes API server stand-in (`peers/kube_apiserver.py`),
//!   its control API and builders of realistic objects;
//! - [`cgroups`]: kubelet-style pod cgroups for real processes;
//! - [`tracer`]: the daemon under test, its scrapes and the count assertions;
//! - [`prom`]: a real Prometheus (scrape jobs, rule files, reloads, queries
//!   through its HTTP API) and the shipped dashboard's PromQL with Grafana's
//!   variables replaced;
//! - [`wait`]: polling with a deadline (tests never sleep to synchronise).
//!
//! Every test starts with [`privileged`]: the suite needs root; without it a
//! test skips with the reason, except under `CI=true` where it fails.

pub mod accesslog;
pub mod cgroups;
pub mod databases;
pub mod kube;
pub mod net;
pub mod openmetrics;
pub mod peers;
pub mod process;
pub mod prom;
pub mod tracer;
pub mod wait;

use std::io::Write as _;
use std::path::{Path, PathBuf};

pub use accesslog::{template_route, AccessLog};
pub use net::{curl, free_port, http_get, read_response, CurlTransfer, Response};
pub use openmetrics::Scrape;
pub use peers::{Nginx, Peer, PyServer};
pub use process::{Guard, TestDir};
pub use tracer::{Tracer, Want};
pub use wait::wait_until;

/// True when this test can run. Without root it cannot load eBPF programs:
/// under `CI=true` that is a failure (a CI run that silently skips the suite
/// proves nothing); elsewhere the test prints why and the caller returns.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    let why = format!(
        "{test}: needs root to load eBPF programs (euid is {euid}); run it through \
         `cargo xtask test` or as root"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true: a privileged test may not skip)");
    }
    // Straight to fd 2: libtest captures `eprintln!` of passing tests, and a
    // skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
    false
}

/// Deterministic, incompressible-looking bytes: xorshift64 from `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The peers' scripts (`tests/peers/`).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// An executable from `PATH` (or the sbin directories, where nginx lives),
/// or a panic naming the Debian package that provides it.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed; `cargo xtask test` installs the test peers \
         (the Debian packages listed in xtask/src/bootstrap.rs)"
    );
}

/// The service name the tracer gives a process: its executable's file name.
pub fn exe_service_name(exe: &Path) -> String {
    let real = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    real.file_name()
        .expect("an executable has a file name")
        .to_string_lossy()
        .into_owned()
}

/// The service name of this test process (its own executable's name).
pub fn own_service_name() -> String {
    exe_service_name(&std::env::current_exe().expect("current_exe"))
}
