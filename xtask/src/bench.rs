//! `cargo xtask bench`: the tracer's benchmarks against real peers on
//! loopback, bounded in time (about 4 minutes with the defaults).
//!
//! Input: the release `tracer` binary (built by the caller), Debian's nginx,
//! wrk and python3, root. Three parts, each independent of the others:
//!
//! 1. Overhead: nginx (1 worker, `return 200`) under `wrk -t1 -c16 --latency`
//!    with the tracer off, with `tracer run --hooks-only` (hooks attached but
//!    returning at once: the cost floor) and with the full `tracer run`,
//!    alternated over several rounds, medians reported. With `--sources`,
//!    the full tracer reading packets (`--source packets`, `--source both`)
//!    joins the same rotation, so its cost compares with the syscall
//!    tracer's under the same machine noise rather than across invocations.
//!    For every full tracer also its CPU time per request, and
//!    counted/served: the tracer's server-side request count for nginx
//!    against nginx's access log.
//! 2. Replay: `tracer record` while wrk drives nginx, then the pipeline
//!    benchmark (`tracer/benches/pipeline.rs`) on that recording.
//! 3. Memory: the full tracer's resident memory while 10,000 idle keep-alive
//!    connections to nginx are open.
//!
//! With `--metadata` and `--protocols`, the parts in `bench_metadata.rs` and
//! `bench_protocols.rs` too.
//!
//! Output: progress on stderr; a markdown report (machine, command, tables,
//! targets with pass/miss) on stdout and, with `--out`, to a file. Timings
//! are reported against their targets and never fail the run; a part that
//! cannot run (a peer fails to start, say) is reported and makes the exit
//! status non-zero after the report.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

#[path = "bench_metadata.rs"]
mod metadata;
#[path = "bench_protocols.rs"]
mod protocols;

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds of wrk load per overhead run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub duration: u64,
    /// Rounds of the overhead configurations (off, hooks-only, full, and one
    /// per `--sources`; alternated; medians reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=10))]
    pub rounds: u64,
    /// Idle keep-alive connections held open for the memory figure.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=25_000))]
    pub idle_connections: u64,
    /// Skip the overhead runs.
    #[arg(long)]
    pub no_overhead: bool,
    /// Skip recording and the replay benchmark.
    #[arg(long)]
    pub no_replay: bool,
    /// Skip the idle-connections memory figure.
    #[arg(long)]
    pub no_memory: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also measure the full tracer with each of these `--source` values
    /// (comma-separated): each is one more overhead configuration in every
    /// round's rotation, beside the syscall-hooking full tracer it is compared with.
    #[arg(long, value_name = "SOURCE", value_enum, value_delimiter = ',')]
    pub sources: Vec<Source>,
    /// Extra argument for every `tracer run` (repeatable), e.g.
    /// `--tracer-arg=--ring-buffer-mib=8`.
    #[arg(long = "tracer-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub tracer_args: Vec<String>,
    #[command(flatten)]
    pub metadata: metadata::MetadataArgs,
    #[command(flatten)]
    pub protocols: protocols::ProtocolArgs,
}

/// The tracer binary and the extra arguments every `tracer run` gets.
pub(crate) struct TracerBin<'a> {
    path: &'a Path,
    extra: &'a [String],
    /// The metadata part's runs: nginx in a pod the tracer learns from an API server.
    pod: Option<&'a metadata::InPod>,
}

impl<'a> TracerBin<'a> {
    /// The binary alone: no extra arguments, no pod.
    pub(crate) fn plain(path: &'a Path) -> Self {
        Self {
            path,
            extra: &[],
            pod: None,
        }
    }
}

/// wrk's connections and threads: the load the reference figures in the
/// platform notes were taken with, so the numbers compare.
const WRK_CONNECTIONS: u32 = 16;
const WRK_THREADS: u32 = 1;
/// Seconds of `tracer record`, and of wrk load inside that window.
const RECORD_SECONDS: u64 = 5;
const RECORD_LOAD_SECONDS: u64 = 3;

pub(crate) const SERVER_COUNT: &str = "http_server_request_duration_seconds_count";
/// nginx runs from a copy of its binary under this name. The tracer names a
/// service after its executable, so this keeps our nginx's requests apart
/// from those of any other nginx on the machine (the end-to-end suite's, on
/// a shared machine), which would otherwise inflate the count.
pub(crate) const NGINX_SERVICE: &str = "bench-nginx";
/// Counters whose non-zero values explain a count below what was served.
pub(crate) const LOSS_COUNTERS: [&str; 7] = [
    "tracer_kernel_drops_total",
    "tracer_user_drops_total",
    "tracer_truncated_events_total",
    "tracer_unmatched_total",
    "tracer_parser_resyncs_total",
    "tracer_stream_gaps_total",
    "tracer_late_events_total",
];

/// Targets the report checks against.
const TARGET_HOOKS_RATIO: f64 = 0.95;
const TARGET_CPU_US: f64 = 5.0;
const TARGET_RSS_MIB: f64 = 64.0;
/// `--source both`'s whole-machine CPU per request (nginx worker, wrk and
/// tracer) against the syscall-only full tracer's: the packet path must cost
/// little where the hooks already cover every flow.
const TARGET_BOTH_CPU_RATIO: f64 = 1.05;

pub fn run(root: &Path, tracer: &Path, args: &BenchArgs) -> Result<()> {
    let sets_source = |a: &String| a == "--source" || a.starts_with("--source=");
    if !args.sources.is_empty() && args.tracer_args.iter().any(sets_source) {
        // The tracer takes --source once: the packet configurations would
        // not start, and the one labelled syscalls would not read syscalls.
        bail!("--sources and --tracer-arg=--source cannot be combined: --sources sets each full tracer's --source");
    }
    preflight("bench", tracer, &["nginx", "wrk", "python3"])?;
    let started = Instant::now();
    let dir = WorkDir::new()?;
    let mut report = Report::default();
    let bin = TracerBin {
        path: tracer,
        extra: &args.tracer_args,
        pod: None,
    };
    if !args.no_overhead {
        report.overhead = Some(overhead(&bin, &dir, args).map_err(|e| format!("{e:#}")));
    }
    if !args.no_memory {
        report.memory =
            Some(memory(&bin, &dir, args.idle_connections).map_err(|e| format!("{e:#}")));
    }
    if !args.no_replay {
        report.replay = Some(replay(root, tracer, &dir).map_err(|e| format!("{e:#}")));
    }
    if args.metadata.metadata {
        report.metadata = Some(metadata::run(root, &bin, &dir, args).map_err(|e| format!("{e:#}")));
    }
    if args.protocols.protocols {
        report.protocols =
            Some(protocols::run(root, &bin, &dir, args).map_err(|e| format!("{e:#}")));
    }
    report.elapsed = started.elapsed();
    let text = report.markdown(args);
    println!("{text}");
    if let Some(out) = &args.out {
        fs::write(out, &text).with_context(|| format!("--out {}: cannot write", out.display()))?;
        say(&format!("report written to {}", out.display()));
    }
    let failed = report.failures();
    if !failed.is_empty() {
        // Keep the peers' logs for a look at what went wrong.
        dir.keep();
        bail!(
            "could not run: {} (logs kept in {})",
            failed.join(", "),
            dir.path.display()
        );
    }
    Ok(())
}

/// What every run of `cargo xtask <command>` needs: root, the tracer
/// binary, and `tools` on PATH.
pub(crate) fn preflight(command: &str, tracer: &Path, tools: &[&str]) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask {command} needs root: the tracer loads eBPF programs (run it with sudo)"
        );
    }
    if !tracer.is_file() {
        bail!(
            "tracer binary {} not found (cargo build --release -p tracer)",
            tracer.display()
        );
    }
    for tool in tools {
        if which(tool).is_none() {
            bail!("{tool} is not on PATH (cargo xtask bootstrap --peers installs it)");
        }
    }
    Ok(())
}

