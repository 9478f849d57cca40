//! Owns the kernel side: checks what the running kernel and process allow,
//! loads the embedded eBPF object with its maps sized from the config, picks
//! the attach mode by probing the kernel, attaches every hook (and the
//! packet path's socket filter, `packet_sockets`), and hands the
//! ring buffer, the socket table and the stats map to the rest of the daemon.

use std::{os::fd::AsFd, path::Path};

use aya::{
    maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuArray, ProgramArray},
    programs::{KProbe, SocketFilter, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use tracer_common::{stat, ClientOwner, ConnInfo, FlowKey, SockOffsets, SocketEnds, MAX_RINGS};

use super::{
    btf,
    packet_sockets::{Filter, Interface, PacketSockets},
    packets::owners::SocketNotes,
};

use crate::error::StartError;
use crate::metadata::procfs::netns_of;
use crate::pipeline::conntrack::{FlowAt, KernelSockets};

/// The kernel programs, built by build.rs from tracer-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer.bpf.o"));

const TRACEFS: &str = "/sys/kernel/tracing";
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// How syscall hooks attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Syscall tracepoints when the kernel has them, else kprobes.
    Auto,
    /// `syscalls/sys_{enter,exit}_*` tracepoints.
    Tracepoint,
    /// kprobes / kretprobes on the `__x64_sys_*` entry points.
    Kprobe,
}

/// Which kernel sources run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// The socket syscall hooks.
    Syscalls,
    /// The socket filter on the interfaces' packets.
    Packets,
    /// Both; the packet path skips flows the hooks trace.
    Both,
}

impl SourceChoice {
    pub fn syscalls(self) -> bool {
        self != SourceChoice::Packets
    }

    pub fn packets(self) -> bool {
        self != SourceChoice::Syscalls
    }
}

/// One syscall hook: its tracepoint program and its kprobe program.
struct Hook {
    tp_program: &'static str,
    tracepoint: &'static str,
    kp_program: &'static str,
    symbol: &'static str,
}

const fn hook(
    tp_program: &'static str,
    tracepoint: &'static str,
    kp_program: &'static str,
    symbol: &'static str,
) -> Hook {
    Hook {
        tp_program,
        tracepoint,
        kp_program,
        symbol,
    }
}

/// Every syscall hook, in both attach modes.
const SYSCALL_HOOKS: [Hook; 22] = [
    hook(
        "tp_exit_read",
        "sys_exit_read",
        "kp_exit_read",
        "__x64_sys_read",
    ),
    hook(
        "tp_exit_readv",
        "sys_exit_readv",
        "kp_exit_readv",
        "__x64_sys_readv",
    ),
    hook(
        "tp_exit_recvfrom",
        "sys_exit_recvfrom",
        "kp_exit_recvfrom",
        "__x64_sys_recvfrom",
    ),
    hook(
        "tp_exit_recvmsg",
        "sys_exit_recvmsg",
        "kp_exit_recvmsg",
        "__x64_sys_recvmsg",
    ),
    hook(
        "tp_exit_write",
        "sys_exit_write",
        "kp_exit_write",
        "__x64_sys_write",
    ),
    hook(
        "tp_exit_writev",
        "sys_exit_writev",
        "kp_exit_writev",
        "__x64_sys_writev",
    ),
    hook(
        "tp_exit_sendto",
        "sys_exit_sendto",
        "kp_exit_sendto",
        "__x64_sys_sendto",
    ),
    hook(
        "tp_exit_sendmsg",
        "sys_exit_sendmsg",
        "kp_exit_sendmsg",
        "__x64_sys_sendmsg",
    ),
    hook(
        "tp_exit_sendfile64",
        "sys_exit_sendfile64",
        "kp_exit_sendfile64",
        "__x64_sys_sendfile64",
    ),
    hook(
        "tp_exit_preadv2",
        "sys_exit_preadv2",
        "kp_exit_preadv2",
        "__x64_sys_preadv2",
    ),
    hook(
        "tp_exit_pwritev2",
        "sys_exit_pwritev2",
        "kp_exit_pwritev2",
        "__x64_sys_pwritev2",
    ),
    hook(
        "tp_exit_recvmmsg",
        "sys_exit_recvmmsg",
        "kp_exit_recvmmsg",
        "__x64_sys_recvmmsg",
    ),
    hook(
        "tp_exit_sendmmsg",
        "sys_exit_sendmmsg",
        "kp_exit_sendmmsg",
        "__x64_sys_sendmmsg",
    ),
    hook(
        "tp_exit_splice",
        "sys_exit_splice",
        "kp_exit_splice",
        "__x64_sys_splice",
    ),
    hook(
        "tp_exit_accept",
        "sys_exit_accept",
        "kp_exit_accept",
        "__x64_sys_accept",
    ),
    hook(
        "tp_exit_accept4",
        "sys_exit_accept4",
        "kp_exit_accept4",
        "__x64_sys_accept4",
    ),
    hook(
        "tp_exit_connect",
        "sys_exit_connect",
        "kp_exit_connect",
        "__x64_sys_connect",
    ),
    hook(
        "tp_exit_dup",
        "sys_exit_dup",
        "kp_exit_dup",
        "__x64_sys_dup",
    ),
    hook(
        "tp_exit_dup2",
        "sys_exit_dup2",
        "kp_exit_dup2",
        "__x64_sys_dup2",
    ),
    hook(
        "tp_exit_dup3",
        "sys_exit_dup3",
        "kp_exit_dup3",
        "__x64_sys_dup3",
    ),
    hook(
        "tp_exit_fcntl",
        "sys_exit_fcntl",
        "kp_exit_fcntl",
        "__x64_sys_fcntl",
    ),
    hook(
        "tp_enter_close",
        "sys_enter_close",
        "kp_enter_close",
        "__x64_sys_close",
    ),
];

