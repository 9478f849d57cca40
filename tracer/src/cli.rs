//! Command line: every flag can also come from a `TRACER_*` environment
//! variable, so a DaemonSet configures the tracer without a wrapper script.
//! Parsing only; `config` turns this into a validated `Config`.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::source::loader::{AttachMode, SourceChoice};

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "eBPF tracer: per-service HTTP/1.x RED metrics from socket syscalls, labelled with Kubernetes pods and workloads, no change to the traced programs",
    long_about = "eBPF tracer: hooks socket syscalls on this machine, reassembles HTTP/1.x \
                  requests and responses of every process, and serves per-service RED metrics \
                  (rate, errors, duration) for Prometheus. Needs root (or CAP_BPF, CAP_PERFMON, \
                  CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: trace and serve /metrics, /healthz and /readyz.
    Run(RunArgs),
    /// Trace and print one line per HTTP request/response pair (ad hoc debugging).
    Watch(WatchArgs),
    /// Write raw ring-buffer records (payload included) to a file, for replay
    /// benchmarks and bug reports. The file is as sensitive as the traffic.
    Record(RecordArgs),
    /// Check privileges and kernel features, load every program of both attach
    /// paths through the verifier, report the attach mode `auto` picks and
    /// whether stream positions come from the sockets' sequence counters, and exit.
    Check(CaptureArgs),
}

/// Flags shared by every command that loads the kernel programs.
#[derive(Debug, Args, Clone)]
pub struct CaptureArgs {
    /// How to hook syscalls: `auto` uses syscall tracepoints when the kernel has them, else kprobes.
    #[arg(long, env = "TRACER_ATTACH", value_enum, default_value = "auto")]
    pub attach: AttachMode,

    /// Where bytes come from: `syscalls` hooks the processes' socket syscalls; `packets` reads the TCP segments on the interfaces (an eBPF socket filter on AF_PACKET sockets), which also sees bytes moved by sendfile, splice or io_uring and processes in other network namespaces behind a veth; `both` runs the two, and the packet path skips the flows the syscall hooks already trace.
    #[arg(long, env = "TRACER_SOURCE", value_enum, default_value = "syscalls")]
    pub source: SourceChoice,

    /// With --source packets or both: the interfaces to read, by name (comma-separated), e.g. lo,eth0, each opened at start-up only. Default: every interface of the tracer's network namespace, including those that appear later (pod veths), followed through rtnetlink's link notifications.
    #[arg(
        long,
        env = "TRACER_INTERFACES",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub interfaces: Vec<String>,

    /// Bytes captured per read or write (1 to 16384); the rest of a longer chunk is skipped and
    /// counted. HTTP/2 (also after an h2c upgrade), PostgreSQL, MySQL and Redis connections are
    /// raised to 16384 once recognised, and HTTP/2 frame headers beyond that are still found.
    #[arg(long, env = "TRACER_CAPTURE_BYTES", default_value_t = tracer_common::DEFAULT_CAPTURE)]
    pub capture_bytes: u32,

    /// Memory the tracer may use in all, in MiB (at least 50). It sizes the ring buffers (a 64th, 1 to 64 MiB) and the connection tables (4 KiB per connection after 48 MiB for the daemon itself). Default: the memory limit of the tracer's cgroup (memory.max, which also pays for BPF maps), else 512. At 90% of it in use, payload capture is shed (tracer_memory_pressure, capture_shed) until usage is below 80%.
    #[arg(long, env = "TRACER_MEMORY_MIB")]
    pub memory_mib: Option<u32>,

    /// Kernel-to-daemon ring buffers in MiB, in total (a power of two, 1 to 1024), instead of the share of --memory-mib: one ring per CPU, up to 16, each an equal share rounded down to a power of two. A ring more than half full gets chunks of HTTP/1.x and unrecognised connections captured to 512 bytes only (counted as capture_shed) before whole events are lost.
    #[arg(long, env = "TRACER_RING_BUFFER_MIB")]
    pub ring_buffer_mib: Option<u32>,

    /// Connections traced at once (16 to 4194304; a packet flow reported from both its ends is two), instead of the share of --memory-mib. At capacity the kernel traces no new ones and the daemon evicts its least recently active ones; both are counted.
    #[arg(long, env = "TRACER_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,

    /// Name a service after an executable: EXE=NAME (repeatable). Default: the executable's name. Applies to processes outside pods; a pod's service comes from its annotation, app.kubernetes.io/name label or owner.
    #[arg(
        long = "service-name",
        env = "TRACER_SERVICE_NAMES",
        value_delimiter = ',',
        value_name = "EXE=NAME"
    )]
    pub service_names: Vec<String>,

    /// Distinct http_route values per service; further routes are folded into "/**" and counted.
    #[arg(long, env = "TRACER_MAX_ROUTES_PER_SERVICE", default_value_t = 100)]
    pub max_routes_per_service: usize,

    /// Log format.
    #[arg(long, env = "TRACER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "tracer=debug". The default silences the Kubernetes client's own per-request messages: the tracer logs one warning per API outage and counts the failures in tracer_kubernetes_errors_total.
    #[arg(long, env = "TRACER_LOG", default_value = "info,kube_client=off")]
    pub log: String,
}

/// Flags of the commands that turn events into exchanges (`run`, `watch`).
#[derive(Debug, Args, Clone)]
pub struct PipelineArgs {
    /// Kubernetes API access through this kubeconfig (also KUBECONFIG). Without it the tracer uses the in-cluster configuration when KUBERNETES_SERVICE_HOST is set, and runs without Kubernetes otherwise.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// This machine's Kubernetes node name: only its pods are watched. Required in a cluster (set it from the downward API, spec.nodeName); by hand with --kubeconfig it defaults to the host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// How long the series of a deleted pod stay before they are removed, e.g. 300s, 5m.
    #[arg(long, env = "TRACER_POD_GRACE_PERIOD", default_value = "5m", value_parser = parse_duration)]
    pub pod_grace_period: std::time::Duration,

    /// A request without a response after this long is recorded with error_type="timeout", e.g. 30s, 2m.
    #[arg(long, env = "TRACER_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: std::time::Duration,
}

/// "300", "300s", "5m", "1h", "250ms".
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration; use a number with s, m, h or ms, e.g. 30s")
    })?;
    let millis = match unit {
        "ms" => Some(value),
        "" | "s" => value.checked_mul(1000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use s, m, h or ms, e.g. 30s"
            ))
        }
    };
    millis
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "TRACER_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,

    /// Attach the hooks but make them return at once, trace nothing (measures the hook overhead floor).
    #[arg(long, env = "TRACER_HOOKS_ONLY")]
    pub hooks_only: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Only this process id (repeatable).
    #[arg(long, env = "TRACER_WATCH_PID", value_delimiter = ',')]
    pub pid: Vec<u32>,

    /// Only processes with this service name: the executable's name unless --service-name renames it (repeatable).
    #[arg(long = "process", env = "TRACER_WATCH_PROCESS", value_delimiter = ',')]
    pub process: Vec<String>,

    /// Only connections with this local or remote port (repeatable).
    #[arg(long, env = "TRACER_WATCH_PORT", value_delimiter = ',')]
    pub port: Vec<u16>,

    /// Only processes in pods of this Kubernetes namespace (repeatable).
    #[arg(long, env = "TRACER_WATCH_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,

    /// Only processes in this pod (repeatable; a name, or NAMESPACE/NAME).
    #[arg(long, env = "TRACER_WATCH_POD", value_delimiter = ',')]
    pub pod: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// File to write.
    #[arg(long, short)]
    pub output: std::path::PathBuf,

    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
