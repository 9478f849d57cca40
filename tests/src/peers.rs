//! The real servers the tests trace: nginx (Debian's nginx-light) and a Python
//! `http.server` peer (`peers/http_server.py`). Each runs in the test's own
//! directory on a free port, writes the shared access-log format
//! ([`crate::accesslog`]) and stops when its guard drops.
//!
//! Both answer `/barrier/<token>` with 204: [`crate::Tracer::barrier`] uses it
//! to know the tracer has processed everything sent before.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::accesslog::AccessLog;
use crate::cgroups::PodCgroup;
use crate::net::{accepts, free_port};
use crate::process::{Guard, TestDir};
use crate::wait::{wait_until, START_TIMEOUT};

/// What the harness needs to know about a traced server.
pub trait Peer {
    /// Where it listens (IPv4 loopback).
    fn addr(&self) -> SocketAddr;
    /// The `service_name` the tracer should give it.
    fn service(&self) -> &str;
    /// Its access log so far.
    fn access_log(&self) -> AccessLog;
}

/// Waits until `addr` accepts connections, failing if the process exits.
pub(crate) fn wait_listening(guard: &mut Guard, addr: SocketAddr) {
    let ok = wait_until(START_TIMEOUT, || {
        guard.assert_running();
        accepts(addr).then_some(())
    });
    assert!(
        ok.is_some(),
        "{} did not listen on {addr} within {START_TIMEOUT:?}; stderr:\n{}",
        guard.name(),
        guard.stderr()
    );
}

/// nginx with one worker, on 127.0.0.1:PORT and [::1]:PORT.
#[derive(Debug)]
pub struct Nginx {
    guard: Guard,
    port: u16,
    root: PathBuf,
    log: PathBuf,
}

impl Nginx {
    /// Starts nginx with `server_extra` (locations and directives) added to
    /// its one `server` block; `root` is `<dir>/www`. `location /barrier/`
    /// (204) and a catch-all `location /` (200 "ok") are always there.
    pub fn start(dir: &TestDir, server_extra: &str) -> Self {
        let nginx = crate::require_tool("nginx");
        let port = free_port();
        let d = dir.path().display().to_string();
        let root = dir.join("www");
        std::fs::create_dir_all(&root).expect("mkdir www");
        let log = dir.join("access.log");
        // Runs as root (`user root`): the test directory is root's, and the
        // worker must also read files a test writes there.
        let conf = format!(
            r#"user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format e2e '$request_method $status $request_uri $connection $connection_requests $request_completion $body_bytes_sent';
    access_log {log} e2e;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        listen [::1]:{port};
        root {root};
        location /barrier/ {{ return 204; }}
        location / {{ return 200 "ok\n"; }}
{server_extra}
    }}
}}
"#,
            log = log.display(),
            root = root.display(),
        );
        let conf_path = dir.write("nginx.conf", conf);
        let mut cmd = Command::new(nginx);
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(format!("{d}/"))
            .args(["-g", "daemon off;"]);
        let guard = Guard::spawn("nginx", &mut cmd, dir);
        let mut nginx = Self {
            guard,
            port,
            root,
            log,
        };
        let (v4, v6) = (nginx.addr(), nginx.addr_v6());
        wait_listening(&mut nginx.guard, v4);
        wait_listening(&mut nginx.guard, v6);
        nginx
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `[::1]:PORT`.
    pub fn addr_v6(&self) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::LOCALHOST, self.port))
    }

    /// The document root, `<dir>/www`.
    pub fn root(&self) -> &PathBuf {
        &self.root
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

impl Peer for Nginx {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn service(&self) -> &str {
        "nginx"
    }

    fn access_log(&self) -> AccessLog {
        AccessLog::read(&self.log)
    }
}

/// The Python peer: `ThreadingHTTPServer`, HTTP/1.1 keep-alive, on 127.0.0.1.
/// Routes (see the script): `/slow...` sleeps 100 ms, `/chunked...` streams a
/// chunked ~1 MiB body, `POST` reads the body and answers its length,
/// `/barrier/...` answers 204, anything else 200 "ok".
#[derive(Debug)]
pub struct PyServer {
    guard: Guard,
    port: u16,
    log: PathBuf,
    service: String,
}

impl PyServer {
    pub fn start(dir: &TestDir) -> Self {
        let mut server = Self::spawn(dir, "python-server", None, "127.0.0.1");
        // The name the tracer sees: the running interpreter's executable.
        server.service =
            crate::exe_service_name(Path::new(&format!("/proc/{}/exe", server.guard.pid())));
        server
    }

    /// Starts the server inside a pod's cgroup from its first instruction,
    /// listening on every loopback address (so a test can reach it through
    /// a "ClusterIP" or "pod IP" in 127.0.0.0/8); `service` is the
    /// `service_name` the tracer should give it.
    pub fn start_in_pod(dir: &TestDir, name: &str, pod: &PodCgroup, service: &str) -> Self {
        let mut server = Self::spawn(dir, name, Some(pod), "0.0.0.0");
        server.service = service.to_string();
        server
    }

    fn spawn(dir: &TestDir, name: &str, pod: Option<&PodCgroup>, bind: &str) -> Self {
        let python = python();
        let port = free_port();
        let log = dir.join(&format!("{name}-access.log"));
        let mut cmd = Command::new(&python);
        cmd.arg("-u")
            .arg(crate::peers_dir().join("http_server.py"))
            .args(["--port", &port.to_string(), "--bind", bind])
            .arg("--log")
            .arg(&log);
        let mut guard = match pod {
            Some(pod) => pod.spawn_guard(name, &mut cmd, dir),
            None => Guard::spawn(name, &mut cmd, dir),
        };
        wait_listening(&mut guard, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        Self {
            guard,
            port,
            log,
            service: String::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

impl Peer for PyServer {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn service(&self) -> &str {
        &self.service
    }

    fn access_log(&self) -> AccessLog {
        AccessLog::read(&self.log)
    }
}

/// Debian's `python3` (`/usr/bin/python3` → `python3.11`, the service name the
/// tracer reports), ahead of any pyenv shim on `PATH`; else whatever `PATH`
/// has.
pub fn python() -> PathBuf {
    let debian = Path::new("/usr/bin/python3");
    let python3 = if debian.is_file() {
        debian.to_path_buf()
    } else {
        crate::require_tool("python3")
    };
    std::fs::canonicalize(&python3).unwrap_or(python3)
}