/// TCP state changes: the syscall hooks' client sockets, and the packet
/// path's note of which process connected each client socket.
const SOCK_STATE: (&str, &str, &str) = ("tp_inet_sock_set_state", "sock", "inet_sock_set_state");

/// Tracepoints both attach modes of the syscall hooks need (not syscall
/// tracepoints).
const COMMON_TRACEPOINTS: [(&str, &str, &str); 2] = [
    SOCK_STATE,
    ("tp_sched_process_exit", "sched", "sched_process_exit"),
];

/// `sock/inet_sock_set_state` fields the kernel program reads, at the offsets
/// it reads them (tracer-ebpf/src/probes/sock_state.rs).
const SOCK_STATE_FIELDS: [(&str, usize); 11] = [
    ("skaddr", 8),
    ("oldstate", 16),
    ("newstate", 20),
    ("sport", 24),
    ("dport", 26),
    ("family", 28),
    ("protocol", 30),
    ("saddr", 32),
    ("daddr", 36),
    ("saddr_v6", 40),
    ("daddr_v6", 56),
];

/// Fails if the running kernel lays out `inet_sock_set_state` differently
/// from what the kernel program was compiled for.
fn check_sock_state_format() -> Result<(), StartError> {
    let path = Path::new(TRACEFS).join("events/sock/inet_sock_set_state/format");
    let format = std::fs::read_to_string(&path).map_err(|e| {
        StartError::Load(format!(
            "{}: {e} (needed for TCP state tracking)",
            path.display()
        ))
    })?;
    for (field, offset) in SOCK_STATE_FIELDS {
        if field_offset(&format, field) != Some(offset) {
            return Err(StartError::Load(format!(
                "tracepoint sock/inet_sock_set_state: field {field} is not at offset {offset} \
                 on this kernel; this tracer build does not support it"
            )));
        }
    }
    Ok(())
}

/// The offset of `field` in a tracefs event format description, whose
/// lines read "field:const void * skaddr;\toffset:8;\tsize:8;...".
fn field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let (decl, rest) = line.trim().strip_prefix("field:")?.split_once(';')?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
    })
}

/// What the loader needs from the config.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub mode: AttachMode,
    pub capture_limit: u32,
    pub ring_buffer_bytes: u32,
    pub max_connections: u32,
    /// Attach the hooks but make them return at once (benchmark floor).
    pub hooks_only: bool,
    pub source: SourceChoice,
    /// The packet path's interfaces; empty: every interface, followed as
    /// they come and go.
    pub interfaces: Vec<Interface>,
}