fn say(message: &str) {
    eprintln!("xtask bench: {message}");
}

// ---------------------------------------------------------------- overhead

/// What the full tracer reads (`tracer run --source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The tracer's default, measured in every run: not for `--sources`.
    #[value(skip)]
    Syscalls,
    /// `--source packets`: the socket filter on the interfaces' packets alone.
    Packets,
    /// `--source both`: the hooks, and the packet path for the flows they miss.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Off,
    HooksOnly,
    Full(Source),
}

impl Config {
    /// Every round's configurations: off, hooks-only and the syscall full
    /// tracer always, then a full tracer per `--sources` value.
    fn rotation(sources: &[Source]) -> Vec<Config> {
        let mut configs = vec![
            Config::Off,
            Config::HooksOnly,
            Config::Full(Source::Syscalls),
        ];
        for &source in sources {
            if !configs.contains(&Config::Full(source)) {
                configs.push(Config::Full(source));
            }
        }
        configs
    }

    fn label(self) -> &'static str {
        match self {
            Config::Off => "tracer off",
            Config::HooksOnly => "`tracer run --hooks-only`",
            Config::Full(Source::Syscalls) => "`tracer run` (full)",
            Config::Full(Source::Packets) => "`tracer run --source packets`",
            Config::Full(Source::Both) => "`tracer run --source both`",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Config::Off => "off",
            Config::HooksOnly => "hooks-only",
            Config::Full(Source::Syscalls) => "full",
            Config::Full(Source::Packets) => "full-packets",
            Config::Full(Source::Both) => "full-both",
        }
    }

    /// The flags `tracer run` gets for this configuration (before
    /// `--tracer-arg`'s); None: no tracer. The syscall full tracer gets none:
    /// syscalls is the tracer's default, and without `--sources` a
    /// `--tracer-arg=--source=…` still picks what it reads.
    fn tracer_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Off => None,
            Config::HooksOnly => Some(&["--hooks-only"]),
            Config::Full(Source::Syscalls) => Some(&[]),
            Config::Full(Source::Packets) => Some(&["--source", "packets"]),
            Config::Full(Source::Both) => Some(&["--source", "both"]),
        }
    }

    fn is_full(self) -> bool {
        matches!(self, Config::Full(_))
    }
}

/// One overhead run.
#[derive(Debug, Clone)]
struct Run {
    config: Config,
    wrk: Wrk,
    /// Lines in nginx's access log: requests nginx answered.
    served: u64,
    /// Tracer CPU from wrk's start until the count settled.
    tracer_cpu: Option<Cpu>,
    /// The nginx worker's and wrk's CPU during the wrk run.
    nginx_cpu: Cpu,
    wrk_cpu: Cpu,
    /// CPU busy outside nginx, wrk and the tracer during the wrk run, and
    /// time the hypervisor stole, both in cores.
    other_load: f64,
    steal: f64,
    /// Another `tracer` (someone else's test, say) was running at the start
    /// or the end of the run: its hooks tax nginx too, so the run is suspect.
    foreign: Vec<u32>,
    /// The tracer's server-side count for our nginx (full tracers only).
    counted: Option<f64>,
    /// Server-side requests of other services it traced meanwhile: work
    /// that is not ours in its CPU figure.
    others_traced: Option<f64>,
    /// Non-zero loss counters, `name{labels} value`.
    losses: Vec<String>,
    /// Kernel drops summed over causes.
    kernel_drops: Option<f64>,
    rss_kib: Option<u64>,
}

impl Run {
    /// `cpu` per request served, in µs: (user, system).
    fn per_request_us(&self, cpu: Cpu) -> Option<(f64, f64)> {
        let n = self.served as f64;
        (self.served > 0).then(|| {
            (
                cpu.user.as_secs_f64() * 1e6 / n,
                cpu.system.as_secs_f64() * 1e6 / n,
            )
        })
    }

    /// Tracer CPU (user + system) per request served, in µs.
    fn cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.tracer_cpu?;
        (self.served > 0).then(|| cpu.total().as_secs_f64() * 1e6 / self.served as f64)
    }

    /// The same split into user and system time.
    fn cpu_split_us(&self) -> Option<(f64, f64)> {
        self.per_request_us(self.tracer_cpu?)
    }

    fn counted_ratio(&self) -> Option<f64> {
        let counted = self.counted?;
        (self.served > 0).then(|| counted / self.served as f64)
    }
}

fn overhead(tracer: &TracerBin, dir: &WorkDir, args: &BenchArgs) -> Result<Vec<Run>> {
    let configs = Config::rotation(&args.sources);
    let mut runs = Vec::new();
    for round in 0..args.rounds as usize {
        // Rotate the order every round so that no configuration always runs
        // first (cold caches) or last (warm, or after a noisy neighbour).
        let mut order = configs.clone();
        order.rotate_left(round % configs.len());
        for config in order {
            let name = format!("r{}-{}", round + 1, config.slug());
            say(&format!(
                "overhead round {}/{}: {}",
                round + 1,
                args.rounds,
                config.label()
            ));
            let run = overhead_run(tracer, dir, &name, config, args.duration)
                .with_context(|| format!("overhead run {name}"))?;
            if !run.foreign.is_empty() {
                say(&format!(
                    "  warning: other tracer processes ran meanwhile (pids {:?}); run marked",
                    run.foreign
                ));
            }
            say(&format!(
                "  {:.0} req/s, p50 {}, p99 {}{}",
                run.wrk.rps,
                fmt_us(run.wrk.p50_us),
                fmt_us(run.wrk.p99_us),
                match (run.counted, run.cpu_us_per_request()) {
                    (Some(c), Some(cpu)) => {
                        format!(
                            ", counted {c:.0} of {} served, {cpu:.2} µs CPU/request",
                            run.served
                        )
                    }
                    _ => String::new(),
                }
            ));
            runs.push(run);
        }
    }
    Ok(runs)
}

