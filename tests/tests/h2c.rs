//! HTTP/2 reached through `Upgrade: h2c`: Apache httpd (its mod_http2, the
//! one common server that still accepts the upgrade) answering a python3-h2
//! client and curl, which both start in HTTP/1.1 and switch after the `101`.
//!
//! The python3-h2 client (`tests/peers/h2c_client.py`) sends the first
//! request as the upgrade and the others as HTTP/2 streams in flight at once
//! on the same connection; curl (`--http2`) opens a connection per run, so
//! every one of its requests is an upgrade answered on stream 1.
//!
//! Ground truth: Apache's access log, in which each request answered over
//! HTTP/2 has an `HTTP/2.0` line (an upgrade adds an `HTTP/1.1 ... 101`
//! line for the switch itself, which is no request of its own), and the
//! clients' own reports of the status of every request. Each request is
//! one HTTP/2 exchange on each side: the switch is not counted apart.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use tracer_e2e::databases::run_ok;
use tracer_e2e::net::accepts;
use tracer_e2e::{free_port, privileged, require_tool, wait_until, Guard, TestDir, Tracer, Want};

/// Apache httpd with mod_http2 and `Protocols h2c http/1.1`, serving
/// `<dir>/www` on 127.0.0.1, logging `protocol method path status bytes`.
struct Apache {
    _guard: Guard,
    port: u16,
    log: std::path::PathBuf,
}

impl Apache {
    fn start(dir: &TestDir) -> Self {
        let port = free_port();
        let d = dir.path().display().to_string();
        let modules = "/usr/lib/apache2/modules";
        // Apache drops to `User` for its workers and refuses root. The
        // worker MPM, not event: under event, 2.4.71 ends an upgraded
        // session whose next frames have not arrived when stream 1 is
        // answered (GOAWAY "timeout" at once).
        let conf = format!(
            r#"ServerRoot {d}
PidFile {d}/apache.pid
Listen 127.0.0.1:{port}
LoadModule mpm_worker_module {modules}/mod_mpm_worker.so
LoadModule http2_module {modules}/mod_http2.so
LoadModule authz_core_module {modules}/mod_authz_core.so
User www-data
Group www-data
ServerName localhost
DocumentRoot {d}/www
Protocols h2c http/1.1
H2Upgrade on
# Several DATA frames per response write: frame headers past the first
# 4 KiB of a syscall, which the kernel side captures only once it has seen
# the switch.
H2MaxDataFrameLen 4096
ErrorLog {d}/apache-error.log
LogFormat "%H %m %U %>s %B" e2e
CustomLog {d}/apache-access.log e2e
<Directory {d}/www>
  Require all granted
</Directory>
"#
        );
        let conf_path = dir.write("apache.conf", conf);
        let mut cmd = Command::new(require_tool("apache2"));
        cmd.arg("-f").arg(&conf_path).arg("-DFOREGROUND");
        let mut guard = Guard::spawn("apache2", &mut cmd, dir);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let up = wait_until(tracer_e2e::wait::START_TIMEOUT, || {
            guard.assert_running();
            accepts(addr).then_some(())
        });
        assert!(up.is_some(), "apache2 did not listen:\n{}", guard.stderr());
        Self {
            _guard: guard,
            port,
            log: dir.join("apache-access.log"),
        }
    }

    /// Requests answered over HTTP/2, by (path, status).
    fn http2_answers(&self) -> BTreeMap<(String, u16), u64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut answers = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if let ["HTTP/2.0", "GET", path, status, _] = f[..] {
                *answers
                    .entry((path.to_string(), status.parse().expect("status")))
                    .or_default() += 1;
            }
        }
        answers
    }
}