/// The loaded and attached kernel side.
pub struct Kernel {
    /// Keep alive: dropping it detaches every program.
    pub ebpf: Ebpf,
    pub mode: AttachMode,
    /// The event rings in use, in CPU order (`cpu % rings.len()`).
    pub events: Vec<MapData>,
    /// What the pipeline may change in the kernel's tables.
    pub control: KernelControl,
    /// The size of the socket table, for the metrics.
    pub socket_counter: SocketCounter,
    pub stats: PerCpuArray<MapData, u64>,
    /// Tells the kernel side to shed payload (`budget::Pressure`).
    pub shedding: Shedding,
    /// The packet path's AF_PACKET sockets: closing them (dropping this)
    /// detaches the filter.
    pub packet_sockets: PacketSockets,
    /// The kernel's notes of the node's own connections, for the packet
    /// path.
    pub notes: Option<KernelNotes>,
}

/// The kernel side's `CLIENTS` and `SERVED` tables.
pub struct KernelNotes {
    clients: HashMap<MapData, SocketEnds, ClientOwner>,
    served: HashMap<MapData, SocketEnds, u8>,
}

impl SocketNotes for KernelNotes {
    fn client(&self, ends: &SocketEnds) -> Option<ClientOwner> {
        self.clients.get(ends, 0).ok()
    }

    fn served(&self, ends: &SocketEnds) -> bool {
        self.served.get(ends, 0).is_ok()
    }
}

/// The kernel side's `SHEDDING` switch.
pub struct Shedding(Array<MapData, u32>);

impl Shedding {
    /// Asks the kernel side to shed payload capture (or to stop).
    pub fn set(&mut self, on: bool) {
        if let Err(e) = self.0.set(0, u32::from(on), 0) {
            tracing::warn!(error = %e, "could not switch payload shedding");
        }
    }
}

/// The one channel through which the pipeline steers the kernel side: the
/// socket table (stop tracing a connection, adopt one found open).
pub struct KernelControl {
    sockets: HashMap<MapData, u64, ConnInfo>,
    /// Descriptor counts of `dup`ed connections, by connection id.
    dup_refs: HashMap<MapData, u64, u32>,
    /// The flows the syscall hooks trace, which the packet path skips;
    /// None without a packet path (no syscall per connection for nothing).
    covered: Option<HashMap<MapData, FlowKey, u32>>,
}

impl KernelSockets for KernelControl {
    fn forget(&mut self, key: u64, conn_id: u64) {
        // Already gone (closed meanwhile) is fine.
        if self
            .sockets
            .get(&key, 0)
            .is_ok_and(|info| info.conn_id == conn_id)
        {
            let _ = self.sockets.remove(&key);
        }
        let _ = self.dup_refs.remove(&conn_id);
    }

    fn adopt(&mut self, key: u64, info: &ConnInfo) -> bool {
        const BPF_NOEXIST: u64 = 1;
        self.sockets.insert(key, *info, BPF_NOEXIST).is_ok()
    }

    fn lookup(&self, key: u64) -> Option<ConnInfo> {
        self.sockets.get(&key, 0).ok()
    }

    fn narrow(&mut self, flow: &FlowAt) {
        const BPF_EXIST: u64 = 2;
        if let Some(covered) = self.covered.as_mut() {
            // Gone (its socket closed, or the table was full when the hooks
            // announced it): only the packet path's copies cost, which the
            // pipeline drops.
            let _ = covered.insert(flow.key, flow.netns, BPF_EXIST);
        }
    }

    fn cover(&mut self, flow: &FlowAt) {
        if let Some(covered) = self.covered.as_mut() {
            // A full table only costs the packet path's copies.
            let _ = covered.insert(flow.key, flow.netns, 0);
        }
    }
}

/// A second handle on the socket table, only ever read: the metrics server
/// counts the table's entries with it, so the pipeline's handle stays the
/// pipeline's alone and its hot path takes no lock.
pub struct SocketCounter {
    sockets: HashMap<MapData, u64, ConnInfo>,
    capacity: usize,
}