fn overhead_run(
    tracer: &TracerBin,
    dir: &WorkDir,
    name: &str,
    config: Config,
    seconds: u64,
) -> Result<Run> {
    // Someone else's tracer (the end-to-end suite, say) hooks the same
    // syscalls: give it a moment to finish rather than measure through it.
    let mut foreign = wait_for_quiet(Duration::from_secs(30));
    let mut nginx = Nginx::start(dir, name)?;
    if let Some(pod) = tracer.pod {
        pod.enter(&nginx)?;
    }
    let mut daemon = match config.tracer_flags() {
        Some(flags) => Some(Tracer::start(tracer, dir, name, flags)?),
        None => None,
    };
    if let (Some(pod), Some(t)) = (tracer.pod, &mut daemon) {
        pod.synced(t)?;
    }
    let cpu0 = match &daemon {
        Some(t) => Some(proc_cpu(t.proc.pid())?),
        None => None,
    };
    // The hooks run in the traced processes' syscalls, so their cost shows
    // up as nginx's and wrk's system time, not as the tracer's.
    let workers = nginx.workers();
    let nginx0 = cpu_of(&workers)?;
    let wrk0 = children_cpu();
    let system0 = system_cpu()?;
    let started = Instant::now();
    let wrk = run_wrk(dir, name, nginx.port, seconds)?;
    let (system, wall) = (system_cpu()?.since(system0), started.elapsed());
    // wrk is the only child reaped in between, so the difference is its CPU.
    let wrk_cpu = children_cpu().since(wrk0);
    let nginx_cpu = cpu_of(&workers)?.since(nginx0);
    let tracer_during = match (&daemon, cpu0) {
        (Some(t), Some(c0)) => proc_cpu(t.proc.pid())?.since(c0).total(),
        _ => Duration::ZERO,
    };
    // Whatever else kept the cores busy meanwhile (other people's builds and
    // tests on a shared machine, the hypervisor): the run's noise.
    let ours = nginx_cpu.total() + wrk_cpu.total() + tracer_during;
    let other_load = system.user.saturating_sub(ours).as_secs_f64() / wall.as_secs_f64();
    let steal = system.system.as_secs_f64() / wall.as_secs_f64();
    let own: Vec<u32> = daemon.iter().map(|t| t.proc.pid()).collect();
    foreign.extend(foreign_tracers(&own));
    foreign.sort_unstable();
    foreign.dedup();
    let mut run = Run {
        config,
        wrk,
        served: 0,
        tracer_cpu: None,
        nginx_cpu,
        wrk_cpu,
        other_load,
        steal,
        foreign,
        counted: None,
        others_traced: None,
        losses: Vec::new(),
        kernel_drops: None,
        rss_kib: None,
    };
    if let (Some(t), Some(cpu0)) = (&mut daemon, cpu0) {
        t.proc.check_running()?;
        let scrape = if config.is_full() {
            // The pipeline may still be draining the ring buffer: wait for
            // the count to stop moving, and charge that work to the run.
            let (count, scrape) =
                t.settle(|s| s.sum(SERVER_COUNT, &[("service_name", NGINX_SERVICE)]))?;
            run.counted = Some(count);
            run.others_traced = Some(scrape.sum(SERVER_COUNT, &[]) - count);
            if let Some(pod) = tracer.pod {
                pod.settled(&scrape);
            }
            scrape
        } else {
            t.scrape()?
        };
        run.tracer_cpu = Some(proc_cpu(t.proc.pid())?.since(cpu0));
        run.rss_kib = vm_kib(t.proc.pid(), "VmRSS").ok();
        run.kernel_drops = Some(scrape.sum("tracer_kernel_drops_total", &[]));
        run.losses = scrape.nonzero(&LOSS_COUNTERS);
    }
    if let Some(mut t) = daemon.take() {
        t.proc.stop(libc::SIGTERM, Duration::from_secs(10))?;
    }
    run.served = nginx.stop_and_count()?;
    Ok(run)
}

// ---------------------------------------------------------------- replay

/// The pipeline benchmark's summary line, as `key=value` pairs.
#[derive(Debug, Clone, Default)]
struct Replay {
    recorded: u64,
    file_bytes: u64,
    figures: Vec<(String, String)>,
}

impl Replay {
    fn get(&self, key: &str) -> &str {
        self.figures
            .iter()
            .find(|(k, _)| k == key)
            .map_or("?", |(_, v)| v.as_str())
    }
}

fn replay(root: &Path, tracer: &Path, dir: &WorkDir) -> Result<Replay> {
    say(&format!(
        "replay: recording {RECORD_SECONDS} s of nginx under wrk ({RECORD_LOAD_SECONDS} s of load)"
    ));
    let mut nginx = Nginx::start(dir, "record")?;
    let port = nginx.port;
    let (recorded, file) = record(tracer, dir, "recording", || {
        run_wrk(dir, "record", port, RECORD_LOAD_SECONDS).map(|_| ())
    })?;
    nginx.stop_and_count()?;
    replay_file(root, recorded, &file)
}

/// Runs `load` while `tracer record` writes every ring-buffer record to
/// `<dir>/<name>.bin` for `RECORD_SECONDS`; the number of records and the
/// file. `load` must finish within `RECORD_SECONDS`.
fn record(
    tracer: &Path,
    dir: &WorkDir,
    name: &str,
    load: impl FnOnce() -> Result<()>,
) -> Result<(u64, PathBuf)> {
    let file = dir.path.join(format!("{name}.bin"));
    let mut cmd = Command::new(tracer);
    cmd.arg("record")
        .arg("--output")
        .arg(&file)
        .args(["--seconds", &RECORD_SECONDS.to_string()]);
    let mut rec = Proc::spawn(&format!("tracer-record-{name}"), &mut cmd, &dir.path)?;
    // `tracer record` logs "recording" once its hooks are attached; the load
    // must start after that, and end before its timer does.
    wait_for(
        Duration::from_secs(60),
        "tracer record to attach its hooks",
        || {
            rec.check_running()?;
            Ok(fs::read_to_string(&rec.stderr)
                .unwrap_or_default()
                .contains("recording"))
        },
    )?;
    load()?;
    let status = rec
        .wait_timeout(Duration::from_secs(RECORD_SECONDS + 30))?
        .ok_or_else(|| anyhow!("tracer record did not stop after --seconds {RECORD_SECONDS}"))?;
    if !status.success() {
        bail!("tracer record failed ({status}):\n{}", rec.stderr_tail());
    }
    let stdout = fs::read_to_string(&rec.stdout).unwrap_or_default();
    let recorded = stdout
        .split_whitespace()
        .skip_while(|w| *w != "recorded")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((recorded, file))
}

/// The pipeline benchmark (`tracer/benches/pipeline.rs`) on a recording.
fn replay_file(root: &Path, recorded: u64, file: &Path) -> Result<Replay> {
    let file_bytes = fs::metadata(file)
        .with_context(|| format!("tracer record wrote no {}", file.display()))?
        .len();
    say("replay: cargo bench -p tracer --bench pipeline");
    let out = Command::new(crate::cargo_bin())
        .current_dir(root)
        .args(["bench", "-p", "tracer", "--bench", "pipeline"])
        .env("TRACER_RECORDING", file)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench -p tracer --bench pipeline")?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}");
    if !out.status.success() {
        bail!(
            "cargo bench -p tracer --bench pipeline failed ({})",
            out.status
        );
    }
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("pipeline-bench:"))
        .ok_or_else(|| anyhow!("the pipeline bench printed no `pipeline-bench:` summary line"))?;
    let figures = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Replay {
        recorded,
        file_bytes,
        figures,
    })
}

// ---------------------------------------------------------------- memory

#[derive(Debug, Clone)]
struct Memory {
    opened: u64,
    before: Rss,
    conns_before: f64,
    open: Rss,
    hwm_kib: u64,
    conns: f64,
    after: Rss,
    conns_after_close: f64,
}

/// Resident memory of a process, in KiB, split by kind.
#[derive(Debug, Clone, Copy)]
struct Rss {
    total: u64,
    /// Heap, stacks: what the daemon allocates.
    anon: u64,
    /// Mapped files, and mappings of BPF maps (the ring buffer).
    file: u64,
    /// Of `file`: mappings of BPF maps. The ring buffer's data pages are
    /// mapped twice (so records can wrap around), so its size counts twice
    /// here though the kernel holds it once.
    bpf_maps: u64,
}

impl Rss {
    fn of(pid: u32) -> Result<Self> {
        let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))
            .with_context(|| format!("reading /proc/{pid}/smaps"))?;
        let mut bpf_maps = 0;
        let mut in_bpf_map = false;
        for line in smaps.lines() {
            if let Some(kib) = line.strip_prefix("Rss:") {
                if in_bpf_map {
                    bpf_maps += kib
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            } else if line
                .split_whitespace()
                .next()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                // A mapping's header: `start-end perms offset dev inode [path]`.
                in_bpf_map = line.ends_with("anon_inode:bpf-map");
            }
        }
        Ok(Self {
            total: vm_kib(pid, "VmRSS")?,
            anon: vm_kib(pid, "RssAnon")?,
            file: vm_kib(pid, "RssFile")?,
            bpf_maps,
        })
    }
}