#[test]
fn h2c_upgrades_to_apache_counted_exactly_on_both_sides() {
    if !privileged("h2c_upgrades_to_apache_counted_exactly_on_both_sides") {
        return;
    }
    let dir = TestDir::new("h2c");
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("h2c")).expect("mkdir www");
    std::fs::write(www.join("h2c/small.txt"), "hello\n").expect("write");
    // Two DATA frames of at most 4 KiB (`H2MaxDataFrameLen`), and 25: most
    // of those headers lie beyond the 16 KiB a syscall is captured to, and
    // reach the daemon through the kernel's frame walk.
    std::fs::write(www.join("h2c/medium.bin"), vec![b'm'; 5_000]).expect("write");
    std::fs::write(www.join("h2c/big.bin"), vec![b'b'; 100_000]).expect("write");
    let tracer = Tracer::start(&dir, &[]);
    let apache = Apache::start(&dir);
    let base = format!("http://127.0.0.1:{}/h2c", apache.port);

    let mut streams: BTreeMap<(String, u16), u64> = BTreeMap::new();
    for _ in 0..10 {
        let out = run_ok(
            Command::new("/usr/bin/python3")
                .arg(tracer_e2e::peers_dir().join("h2c_client.py"))
                .arg(apache.port.to_string())
                .args(
                    [
                        "medium.bin",
                        "missing",
                        "big.bin",
                        "small.txt",
                        "medium.bin",
                    ]
                    .map(|p| format!("/h2c/{p}")),
                ),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            let (path, status) = line.split_once(' ').expect("PATH STATUS");
            *streams
                .entry((path.to_string(), status.parse().expect("status")))
                .or_default() += 1;
        }
    }
    assert_eq!(streams.values().sum::<u64>(), 50, "{streams:?}");
    let mut curl: BTreeMap<(String, u16), u64> = BTreeMap::new();
    for path in ["small.txt", "medium.bin", "big.bin", "missing", "small.txt"] {
        let out = run_ok(
            Command::new(require_tool("curl"))
                .args([
                    "-sS",
                    "--http2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_version} %{http_code}",
                ])
                .arg(format!("{base}/{path}")),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let (version, code) = stdout.split_once(' ').expect("curl -w output");
        assert_eq!(version, "2", "curl did not switch to HTTP/2: {stdout}");
        *curl
            .entry((format!("/h2c/{path}"), code.parse().expect("code")))
            .or_default() += 1;
    }

    // The server answered over HTTP/2 exactly what the clients report.
    let mut clients = streams.clone();
    for (k, n) in &curl {
        *clients.entry(k.clone()).or_default() += n;
    }
    let answered = wait_until(tracer_e2e::wait::METRICS_TIMEOUT, || {
        let a = apache.http2_answers();
        (a == clients).then_some(a)
    });
    assert!(
        answered.is_some(),
        "apache's log {:?} differs from the clients' {clients:?}",
        apache.http2_answers()
    );

    let mut wants = Vec::new();
    for ((path, status), n) in &clients {
        wants.push(
            Want::server("apache2", path)
                .method("GET")
                .status(*status)
                .is(*n),
        );
    }
    // The client side by peer port: the python client's service name is
    // its executable's (python3.11) while it runs, its task name (python3)
    // once it has exited, and these runs exit at once.
    let port = apache.port.to_string();
    for ((path, status), n) in &clients {
        wants.push(
            Want::metric("http_client_request_duration_seconds_count")
                .label("server_port", &port)
                .label("http_route", path)
                .status(*status)
                .is(*n),
        );
    }
    for ((path, status), n) in &curl {
        wants.push(Want::client("curl", path).status(*status).is(*n));
    }
    // Nothing else, and no 101 as a request of its own.
    let total: u64 = clients.values().sum();
    wants.push(
        Want::metric("http_server_request_duration_seconds_count")
            .label("service_name", "apache2")
            .is(total),
    );
    tracer.expect(&wants);
    let scrape = tracer.scrape();
    for protocol in ["http1", "http2"] {
        for name in ["tracer_parser_resyncs_total", "tracer_unmatched_total"] {
            assert_eq!(
                scrape.count(name, &[("protocol", protocol)]),
                0,
                "{name}{{protocol={protocol}}}"
            );
        }
    }
}