impl SocketCounter {
    fn new(sockets: &HashMap<MapData, u64, ConnInfo>, capacity: u32) -> Result<Self, StartError> {
        let failed = |e: String| StartError::Load(format!("map SOCKETS, second handle: {e}"));
        let fd = IterableMap::map(sockets)
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| failed(e.to_string()))?;
        let data = MapData::from_fd(fd).map_err(|e| failed(e.to_string()))?;
        let sockets = HashMap::try_from(Map::HashMap(data)).map_err(|e| failed(e.to_string()))?;
        Ok(Self {
            sockets,
            capacity: capacity as usize,
        })
    }

    /// Entries in the table now, by a walk of its keys: one
    /// `BPF_MAP_GET_NEXT_KEY` syscall per entry, so next to nothing for the
    /// idle table and at most the table's capacity in syscalls. When a key
    /// is deleted under the walk the kernel starts again from the first key,
    /// so while connections churn the count can run high (never past the
    /// capacity, where the walk stops); on a still table it is exact.
    pub fn count(&self) -> usize {
        self.sockets
            .keys()
            .take(self.capacity)
            .filter(Result::is_ok)
            .count()
    }
}

/// The kernel side's event rings, `EVENTS_0` to `EVENTS_15`.
const RING_NAMES: [&str; MAX_RINGS] = [
    "EVENTS_0",
    "EVENTS_1",
    "EVENTS_2",
    "EVENTS_3",
    "EVENTS_4",
    "EVENTS_5",
    "EVENTS_6",
    "EVENTS_7",
    "EVENTS_8",
    "EVENTS_9",
    "EVENTS_10",
    "EVENTS_11",
    "EVENTS_12",
    "EVENTS_13",
    "EVENTS_14",
    "EVENTS_15",
];

/// Smallest ring the kernel accepts: one page.
const PAGE: u32 = 4096;

/// How `--ring-buffer-mib` is spread over the per-CPU rings.
#[derive(Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Rings in use: one per CPU, up to `MAX_RINGS`.
    pub count: u32,
    /// Bytes per ring: an equal share of the total, rounded down to a power
    /// of two (the kernel requires one), at least a page.
    pub bytes: u32,
    /// Bytes a CPU writes before it wakes the daemon: a quarter of its share
    /// of its ring, between 4 and 128 KiB (the daemon then reads every ring).
    pub wakeup_bytes: u32,
}

impl RingLayout {
    pub fn new(total_bytes: u32, cpus: u32) -> Self {
        let cpus = cpus.max(1);
        let count = cpus.min(MAX_RINGS as u32);
        let share = (total_bytes / count).max(PAGE);
        let bytes = 1 << share.ilog2();
        let cpus_per_ring = cpus.div_ceil(count);
        let wakeup_bytes = (bytes / 4 / cpus_per_ring).clamp(4 << 10, 128 << 10);
        Self {
            count,
            bytes,
            wakeup_bytes,
        }
    }
}

/// CPUs the kernel may run programs on: ring indices are `cpu % count`.
fn possible_cpus() -> u32 {
    aya::util::nr_cpus()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
}

/// Sums each per-CPU loss counter: (name, total) in `stat` order.
pub fn read_stats(stats: &PerCpuArray<MapData, u64>) -> Vec<(&'static str, u64)> {
    {
        (0..stat::COUNT)
            .map(|i| {
                let total = stats
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (stat::NAMES[i as usize], total)
            })
            .collect()
    }
}