/// Opens `n` keep-alive connections, one request each, holds them until its
/// stdin closes, then closes them all. Prints `open N` once all are up.
const IDLE_CLIENT: &str = r#"
import resource, socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 256
if soft != resource.RLIM_INFINITY and soft < want:
    # Raising the hard limit needs root, which the bench has.
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request)
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i}: closed before a whole response")
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if len(body) >= length:
                break
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"connection {i}: unexpected response {head[:40]!r}")
    socks.append(s)
print(f"open {len(socks)}", flush=True)
sys.stdin.read()
for s in socks:
    s.close()
print("closed", flush=True)
"#;

fn memory(tracer: &TracerBin, dir: &WorkDir, n: u64) -> Result<Memory> {
    say(&format!(
        "memory: full tracer with {n} idle keep-alive connections to nginx"
    ));
    let mut nginx = Nginx::start(dir, "memory")?;
    let mut t = Tracer::start(tracer, dir, "memory", &[])?;
    let (conns_before, _) = t.settle(|s| s.sum("tracer_connections", &[]))?;
    let before = Rss::of(t.proc.pid())?;

    let script = dir.path.join("idle_client.py");
    fs::write(&script, IDLE_CLIENT).context("writing the idle client script")?;
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(n.to_string())
        .arg(nginx.port.to_string());
    let mut client = IdleClient::spawn(&mut cmd, &dir.path)?;
    let line = client.line(Duration::from_secs(120))?;
    let opened: u64 = line
        .strip_prefix("open ")
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("idle client said {line:?} instead of `open N`"))?;

    // Let the pipeline catch up with the burst of opens and first requests.
    let (conns, _) = t.settle(|s| s.sum("tracer_connections", &[]))?;
    let open = Rss::of(t.proc.pid())?;
    let hwm_kib = vm_kib(t.proc.pid(), "VmHWM")?;

    client.close()?;
    let (conns_after_close, _) = t.settle(|s| s.sum("tracer_connections", &[]))?;
    let after = Rss::of(t.proc.pid())?;
    t.proc.stop(libc::SIGTERM, Duration::from_secs(10))?;
    nginx.stop_and_count()?;
    Ok(Memory {
        opened,
        before,
        conns_before,
        open,
        hwm_kib,
        conns,
        after,
        conns_after_close,
    })
}

/// The Python client, its stdout read on a thread so waits can time out.
struct IdleClient {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl IdleClient {
    fn spawn(cmd: &mut Command, dir: &Path) -> Result<Self> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut proc = Proc::spawn_with("idle-client", cmd, dir, false)?;
        let stdin = proc.child.stdin.take();
        let stdout = proc
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("idle client has no stdout pipe"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { proc, stdin, lines })
    }

    fn line(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(_) => {
                let exited = self.proc.child.try_wait().ok().flatten();
                bail!(
                    "idle client gave no answer within {timeout:?} (exit: {exited:?}):\n{}",
                    self.proc.stderr_tail()
                )
            }
        }
    }

    /// Closing stdin tells the client to close its connections and exit.
    fn close(&mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self
            .proc
            .wait_timeout(Duration::from_secs(60))?
            .ok_or_else(|| anyhow!("idle client did not exit after its stdin closed"))?;
        if !status.success() {
            bail!(
                "idle client failed ({status}):\n{}",
                self.proc.stderr_tail()
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- peers

/// nginx as the brief and the reference figures have it: one worker, a
/// `return 200` location, a buffered access log (so logging costs little),
/// room for the idle connections of the memory part.
pub(crate) struct Nginx {
    pub(crate) proc: Proc,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
}

impl Nginx {
    fn start(dir: &WorkDir, name: &str) -> Result<Self> {
        Self::start_with_log_format(dir, name, None)
    }

    /// `log_format`: what each access-log line holds (nginx's `log_format`
    /// syntax); None for the combined format.
    pub(crate) fn start_with_log_format(
        dir: &WorkDir,
        name: &str,
        log_format: Option<&str>,
    ) -> Result<Self> {
        let port = free_port()?;
        let d = dir.path.display();
        let log = dir.path.join(format!("nginx-{name}-access.log"));
        let (format_decl, format_name) = match log_format {
            Some(format) => (format!("log_format custom '{format}';\n    "), "custom"),
            None => (String::new(), "combined"),
        };
        let conf = format!(
            r#"user root;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {d}/nginx-{name}.pid;
error_log {d}/nginx-{name}-error.log warn;
events {{ worker_connections 30000; }}
http {{
    {format_decl}access_log {log} {format_name} buffer=64k;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
    }}
}}
"#,
            log = log.display(),
        );
        let conf_path = dir.path.join(format!("nginx-{name}.conf"));
        fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let mut cmd = Command::new(&dir.nginx);
        cmd.arg("-p")
            .arg(format!("{d}/"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]);
        let mut proc = Proc::spawn(&format!("nginx-{name}"), &mut cmd, &dir.path)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_for(Duration::from_secs(15), "nginx to listen", || {
            proc.check_running()?;
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        })?;
        Ok(Self { proc, port, log })
    }

    /// The master's children: the one worker.
    fn workers(&self) -> Vec<u32> {
        children_of(self.proc.pid())
    }

    /// Stops nginx gracefully (SIGQUIT flushes the buffered access log) and
    /// counts the requests it answered.
    pub(crate) fn stop_and_count(&mut self) -> Result<u64> {
        self.proc.stop(libc::SIGQUIT, Duration::from_secs(30))?;
        let log = fs::read(&self.log).with_context(|| format!("reading {}", self.log.display()))?;
        Ok(log.iter().filter(|&&b| b == b'\n').count() as u64)
    }
}

/// A running `tracer run`.
pub(crate) struct Tracer {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
}

impl Tracer {
    /// `flags`: what this run measures (`--hooks-only`, `--source packets`),
    /// given ahead of the arguments every run gets (`bin.extra`).
    pub(crate) fn start(
        bin: &TracerBin,
        dir: &WorkDir,
        name: &str,
        flags: &[&str],
    ) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut cmd = Command::new(bin.path);
        cmd.arg("run").arg("--metrics-addr").arg(addr.to_string());
        cmd.args(flags).args(bin.extra);
        let mut proc = Proc::spawn(&format!("tracer-{name}"), &mut cmd, &dir.path)?;
        // /readyz answers 200 once the hooks are attached and the reader runs.
        wait_for(Duration::from_secs(60), "tracer /readyz", || {
            proc.check_running()?;
            Ok(matches!(http_get(addr, "/readyz"), Ok((200, _))))
        })?;
        Ok(Self { proc, addr })
    }

    pub(crate) fn scrape(&self) -> Result<Scrape> {
        match http_get(self.addr, "/metrics")? {
            (200, body) => Ok(Scrape(body)),
            (status, body) => bail!("/metrics answered {status}: {}", body.trim()),
        }
    }

    /// Polls until `value` has not changed for a second; the value and the
    /// last scrape.
    pub(crate) fn settle(&mut self, value: impl Fn(&Scrape) -> f64) -> Result<(f64, Scrape)> {
        const POLL: Duration = Duration::from_millis(250);
        const QUIET: u32 = 4;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = f64::NAN;
        let mut same = 0;
        loop {
            self.proc.check_running()?;
            let scrape = self.scrape()?;
            let v = value(&scrape);
            same = if v == last { same + 1 } else { 0 };
            last = v;
            if same >= QUIET {
                return Ok((v, scrape));
            }
            if Instant::now() > deadline {
                say("warning: the tracer's figures were still moving after 60 s; using the last scrape");
                return Ok((v, scrape));
            }
            std::thread::sleep(POLL);
        }
    }
}

