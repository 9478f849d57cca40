//! One memory budget, from the tracer's own memory cgroup: the tracer runs
//! in a cgroup limited to [`LIMIT_MIB`] and takes that limit as its budget
//! (`tracer_memory_budget_bytes`). When a ballast process in the same
//! cgroup brings usage to 90% of the limit, the tracer says so
//! (`tracer_memory_pressure` 1) and sheds payload: every chunk of an
//! HTTP/1.x connection longer than 512 bytes is captured to 512 only, one
//! `capture_shed` each, while the exchanges are still counted exactly.
//! Once the ballast is gone and usage falls below 80%, capture is whole
//! again: no chunk is shed.
//!
//! Each exchange is one request written at once (under 512 bytes) and one
//! response of [`BODY`] bytes, which nginx writes with one `writev` and the
//! test reads with one `read` once the whole response has arrived: exactly
//! two chunks over 512 bytes per exchange.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tracer_e2e::tracer::tracer_bin;
use tracer_e2e::{privileged, wait_until, Guard, Nginx, Peer, TestDir, Tracer, Want};

const LIMIT_MIB: u64 = 256;
const BODY: usize = 3000;
const EXCHANGES: u64 = 25;

/// A memory cgroup the test creates, limited to `LIMIT_MIB`: the v1 memory
/// controller where it is mounted (hybrid hosts, like this project's
/// machines), else cgroup v2. Removed on drop once empty.
struct MemoryCgroup {
    dir: PathBuf,
    usage_file: &'static str,
}

impl MemoryCgroup {
    fn create(name: &str) -> Self {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (root, limit_file, usage_file) = if v1.join("memory.limit_in_bytes").is_file() {
            (
                v1.to_path_buf(),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            let root = tracer_e2e::cgroups::unified_root();
            let control =
                fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
            assert!(
                control.split_whitespace().any(|c| c == "memory"),
                "no memory controller: neither v1 at {} nor enabled in {}/cgroup.subtree_control",
                v1.display(),
                root.display()
            );
            (root, "memory.max", "memory.current")
        };
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("create the memory cgroup");
        fs::write(dir.join(limit_file), (LIMIT_MIB << 20).to_string()).expect("set the limit");
        Self { dir, usage_file }
    }

    fn usage(&self) -> u64 {
        fs::read_to_string(self.dir.join(self.usage_file))
            .expect("read usage")
            .trim()
            .parse()
            .expect("usage is a number")
    }

    /// A launcher that moves itself into this cgroup, then execs its
    /// arguments.
    fn launcher(&self) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        vec![
            "sh".into(),
            "-c".into(),
            format!("echo $$ > {} && exec \"$@\"", procs.display()),
            "sh".into(),
        ]
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The processes are gone by now (their guards dropped first); an
        // rmdir of a cgroup with members would fail and leave it behind.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One exchange on its own connection: the request in one write, the whole
/// response in one read.
fn exchange(addr: std::net::SocketAddr, path: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect to nginx");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    // nginx closes after the response: once it has, every byte is waiting
    // and one read takes them all.
    let mut peek = [0u8; 8192];
    let whole = wait_until(Duration::from_secs(5), || {
        // SAFETY: a valid socket and buffer; MSG_PEEK leaves the bytes.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                peek.as_mut_ptr().cast(),
                peek.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        (n > BODY as isize).then_some(n as usize)
    })
    .expect("the response arrives");
    std::thread::sleep(Duration::from_millis(20));
    let mut buf = vec![0u8; 8192];
    let n = stream.read(&mut buf).expect("read the response");
    assert!(n >= whole, "one read takes the whole response");
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..32])
    );
}

fn shed(tracer: &Tracer) -> u64 {
    tracer
        .scrape()
        .count("tracer_kernel_drops_total", &[("cause", "capture_shed")])
}

fn pressure(tracer: &Tracer) -> u64 {
    tracer.scrape().count("tracer_memory_pressure", &[])
}

#[test]
fn a_cgroup_limit_is_the_budget_and_pressure_sheds_payload_not_counts() {
    if !privileged("a_cgroup_limit_is_the_budget_and_pressure_sheds_payload_not_counts") {
        return;
    }
    let dir = TestDir::new("memory-budget");
    let cgroup = MemoryCgroup::create(&format!("tracer-e2e-budget-{}", std::process::id()));
    let launcher = cgroup.launcher();
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    let tracer = Tracer::start_via(&dir, &launcher, &tracer_bin(), &[]);
    let body = "b".repeat(BODY);
    let nginx = Nginx::start(
        &dir,
        &format!("        location /big/ {{ return 200 \"{body}\"; }}\n"),
    );

    let scrape = tracer.scrape();
    assert_eq!(
        scrape.count("tracer_memory_budget_bytes", &[]),
        LIMIT_MIB << 20,
        "the cgroup's limit is the budget"
    );
    assert_eq!(pressure(&tracer), 0, "idle, well under 90%");

    // Ballast in the tracer's cgroup, pages written.
    // The interpreter itself takes about 8 MiB more: usage lands near 93%,
    // well clear of the limit.
    let ballast_mib = (LIMIT_MIB * 93 / 100).saturating_sub((cgroup.usage() >> 20) + 8);
    let mut ballast = Command::new(launcher[0]);
    ballast
        .args(&launcher[1..])
        .arg(tracer_e2e::peers::python())
        .args([
            "-c",
            &format!("import time\nb = b'x' * ({ballast_mib} << 20)\ntime.sleep(600)"),
        ]);
    // The chunks shed while `EXCHANGES` exchanges run under `/big/{phase}/`,
    // once `pressure` is what the tracer reports.
    let shed_in_phase = |phase: &str, want_pressure: u64| {
        let reached = wait_until(Duration::from_secs(15), || {
            (pressure(&tracer) == want_pressure).then_some(())
        });
        assert!(
            reached.is_some(),
            "{phase}: tracer_memory_pressure never {want_pressure} with {} MiB of {LIMIT_MIB} \
             in use",
            cgroup.usage() >> 20
        );
        tracer.barrier(&nginx);
        let before = shed(&tracer);
        for i in 0..EXCHANGES {
            exchange(nginx.addr(), &format!("/big/{phase}/{i}"));
        }
        tracer.barrier(&nginx);
        shed(&tracer) - before
    };
    let ballast = Guard::spawn("ballast", &mut ballast, &dir);
    let shed_under_pressure = shed_in_phase("shed", 1);
    drop(ballast);
    let shed_after = shed_in_phase("whole", 0);

    let log = nginx.access_log();
    let served = |prefix: &str| log.under(prefix).filter(|e| e.status == 200).count() as u64;
    assert_eq!(
        (served("/big/shed/"), served("/big/whole/")),
        (EXCHANGES, EXCHANGES)
    );
    tracer.expect(&[
        Want::server("nginx", "/big/shed/{id}")
            .status(200)
            .is(EXCHANGES),
        Want::server("nginx", "/big/whole/{id}")
            .status(200)
            .is(EXCHANGES),
    ]);
    assert_eq!(
        (shed_under_pressure, shed_after),
        (2 * EXCHANGES, 0),
        "under pressure each response is shed twice (nginx's write, the test's read); after it, never"
    );
    drop(tracer);
}