/// Checks privileges and kernel features, loads, and attaches.
pub fn load(opts: &LoadOptions) -> Result<Kernel, StartError> {
    preflight(opts.source.packets())?;
    check_sock_state_format()?;
    let mode = resolve_mode(opts.mode)?;
    raise_memlock_limit();

    let btf = Btf::from_sys_fs().map_err(|e| StartError::Btf(e.to_string()))?;
    let offsets = sock_offsets();
    let self_tgid = std::process::id();
    // The packet path's sockets live in this namespace: what it sees of a
    // loopback flow is this namespace's.
    let self_netns = netns_of(self_tgid);
    let cover_flows = u8::from(opts.source == SourceChoice::Both);
    let trace_syscalls = u8::from(opts.source.syscalls());
    let note_clients = u8::from(opts.source.packets());
    // A map no running source uses keeps one entry: its memory is
    // preallocated.
    let used_by = |used: bool, entries: u32| if used { entries } else { 1 };
    let clients = used_by(opts.source.packets(), opts.max_connections);
    let covered = used_by(opts.source == SourceChoice::Both, opts.max_connections);
    let hooks_only: u8 = opts.hooks_only.into();
    let rings = RingLayout::new(opts.ring_buffer_bytes, possible_cpus());
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global("CAPTURE_LIMIT", &opts.capture_limit, true)
        .override_global("SOCK_OFFSETS", &offsets, true)
        .override_global("SELF_TGID", &self_tgid, true)
        .override_global("SELF_NETNS", &self_netns, true)
        .override_global("COVER_FLOWS", &cover_flows, true)
        .override_global("TRACE_SYSCALLS", &trace_syscalls, true)
        .override_global("NOTE_CLIENTS", &note_clients, true)
        .override_global("HOOKS_ONLY", &hooks_only, true)
        .override_global("RING_COUNT", &rings.count, true)
        .override_global("WAKEUP_BYTES", &rings.wakeup_bytes, true)
        .map_max_entries("SOCKETS", opts.max_connections)
        .map_max_entries("DUP_REFS", opts.max_connections)
        .map_max_entries("COVERED", covered)
        .map_max_entries("CLIENTS", clients)
        .map_max_entries("SERVED", clients)
        .map_max_entries("CLIENT_CONNECTING", clients.min(8192))
        .map_max_entries("SCRATCH", possible_cpus())
        .map_max_entries("PACKET_SCRATCH", possible_cpus());
    // Accepted sockets' ends are kept by socket where the hooks can find a
    // descriptor's socket, else by peer address (tracer-ebpf/src/conn.rs).
    let syscalls = opts.source.syscalls();
    for (name, used) in [
        ("ACCEPTED", syscalls && offsets.known()),
        ("PEER_TO_LOCAL", syscalls && !offsets.known()),
        ("CONNECTING", syscalls),
    ] {
        if !used {
            loader.map_max_entries(name, 1);
        }
    }
    for (i, name) in RING_NAMES.iter().enumerate() {
        let used = i < rings.count as usize;
        loader.map_max_entries(name, if used { rings.bytes } else { PAGE });
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| StartError::Load(format!("{e:#}")))?;

    // Maps first: `Ebpf::map` borrows the whole object.
    let events = RING_NAMES
        .iter()
        .take(rings.count as usize)
        .map(|name| match ebpf.take_map(name) {
            Some(Map::RingBuf(data)) => Ok(data),
            _ => Err(StartError::Load(format!(
                "ring buffer {name} missing from the object"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sockets = take_map(&mut ebpf, "SOCKETS")?;
    let dup_refs = take_map(&mut ebpf, "DUP_REFS")?;
    let covered = if opts.source == SourceChoice::Both {
        Some(take_map(&mut ebpf, "COVERED")?)
    } else {
        None
    };
    let notes = if opts.source.packets() {
        Some(KernelNotes {
            clients: take_map(&mut ebpf, "CLIENTS")?,
            served: take_map(&mut ebpf, "SERVED")?,
        })
    } else {
        None
    };
    let socket_counter = SocketCounter::new(&sockets, opts.max_connections)?;
    let stats = take_map(&mut ebpf, "STATS")?;
    let shedding = Shedding(take_map(&mut ebpf, "SHEDDING")?);

    if opts.source.syscalls() {
        for (program, category, name) in COMMON_TRACEPOINTS {
            attach_tracepoint(&mut ebpf, program, category, name)?;
        }
        install_frame_programs(&mut ebpf, mode)?;
        for hook in &SYSCALL_HOOKS {
            match mode {
                AttachMode::Kprobe => attach_kprobe(&mut ebpf, hook.kp_program, hook.symbol)?,
                _ => attach_tracepoint(&mut ebpf, hook.tp_program, "syscalls", hook.tracepoint)?,
            }
        }
    }
    let packet_sockets = if opts.source.packets() {
        if !opts.source.syscalls() {
            // Names the processes of client sockets (`CLIENTS`) only.
            let (program, category, name) = SOCK_STATE;
            attach_tracepoint(&mut ebpf, program, category, name)?;
        }
        attach_packet_filter(&mut ebpf, &opts.interfaces)?
    } else {
        PacketSockets::none()
    };
    Ok(Kernel {
        ebpf,
        mode,
        events,
        control: KernelControl {
            sockets,
            dup_refs,
            covered,
        },
        socket_counter,
        stats,
        shedding,
        packet_sockets,
        notes,
    })
}

/// Loads the socket filter and attaches it to one AF_PACKET socket per
/// interface: those of `interfaces`, or when it is empty every interface,
/// followed as they come and go.
fn attach_packet_filter(
    ebpf: &mut Ebpf,
    interfaces: &[Interface],
) -> Result<PacketSockets, StartError> {
    const PROGRAM: &str = "packet_filter";
    let filter: &mut SocketFilter = program_mut(ebpf, PROGRAM)?;
    let fail = |target: String, reason: String| StartError::Attach {
        program: PROGRAM,
        target,
        reason,
    };
    filter
        .load()
        .map_err(|e| fail("AF_PACKET sockets".into(), format!("{e:#}")))?;
    // A descriptor of its own: the follower attaches the filter to the
    // sockets of later interfaces without the `Ebpf` object.
    let program = filter
        .fd()
        .map_err(|e| fail("AF_PACKET sockets".into(), format!("{e:#}")))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| fail("AF_PACKET sockets".into(), format!("program fd: {e}")))?;
    let filter = Filter::new(program);
    let sockets = if interfaces.is_empty() {
        PacketSockets::following(filter)
    } else {
        PacketSockets::fixed(interfaces, &filter)
    }
    .map_err(|e| fail(e.target, e.reason))?;
    tracing::info!(
        interfaces = sockets.captured(),
        following = interfaces.is_empty(),
        "packet path: socket filter attached to one AF_PACKET socket per interface"
    );
    Ok(sockets)
}

/// Whether the running kernel's BTF has every field the kernel side needs to
/// take positions from the sockets' sequence counters, or what is missing.
pub fn position_fields() -> Result<(), String> {
    btf::sock_offsets(BTF_PATH).map(|_| ())
}

/// Where the kernel side finds a descriptor's socket and the socket's TCP
/// sequence counters, which make stream positions exact whatever moved the
/// bytes; without them positions add up the results of the syscalls hooked.
fn sock_offsets() -> SockOffsets {
    match btf::sock_offsets(BTF_PATH) {
        Ok(offsets) => offsets,
        Err(reason) => {
            tracing::warn!(
                %reason,
                "stream positions add up hooked syscalls: bytes a traced socket moves by io_uring \
                 or by a process the hooks cannot see will make later requests on it unmatched"
            );
            SockOffsets::default()
        }
    }
}

/// Loads every kprobe program without attaching: proves they pass the
/// verifier on kernels where kprobes cannot attach (used by tests).
pub fn verify_kprobe_programs(opts: &LoadOptions) -> Result<usize, StartError> {
    preflight(false)?;
    raise_memlock_limit();
    let btf = Btf::from_sys_fs().map_err(|e| StartError::Btf(e.to_string()))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("CAPTURE_LIMIT", &opts.capture_limit, true)
        .override_global("SOCK_OFFSETS", &sock_offsets(), true)
        .load(OBJECT)
        .map_err(|e| StartError::Load(format!("{e:#}")))?;
    let mut loaded = 0;
    for hook in &SYSCALL_HOOKS {
        let program: &mut KProbe = program_mut(&mut ebpf, hook.kp_program)?;
        program.load().map_err(|e| StartError::Attach {
            program: hook.kp_program,
            target: hook.symbol.into(),
            reason: format!("{e:#}"),
        })?;
        loaded += 1;
    }
    for (_, program) in FRAME_PROGRAMS {
        let frames: &mut KProbe = program_mut(&mut ebpf, program)?;
        frames.load().map_err(tail_call_failed(program))?;
        loaded += 1;
    }
    Ok(loaded)
}

/// The frame programs (`tracer-ebpf/src/frames.rs`) by `FRAME_PROGRAM`
/// slot: (tracepoint program, kprobe program).
const FRAME_PROGRAMS: [(&str, &str); 2] = [
    ("tp_frames", "kp_frames"),
    ("tp_frames_beyond", "kp_frames_beyond"),
];

fn tail_call_failed(program: &'static str) -> impl Fn(aya::programs::ProgramError) -> StartError {
    move |e| StartError::Attach {
        program,
        target: "tail call".into(),
        reason: format!("{e:#}"),
    }
}

/// Loads the frame programs of the attach mode and puts them where the data
/// programs tail-call them (`FRAME_PROGRAM`).
fn install_frame_programs(ebpf: &mut Ebpf, mode: AttachMode) -> Result<(), StartError> {
    let mut fds = Vec::new();
    for (tp, kp) in FRAME_PROGRAMS {
        let fd = if mode == AttachMode::Kprobe {
            let program: &mut KProbe = program_mut(ebpf, kp)?;
            program.load().map_err(tail_call_failed(kp))?;
            program.fd().map_err(tail_call_failed(kp))?.try_clone()
        } else {
            let program: &mut TracePoint = program_mut(ebpf, tp)?;
            program.load().map_err(tail_call_failed(tp))?;
            program.fd().map_err(tail_call_failed(tp))?.try_clone()
        };
        fds.push(fd.map_err(|e| StartError::Load(format!("frame program: {e}")))?);
    }
    let map = ebpf
        .map_mut("FRAME_PROGRAM")
        .ok_or_else(|| StartError::Load("map FRAME_PROGRAM missing from the object".into()))?;
    let mut programs = ProgramArray::try_from(map)
        .map_err(|e| StartError::Load(format!("map FRAME_PROGRAM: {e}")))?;
    for (slot, fd) in (0..).zip(&fds) {
        programs
            .set(slot, fd, 0)
            .map_err(|e| StartError::Load(format!("map FRAME_PROGRAM: {e}")))?;
    }
    Ok(())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, StartError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| StartError::Load(format!("map {name} missing from the object")))?;
    T::try_from(map).map_err(|e| StartError::Load(format!("map {name}: {e}")))
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, StartError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| StartError::Load(format!("program {name} missing from the object")))?;
    program
        .try_into()
        .map_err(|e| StartError::Load(format!("program {name}: {e}")))
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<(), StartError> {
    let tp: &mut TracePoint = program_mut(ebpf, program)?;
    let fail = |e: aya::programs::ProgramError| StartError::Attach {
        program,
        target: format!("tracepoint {category}/{name}"),
        reason: format!("{e:#}"),
    };
    tp.load().map_err(fail)?;
    tp.attach(category, name).map_err(fail)?;
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, program: &'static str, symbol: &str) -> Result<(), StartError> {
    let kp: &mut KProbe = program_mut(ebpf, program)?;
    let fail = |e: aya::programs::ProgramError| StartError::Attach {
        program,
        target: format!("kprobe {symbol}"),
        reason: format!("{e:#}"),
    };
    kp.load().map_err(fail)?;
    kp.attach(symbol, 0).map_err(fail)?;
    Ok(())
}

/// Privileges, BTF and tracefs: each missing piece is one clear error.
/// `packets`: the packet path runs, which needs a raw socket.
fn preflight(packets: bool) -> Result<(), StartError> {
    check_capabilities(packets)?;
    if !Path::new(BTF_PATH).exists() {
        return Err(StartError::Btf(format!(
            "{BTF_PATH} is missing: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y"
        )));
    }
    ensure_tracefs()
}

/// CAP_BPF + CAP_PERFMON load and attach; CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH read other processes' /proc entries. CAP_SYS_ADMIN
/// covers the first two on kernels that predate them. CAP_NET_RAW opens
/// the packet path's AF_PACKET sockets.
fn check_capabilities(packets: bool) -> Result<(), StartError> {
    const CAP_DAC_READ_SEARCH: u32 = 2;
    const CAP_NET_RAW: u32 = 13;
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    // Name only what is missing: naming a capability the process holds
    // sends the operator after the wrong one.
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF (or CAP_SYS_ADMIN)");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON (or CAP_SYS_ADMIN)");
        }
    }
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if !has(CAP_DAC_READ_SEARCH) {
        missing.push("CAP_DAC_READ_SEARCH");
    }
    if packets && !has(CAP_NET_RAW) {
        missing.push("CAP_NET_RAW (for --source packets or both)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StartError::Privileges(missing.join(", ")))
    }
}

/// Tracepoint attach needs event ids from tracefs; mount it if we can.
fn ensure_tracefs() -> Result<(), StartError> {
    let events = Path::new(TRACEFS).join("events");
    if events.exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status();
    if events.exists() {
        tracing::info!(path = TRACEFS, "mounted tracefs");
        return Ok(());
    }
    Err(StartError::Tracefs(match status {
        Ok(s) => format!("mount exited with {s}"),
        Err(e) => e.to_string(),
    }))
}

fn syscall_tracepoints_available() -> bool {
    Path::new(TRACEFS)
        .join("events/syscalls/sys_exit_read")
        .exists()
}

fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || Path::new(TRACEFS).join("kprobe_events").exists()
}