/// What wrk reported.
#[derive(Debug, Clone)]
pub(crate) struct Wrk {
    pub(crate) rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Anything wrong wrk reported (socket errors, non-2xx answers).
    pub(crate) errors: Vec<String>,
}

pub(crate) fn wrk_command(port: u16, seconds: u64) -> String {
    format!(
        "wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds}s --latency http://127.0.0.1:{port}/"
    )
}

pub(crate) fn run_wrk(dir: &WorkDir, name: &str, port: u16, seconds: u64) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        format!("-t{WRK_THREADS}"),
        format!("-c{WRK_CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".to_string(),
        format!("http://127.0.0.1:{port}/"),
    ]);
    let mut proc = Proc::spawn(&format!("wrk-{name}"), &mut cmd, &dir.path)?;
    let status = proc
        .wait_timeout(Duration::from_secs(seconds + 30))?
        .ok_or_else(|| anyhow!("wrk did not finish within {} s", seconds + 30))?;
    let out = fs::read_to_string(&proc.stdout).unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({status}):\n{out}\n{}", proc.stderr_tail());
    }
    parse_wrk(&out).with_context(|| format!("unexpected wrk output:\n{out}"))
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = Vec::new();
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = parse_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_duration_us(v.trim());
        } else if line.starts_with("Socket errors") || line.starts_with("Non-2xx") {
            errors.push(line.to_string());
        }
    }
    Ok(Wrk {
        rps: rps.ok_or_else(|| anyhow!("no Requests/sec line"))?,
        p50_us: p50.ok_or_else(|| anyhow!("no 50% latency line (--latency)"))?,
        p99_us: p99.ok_or_else(|| anyhow!("no 99% latency line (--latency)"))?,
        errors,
    })
}

/// wrk's durations: `112.00us`, `1.23ms`, `2.00s`, `1.00m`.
fn parse_duration_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

// ---------------------------------------------------------------- processes

/// A child process with its output in files, stopped when dropped so that no
/// peer outlives the bench, even on an error path.
pub(crate) struct Proc {
    name: String,
    child: Child,
    pub(crate) stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Result<Self> {
        Self::spawn_with(name, cmd, dir, true)
    }

    /// `capture_stdout`: send stdout to `<name>.stdout` (false when the caller
    /// set up a pipe). Stderr always goes to `<name>.stderr`.
    fn spawn_with(name: &str, cmd: &mut Command, dir: &Path, capture_stdout: bool) -> Result<Self> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        if capture_stdout {
            cmd.stdin(Stdio::null())
                .stdout(fs::File::create(&stdout).context("creating a stdout file")?);
        }
        cmd.stderr(fs::File::create(&stderr).context("creating a stderr file")?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.stderr_tail());
        }
        Ok(())
    }

    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn signal(&self, signal: i32) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill has no memory preconditions; the pid is our own child,
        // not yet reaped (we only reap through `self.child`).
        unsafe { libc::kill(pid, signal) };
    }

    /// Sends `signal` and waits for the exit; SIGKILL after `timeout`.
    pub(crate) fn stop(&mut self, signal: i32, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(signal);
        if let Some(status) = self.wait_timeout(timeout)? {
            return Ok(status);
        }
        self.child.kill().ok();
        self.child.wait().ok();
        bail!(
            "{} did not stop within {timeout:?} and was killed",
            self.name
        )
    }

    pub(crate) fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            if !matches!(self.wait_timeout(Duration::from_secs(5)), Ok(Some(_))) {
                self.child.kill().ok();
                self.child.wait().ok();
            }
        }
    }
}

/// The bench's scratch directory, removed at the end unless kept.
pub(crate) struct WorkDir {
    pub(crate) path: PathBuf,
    /// The copy of the nginx binary named [`NGINX_SERVICE`].
    nginx: PathBuf,
    keep: std::cell::Cell<bool>,
}

impl WorkDir {
    fn new() -> Result<Self> {
        Self::named("tracer-bench")
    }

    /// `/tmp/<prefix>-<our pid>`.
    pub(crate) fn named(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        // A leftover from an earlier run with the same pid is stale.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let original = which("nginx").ok_or_else(|| anyhow!("nginx is not on PATH"))?;
        let nginx = path.join(NGINX_SERVICE);
        fs::copy(&original, &nginx)
            .with_context(|| format!("copying {} to {}", original.display(), nginx.display()))?;
        Ok(Self {
            path,
            nginx,
            keep: std::cell::Cell::new(false),
        })
    }

    pub(crate) fn keep(&self) {
        self.keep.set(true);
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep.get() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn wait_for(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// Processes named `tracer` other than `own`: they hook the same syscalls
/// and tax every configuration, "off" included.
pub(crate) fn foreign_tracers(own: &[u32]) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !own.contains(pid))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "tracer")
        })
        .collect()
}

/// Waits up to `timeout` for foreign tracers to go; those still there.
pub(crate) fn wait_for_quiet(timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        let foreign = foreign_tracers(&[]);
        if foreign.is_empty() || Instant::now() > deadline {
            return foreign;
        }
        if !said {
            say(&format!(
                "other tracer processes are running (pids {foreign:?}); waiting up to {timeout:?} for them to finish"
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// CPU time of a whole process (every thread).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: Duration,
    system: Duration,
}

impl Cpu {
    fn total(self) -> Duration {
        self.user + self.system
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// Busy time of the whole machine (in `user`) and hypervisor steal (in
/// `system`), from the first line of /proc/stat.
fn system_cpu() -> Result<Cpu> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat: no `cpu` line"))?
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user).
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks[..] else {
        bail!("/proc/stat: short `cpu` line");
    };
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    let time = |t: u64| Duration::from_nanos(t * 1_000_000_000 / hz);
    Ok(Cpu {
        user: time(user + nice + system + irq + softirq),
        system: time(steal),
    })
}

/// Sum of the CPU of these processes.
fn cpu_of(pids: &[u32]) -> Result<Cpu> {
    let mut sum = Cpu {
        user: Duration::ZERO,
        system: Duration::ZERO,
    };
    for &pid in pids {
        let c = proc_cpu(pid)?;
        sum.user += c.user;
        sum.system += c.system;
    }
    Ok(sum)
}

/// CPU of every child this process has reaped so far.
fn children_cpu() -> Cpu {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Cpu {
        user: time(ru.ru_utime),
        system: time(ru.ru_stime),
    }
}

/// Processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // Field 4 (ppid) is the second field after the command name.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// User and system CPU of a whole process, from /proc/PID/stat.
fn proc_cpu(pid: u32) -> Result<Cpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: no field {i}"))
    };
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    let time = |t: u64| Duration::from_nanos(t * 1_000_000_000 / hz);
    Ok(Cpu {
        user: time(ticks(14)?),
        system: time(ticks(15)?),
    })
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub(crate) fn vm_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no {key}"))
}

// ---------------------------------------------------------------- HTTP and metrics

/// A GET without a client library. HTTP/1.0 so that the answer is never
/// chunked: the body is everything up to the close.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: bad status line"))?;
    Ok((status, body.to_string()))
}

/// One `/metrics` answer in OpenMetrics text.
#[derive(Debug, Clone)]
pub(crate) struct Scrape(pub(crate) String);

/// One sample line: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

impl Scrape {
    fn samples(&self) -> impl Iterator<Item = Sample<'_>> {
        self.0.lines().filter_map(parse_sample)
    }

    /// Sum of the samples of `name` whose labels include all of `want`.
    pub(crate) fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples()
            .filter(|(n, labels, _)| *n == name && want.iter().all(|w| labels.contains(w)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Non-zero samples of the given metrics, as `name{labels} value`.
    pub(crate) fn nonzero(&self, names: &[&str]) -> Vec<String> {
        self.samples()
            .filter(|(n, _, v)| names.contains(n) && *v != 0.0)
            .map(|(n, labels, v)| {
                let labels: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                if labels.is_empty() {
                    format!("{n} {v}")
                } else {
                    format!("{n}{{{}}} {v}", labels.join(","))
                }
            })
            .collect()
    }
}

/// `name{k="v",...} value [timestamp] [# exemplar]`, or `name value`.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        // Walk the label set honouring quotes: a value may hold `}` or `,`.
        let mut s = inner;
        loop {
            s = s.trim_start_matches(',');
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = s.split_once("=\"")?;
            let bytes = after.as_bytes();
            let mut i = 0;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let value = after.get(..i)?;
            labels.push((key.trim(), value));
            s = after.get(i + 1..)?;
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

// ---------------------------------------------------------------- report

#[derive(Default)]
struct Report {
    overhead: Option<Result<Vec<Run>, String>>,
    replay: Option<Result<Replay, String>>,
    memory: Option<Result<Memory, String>>,
    metadata: Option<Result<metadata::Metadata, String>>,
    protocols: Option<Result<protocols::Protocols, String>>,
    elapsed: Duration,
}

/// One line of the targets table.
struct Target {
    what: &'static str,
    measured: String,
    pass: Option<bool>,
}

impl Report {
    fn failures(&self) -> Vec<&'static str> {
        let mut failed = Vec::new();
        if matches!(self.overhead, Some(Err(_))) {
            failed.push("overhead");
        }
        if matches!(self.replay, Some(Err(_))) {
            failed.push("replay");
        }
        if matches!(self.memory, Some(Err(_))) {
            failed.push("memory");
        }
        if let Some(m) = &self.metadata {
            if m.as_ref().map_or(true, metadata::Metadata::incomplete) {
                failed.push("metadata");
            }
        }
        if let Some(p) = &self.protocols {
            let incomplete = p.as_ref().map_or(true, |p| {
                p.replays.iter().any(|r| r.replay.is_err())
                    || p.overheads.iter().any(Result::is_err)
            });
            if incomplete {
                failed.push("protocols");
            }
        }
        failed
    }

    fn markdown(&self, args: &BenchArgs) -> String {
        let mut md = String::new();
        let m = &mut md;
        let _ = writeln!(m, "## Benchmark results\n");
        machine_table(m, &[("nginx", "-v"), ("wrk", "-v")]);
        let _ = writeln!(
            m,
            "Command: `{}` (took {:.0} s)\n",
            command_line(),
            self.elapsed.as_secs_f64()
        );
        let mut targets = Vec::new();
        if let Some(overhead) = &self.overhead {
            let _ = writeln!(
                m,
                "### Overhead: nginx under `{}`\n",
                wrk_command(0, args.duration).replace(":0/", ":PORT/")
            );
            match overhead {
                Ok(runs) => {
                    let configs = Config::rotation(&args.sources);
                    overhead_tables(m, &configs, runs, &mut targets);
                }
                Err(e) => {
                    let _ = writeln!(m, "Could not run: {e}\n");
                }
            }
        }
        if let Some(memory) = &self.memory {
            let _ = writeln!(
                m,
                "### Memory: full tracer with {} idle keep-alive connections\n",
                args.idle_connections
            );
            match memory {
                Ok(mem) => memory_table(m, mem, &mut targets),
                Err(e) => {
                    let _ = writeln!(m, "Could not run: {e}\n");
                }
            }
        }
        if let Some(replay) = &self.replay {
            let _ = writeln!(
                m,
                "### Replay: user-space pipeline on a recording (`cargo bench -p tracer --bench pipeline`)\n"
            );
            match replay {
                Ok(r) => replay_table(m, r),
                Err(e) => {
                    let _ = writeln!(m, "Could not run: {e}\n");
                }
            }
        }
        if let Some(p) = &self.protocols {
            let _ = writeln!(m, "### Protocols (`--protocols`)\n");
            match p {
                Ok(p) => {
                    let http1 = self.replay.as_ref().and_then(|r| r.as_ref().ok());
                    protocols::section(m, p, http1);
                }
                Err(e) => {
                    let _ = writeln!(m, "Could not run: {e}\n");
                }
            }
        }
        if let Some(md) = &self.metadata {
            let _ = writeln!(m, "### Kubernetes metadata stage (`--metadata`)\n");
            match md {
                Ok(md) => metadata::section(m, md, args, &mut targets),
                Err(e) => {
                    let _ = writeln!(m, "Could not run: {e}\n");
                }
            }
        }
        if !targets.is_empty() {
            let _ = writeln!(
                m,
                "### Targets\n\n| target | measured | result |\n| --- | --- | --- |"
            );
            for t in &targets {
                let verdict = match t.pass {
                    Some(true) => "pass",
                    Some(false) => "**miss**",
                    None => "not measured",
                };
                let _ = writeln!(m, "| {} | {} | {verdict} |", t.what, t.measured);
            }
            let _ = writeln!(m);
        }
        md
    }
}

/// `configs`: the rotation the runs came from, in the order the tables list them.
fn overhead_tables(m: &mut String, configs: &[Config], runs: &[Run], targets: &mut Vec<Target>) {
    let syscalls = Config::Full(Source::Syscalls);
    let fulls: Vec<Config> = configs.iter().copied().filter(|c| c.is_full()).collect();
    let packet_fulls: Vec<Config> = fulls.iter().copied().filter(|&c| c != syscalls).collect();
    let of = |c: Config| runs.iter().filter(move |r| r.config == c);
    let med = |c: Config, f: &dyn Fn(&Run) -> Option<f64>| median(of(c).filter_map(f).collect());
    let rps = |c| med(c, &|r: &Run| Some(r.wrk.rps));
    let p50 = |c| med(c, &|r: &Run| Some(r.wrk.p50_us));
    let p99 = |c| med(c, &|r: &Run| Some(r.wrk.p99_us));
    let cpu = |c| med(c, &|r: &Run| r.cpu_us_per_request());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "–".into(),
    };
    let rounds = runs.iter().filter(|r| r.config == Config::Off).count();
    let _ = writeln!(
        m,
        "Medians of {rounds} alternated run(s) per configuration; ratios are of the medians.\n"
    );
    let _ = writeln!(
        m,
        "| configuration | req/s | vs off | p50 | p50 vs off | p99 | p99 vs off | tracer CPU per request | runs (req/s) | other load per run (cores) |"
    );
    let _ = writeln!(
        m,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    );
    for &c in configs {
        let all: Vec<String> = of(c)
            .map(|r| {
                let mark = if r.foreign.is_empty() { "" } else { "*" };
                format!("{}{mark}", fmt_int(r.wrk.rps))
            })
            .collect();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label(),
            rps(c).map_or("–".into(), fmt_int),
            ratio(rps(c), rps(Config::Off)),
            p50(c).map_or("–".into(), fmt_us),
            ratio(p50(c), p50(Config::Off)),
            p99(c).map_or("–".into(), fmt_us),
            ratio(p99(c), p99(Config::Off)),
            cpu(c).map_or("–".into(), |v| format!("{v:.2} µs")),
            all.join(", "),
            of(c)
                .map(|r| format!("{:.2} (steal {:.2})", r.other_load, r.steal))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let _ = writeln!(
        m,
        "\nOther load = cores kept busy by anything but nginx, wrk and the tracer during \
         the wrk run (from /proc/stat); steal = time the hypervisor took. Both are noise."
    );
    if runs.iter().any(|r| !r.foreign.is_empty()) {
        let _ = writeln!(
            m,
            "\n\\* another `tracer` process (not the bench's) was running at the start or end \
             of this run: its hooks slowed nginx too, so the run is suspect."
        );
    }
    // Where the CPU goes: with nginx and wrk each busy on one of the cores,
    // any hook work they do in their syscalls is throughput lost.
    let _ = writeln!(
        m,
        "\nCPU per request served, by process (median over runs; µs, user + sys):\n"
    );
    // The packet sources' cost is judged against the syscall full tracer's,
    // measured in the same rounds: a column only when one was measured.
    let (vs_syscalls_head, vs_syscalls_align) = if packet_fulls.is_empty() {
        ("", "")
    } else {
        (" this total / `tracer run` (full)'s total |", " ---: |")
    };
    let _ = writeln!(
        m,
        "| configuration | nginx worker | wrk | tracer | all three | off's total / this total |{vs_syscalls_head}\n| --- | ---: | ---: | ---: | ---: | ---: |{vs_syscalls_align}"
    );
    let total_cpu = |c: Config| {
        let split = |f: &dyn Fn(&Run) -> Option<(f64, f64)>| {
            let u = median(of(c).filter_map(|r| f(r).map(|x| x.0)).collect());
            let k = median(of(c).filter_map(|r| f(r).map(|x| x.1)).collect());
            u.zip(k)
        };
        let nginx = split(&|r: &Run| r.per_request_us(r.nginx_cpu));
        let wrk = split(&|r: &Run| r.per_request_us(r.wrk_cpu));
        let tracer = split(&|r: &Run| r.cpu_split_us());
        let total: f64 = [nginx, wrk, tracer]
            .iter()
            .flatten()
            .map(|(u, k)| u + k)
            .sum();
        (nginx, wrk, tracer, total)
    };
    let (.., off_total) = total_cpu(Config::Off);
    let (.., full_total) = total_cpu(syscalls);
    let cpu_vs_syscalls = |c: Config| {
        let (.., total) = total_cpu(c);
        (total > 0.0 && full_total > 0.0).then(|| total / full_total)
    };
    for &c in configs {
        let (nginx, wrk, tracer, total) = total_cpu(c);
        let cell = |v: Option<(f64, f64)>| {
            v.map_or("–".into(), |(u, k)| {
                format!("{:.2} ({u:.2} + {k:.2})", u + k)
            })
        };
        let vs_syscalls = if packet_fulls.is_empty() {
            String::new()
        } else if packet_fulls.contains(&c) {
            format!(
                " {} |",
                cpu_vs_syscalls(c).map_or("–".into(), |v| format!("{v:.3}"))
            )
        } else {
            " |".into()
        };
        // With both cores saturated, throughput goes as the inverse of the
        // CPU a request costs: a noise-resistant reading of the ratios above.
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {total:.2} | {} |{vs_syscalls}",
            c.label(),
            cell(nginx),
            cell(wrk),
            cell(tracer),
            if total > 0.0 {
                format!("{:.3}", off_total / total)
            } else {
                "–".into()
            },
        );
    }
    let full_vs_hooks = match (rps(syscalls), rps(Config::HooksOnly)) {
        (Some(f), Some(h)) if h > 0.0 => Some(f / h),
        _ => None,
    };
    let (.., hooks_total) = total_cpu(Config::HooksOnly);
    let _ = writeln!(
        m,
        "\nFull tracer vs hooks-only: throughput {}, p50 {}, p99 {}; by CPU per request \
         (hooks-only's total / full's total, the same ratio with less noise) {}.\n",
        full_vs_hooks.map_or("–".into(), |v| format!("{v:.3}")),
        ratio(p50(syscalls), p50(Config::HooksOnly)),
        ratio(p99(syscalls), p99(Config::HooksOnly)),
        if full_total > 0.0 {
            format!("{:.3}", hooks_total / full_total)
        } else {
            "–".into()
        },
    );

    let _ = writeln!(
        m,
        "Full tracer, each run (served = nginx access-log lines; counted = sum of \
         `{SERVER_COUNT}{{service_name=\"{NGINX_SERVICE}\"}}` once it stopped changing; CPU = the \
         tracer's utime+stime from wrk's start until then):\n"
    );
    for (i, &c) in fulls.iter().enumerate() {
        // One table per full tracer; named only when there are several.
        if fulls.len() > 1 {
            let gap = if i == 0 { "" } else { "\n" };
            let _ = writeln!(m, "{gap}{}:\n", c.label());
        }
        full_runs_table(m, of(c));
    }
    let wrk_errors: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.wrk
                .errors
                .iter()
                .map(move |e| format!("{} – {e}", r.config.slug()))
        })
        .collect();
    if !wrk_errors.is_empty() {
        let _ = writeln!(m, "\nwrk reported: {}", wrk_errors.join("; "));
    }
    let _ = writeln!(m);

    // Exactness is every full tracer's, whatever it reads.
    let full_runs = || runs.iter().filter(|r| r.config.is_full());
    let ratios: Vec<f64> = full_runs().filter_map(Run::counted_ratio).collect();
    let exact = full_runs().all(|r| r.counted == Some(r.served as f64));
    let listed: Vec<String> = fulls
        .iter()
        .map(|&c| {
            let each: Vec<String> = of(c)
                .filter_map(Run::counted_ratio)
                .map(|v| format!("{v:.4}"))
                .collect();
            if fulls.len() > 1 {
                format!("{} {}", c.slug(), each.join(", "))
            } else {
                each.join(", ")
            }
        })
        .collect();
    targets.push(Target {
        what: "counted/served = 1.000 (every full run)",
        measured: if ratios.is_empty() {
            "–".into()
        } else {
            let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            format!("worst {worst:.4} (runs: {})", listed.join("; "))
        },
        pass: (!ratios.is_empty()).then_some(exact),
    });
    targets.push(Target {
        what: "full-tracer throughput within 5% of hooks-only",
        measured: full_vs_hooks.map_or("–".into(), |v| format!("{v:.3} of hooks-only")),
        pass: full_vs_hooks.map(|v| v >= TARGET_HOOKS_RATIO),
    });
    let cpu_full = cpu(syscalls);
    targets.push(Target {
        what: "≤ 5 µs tracer (user-space) CPU per request",
        measured: cpu_full.map_or("–".into(), |v| format!("{v:.2} µs (median)")),
        pass: cpu_full.map(|v| v <= TARGET_CPU_US),
    });
    let both = Config::Full(Source::Both);
    if configs.contains(&both) {
        let both_vs_syscalls = cpu_vs_syscalls(both);
        targets.push(Target {
            what: "`--source both` CPU per request (nginx worker + wrk + tracer) within 5% of syscalls alone",
            measured: both_vs_syscalls.map_or("–".into(), |v| format!("{v:.3} of syscalls'")),
            pass: both_vs_syscalls.map(|v| v <= TARGET_BOTH_CPU_RATIO),
        });
    }
}