/// `auto` prefers syscall tracepoints: a stable ABI, unlike kernel symbols.
fn resolve_mode(requested: AttachMode) -> Result<AttachMode, StartError> {
    let tracepoints = syscall_tracepoints_available();
    let kprobes = kprobes_available();
    match requested {
        AttachMode::Auto if tracepoints => Ok(AttachMode::Tracepoint),
        AttachMode::Auto if kprobes => Ok(AttachMode::Kprobe),
        AttachMode::Auto => Err(StartError::NoAttachMode),
        AttachMode::Tracepoint if !tracepoints => Err(StartError::ModeUnavailable {
            mode: "tracepoint",
            why: "no syscall tracepoints under /sys/kernel/tracing/events/syscalls \
                  (kernel built without CONFIG_FTRACE_SYSCALLS)",
        }),
        AttachMode::Kprobe if !kprobes => Err(StartError::ModeUnavailable {
            mode: "kprobe",
            why: "this kernel has no kprobe support (CONFIG_KPROBES is off)",
        }),
        mode => Ok(mode),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_field_offsets_from_a_format_file() {
        let format = "name: inet_sock_set_state\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n";
        assert_eq!(field_offset(format, "skaddr"), Some(8));
        assert_eq!(field_offset(format, "saddr_v6"), Some(40));
        assert_eq!(field_offset(format, "saddr"), None);
        assert_eq!(field_offset(format, "common_type"), Some(0));
    }

    #[test]
    fn ring_layout_splits_the_total_per_cpu() {
        // Two CPUs, the default 8 MiB: two rings of 4 MiB.
        let two = RingLayout::new(8 << 20, 2);
        assert_eq!(
            (two.count, two.bytes, two.wakeup_bytes),
            (2, 4 << 20, 128 << 10)
        );
        // Shares round down to a power of two.
        assert_eq!(RingLayout::new(8 << 20, 3).bytes, 2 << 20);
        // Past MAX_RINGS CPUs share rings and wake sooner.
        let many = RingLayout::new(8 << 20, 64);
        assert_eq!((many.count, many.bytes), (16, 512 << 10));
        assert_eq!(many.wakeup_bytes, 32 << 10);
        // Never below a page, never a zero count.
        assert_eq!(RingLayout::new(1 << 20, 0).count, 1);
        assert_eq!(RingLayout::new(4096, 16).bytes, PAGE);
        assert_eq!(RingLayout::new(4096, 16).wakeup_bytes, 4 << 10);
    }

    #[test]
    fn this_kernel_matches_the_compiled_layout() {
        let path = Path::new(TRACEFS).join("events/sock/inet_sock_set_state/format");
        if std::fs::read_to_string(&path).is_err() {
            let why = format!(
                "{} is not readable (needs root and tracefs)",
                path.display()
            );
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipped: {why}");
            return;
        }
        check_sock_state_format().unwrap();
    }
}