/// One full tracer's runs, one row each, and its kernel drops by cause.
fn full_runs_table<'a>(m: &mut String, runs: impl Iterator<Item = &'a Run>) {
    let _ = writeln!(
        m,
        "| run | req/s | served | counted | counted/served | tracer CPU per request (user + sys) | tracer RSS | kernel drops | other loss counters | others' requests traced |"
    );
    let _ = writeln!(
        m,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    );
    let mut drops = Vec::new();
    for (i, r) in runs.enumerate() {
        let (kernel, losses): (Vec<&String>, Vec<&String>) = r
            .losses
            .iter()
            .partition(|l| l.starts_with("tracer_kernel_drops_total"));
        drops.extend(kernel.into_iter().map(String::as_str));
        let _ = writeln!(
            m,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            if r.foreign.is_empty() { "" } else { "*" },
            fmt_int(r.wrk.rps),
            r.served,
            r.counted.map_or("–".into(), |c| format!("{c:.0}")),
            r.counted_ratio().map_or("–".into(), |v| format!("{v:.4}")),
            match (r.cpu_us_per_request(), r.cpu_split_us()) {
                (Some(t), Some((u, k))) => format!("{t:.2} µs ({u:.2} + {k:.2})"),
                _ => "–".into(),
            },
            r.rss_kib.map_or("–".into(), fmt_kib),
            r.kernel_drops.map_or("–".into(), |v| format!("{v:.0}")),
            if losses.is_empty() {
                "none".to_string()
            } else {
                losses
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            r.others_traced.map_or("–".into(), |v| format!("{v:.0}")),
        );
    }
    if !drops.is_empty() {
        let _ = writeln!(m, "\nKernel drops by cause: {}", drops.join("; "));
    }
}

fn memory_table(m: &mut String, mem: &Memory, targets: &mut Vec<Target>) {
    let per_conn =
        (mem.open.total as f64 - mem.before.total as f64) * 1024.0 / mem.opened.max(1) as f64;
    let _ = writeln!(
        m,
        "| | before | with the connections open | after closing them |"
    );
    let _ = writeln!(m, "| --- | ---: | ---: | ---: |");
    let _ = writeln!(m, "| client connections open | 0 | {} | 0 |", mem.opened);
    let _ = writeln!(
        m,
        "| `tracer_connections` (both ends are traced) | {:.0} | {:.0} | {:.0} |",
        mem.conns_before, mem.conns, mem.conns_after_close
    );
    let (b, o, a) = (&mem.before, &mem.open, &mem.after);
    let rows = [
        ("tracer VmRSS", [b.total, o.total, a.total]),
        ("… RssAnon (heap, stacks)", [b.anon, o.anon, a.anon]),
        (
            "… RssFile (binary, libraries, BPF map mappings)",
            [b.file, o.file, a.file],
        ),
        (
            "… … of which BPF map mappings (ring buffer counted twice)",
            [b.bpf_maps, o.bpf_maps, a.bpf_maps],
        ),
    ];
    for (label, [before, open, after]) in rows {
        let _ = writeln!(
            m,
            "| {label} | {} | {} | {} |",
            fmt_kib(before),
            fmt_kib(open),
            fmt_kib(after),
        );
    }
    let _ = writeln!(
        m,
        "\nPeak VmHWM (start-up included): {}. VmRSS growth per client connection: {per_conn:.0} bytes.\n",
        fmt_kib(mem.hwm_kib)
    );
    let mib = mem.open.total as f64 / 1024.0;
    targets.push(Target {
        what: "RSS ≤ 64 MiB with 10,000 idle keep-alive connections",
        measured: format!("{mib:.1} MiB with {} connections", mem.opened),
        // Fewer connections (--idle-connections) cannot judge the target.
        pass: (mem.opened >= 10_000).then_some(mib <= TARGET_RSS_MIB),
    });
}

fn replay_table(m: &mut String, r: &Replay) {
    let _ = writeln!(
        m,
        "Recorded: {} records ({:.1} MiB file) by `tracer record --seconds {RECORD_SECONDS}` while `{}` ran; \
         replayed 5 times through a fresh pipeline with the metrics sink, median pass by CPU time. \
         \"Per core\" = per CPU-second of the replaying process.\n",
        r.recorded,
        r.file_bytes as f64 / (1024.0 * 1024.0),
        wrk_command(0, RECORD_LOAD_SECONDS).replace(":0/", ":PORT/"),
    );
    let _ = writeln!(m, "| figure | value |\n| --- | ---: |");
    let rows = [
        ("events replayed", "kept"),
        (
            "exchanges (requests, client and server side) produced",
            "exchanges",
        ),
        ("events/s per core", "events_per_cpu_s"),
        ("exchanges/s per core", "exchanges_per_cpu_s"),
        ("ns per event", "ns_per_event"),
        ("µs per exchange", "us_per_exchange"),
        ("events/s wall clock", "events_per_wall_s"),
    ];
    for (label, key) in rows {
        let v = r.get(key);
        let v = match v.parse::<f64>() {
            Ok(n) if n >= 1000.0 => fmt_int(n),
            _ => v.to_string(),
        };
        let _ = writeln!(m, "| {label} | {v} |");
    }
    let _ = writeln!(m);
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

pub(crate) fn fmt_int(v: f64) -> String {
    let digits = format!("{:.0}", v.round());
    let (sign, digits) = digits
        .strip_prefix('-')
        .map_or(("", digits.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

pub(crate) fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(crate) fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

/// The machine a report was measured on, with the version of each of
/// `tools` (the command and its version flag), as a markdown table.
pub(crate) fn machine_table(m: &mut String, tools: &[(&str, &str)]) {
    let _ = writeln!(m, "| machine | |\n| --- | --- |");
    let _ = writeln!(m, "| CPU | {} |", cpu_model());
    let _ = writeln!(m, "| cores (`nproc`) | {} |", nproc());
    let _ = writeln!(m, "| kernel (`uname -r`) | {} |", kernel_release());
    let _ = writeln!(m, "| memory | {} |", mem_total());
    for (tool, flag) in tools {
        let _ = writeln!(m, "| {tool} | {} |", tool_version(tool, &[flag]));
    }
    let _ = writeln!(m);
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn nproc() -> String {
    std::thread::available_parallelism().map_or_else(|_| "unknown".into(), |n| n.to_string())
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

fn mem_total() -> String {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: u64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The first line a tool prints about its version (nginx prints to stderr).
fn tool_version(tool: &str, args: &[&str]) -> String {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/\n  1 threads and 16 connections\n\
                   \x20 Latency Distribution\n     50%  112.00us\n     75%  130.00us\n     90%  1.50ms\n     99%    2.00s\n\
                   \x20 1234567 requests in 10.00s, 180.00MB read\n\
                   Requests/sec: 123456.70\nTransfer/sec:     18.00MB\n";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.rps, 123456.7);
        assert_eq!(w.p50_us, 112.0);
        assert_eq!(w.p99_us, 2e6);
        assert!(w.errors.is_empty());
    }

    #[test]
    fn sums_openmetrics_samples_by_label() {
        let text = "# TYPE x counter\n\
                    http_server_request_duration_seconds_count{service_name=\"nginx\",http_route=\"/\"} 10\n\
                    http_server_request_duration_seconds_count{service_name=\"nginx\",http_route=\"/a,}\"} 5 # {trace_id=\"1\"} 1\n\
                    http_server_request_duration_seconds_count{service_name=\"wrk\"} 7\n\
                    tracer_connections 3\n# EOF\n";
        let s = Scrape(text.into());
        assert_eq!(s.sum(SERVER_COUNT, &[("service_name", "nginx")]), 15.0);
        assert_eq!(s.sum(SERVER_COUNT, &[]), 22.0);
        assert_eq!(s.sum("tracer_connections", &[]), 3.0);
        assert_eq!(
            s.nonzero(&["tracer_connections"]),
            vec!["tracer_connections 3"]
        );
    }

    #[test]
    fn median_and_formatting() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(fmt_int(1234567.4), "1,234,567");
        assert_eq!(fmt_int(999.0), "999");
    }
}
