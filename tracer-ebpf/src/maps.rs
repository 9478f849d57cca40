//! Every map of the kernel side, with its sizing and what happens when full.
//! The loader sizes `SOCKETS`, `COVERED`, `CLIENTS`, `SERVED` and the event
//! rings `EVENTS_*` from the command line, and shrinks to one entry the
//! maps of a source that does not run.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_RING_SIZE},
    helpers::{bpf_get_smp_processor_id, generated::bpf_ringbuf_output},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use core::ffi::c_void;
use tracer_common::{
    ClientOwner, ConnInfo, DataEvent, FlowKey, SockAddr, SocketEnds, Tuple, COMM_LEN, MAX_CAPTURE,
};

/// Traced TCP sockets, keyed by `conn_key(tgid, fd)`: the filter every data
/// hook consults first. 104-byte values: 65,536 entries is about 8 MiB with
/// keys and overhead. A plain hash (not LRU) so that a full table is visible:
/// a new connection that does not fit is counted (`stat::CONN_MAP_FULL`) and
/// not traced, instead of silently evicting a live one.
#[map]
pub static SOCKETS: HashMap<u64, ConnInfo> = HashMap::with_max_entries(65536, 0);

/// Open descriptors of connections that were `dup`ed, keyed by connection id:
/// CLOSE goes out when the last one closes. Only dup'ed connections have an
/// entry. Sized like `SOCKETS` by the loader, which it cannot outgrow (each
/// entry stands for two of `SOCKETS`'s). A plain hash, not LRU: an evicted
/// count would let a connection's first close end it while its other
/// descriptor still carries traffic. The daemon deletes the entry when it
/// drops the connection (a process that exited without closing it).
#[map]
pub static DUP_REFS: HashMap<u64, u32> = HashMap::with_max_entries(65536, 0);

/// The flows the syscall hooks trace, by both ends: the packet path skips
/// their segments in the kernel, before they cost a ring write. The daemon
/// adds a flow when the hooks announce it (their OPEN) and removes it at
/// its CLOSE; a socket reaching TCP `CLOSE` removes it here too. Sized like
/// `SOCKETS` by the loader. Segments that pass before the entry is there,
/// or because it did not fit, reach the daemon, which drops the packet
/// path's copy of a flow the hooks trace. The value is the network
/// namespace of a loopback flow (which never leaves it: a pod's loopback
/// flow must not hide the tracer's namespace's flow with the same ends),
/// 0 for any other flow.
#[map]
pub static COVERED: HashMap<FlowKey, u32> = HashMap::with_max_entries(65536, 0);

/// Where a hook builds the `COVERED` key of a flow it announces: one slot
/// per CPU, off the stack.
#[map]
pub static COVER_KEY: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// Where a client socket's `connect` came from, keyed by the kernel's `sock`
/// address, from `SYN_SENT` until `ESTABLISHED` or `CLOSE` (where a socket
/// that never got established leaves `SOCKETS` too). LRU: an entry whose
/// socket vanished without a `CLOSE` transition ages out.
#[map]
pub static CONNECTING: LruHashMap<u64, Connecting> = LruHashMap::with_max_entries(8192, 0);

/// Which process connected each client socket, for the packet path (a
/// packet names no process), keyed by the socket's ends as its packets show
/// them; written when it is established, read by the daemon when the
/// flow's first payload arrives. LRU: a busy node's older entries age out
/// (the daemon reads each within milliseconds). Sized by the loader
/// (`--max-connections`, 1 without the packet path): 36-byte keys and
/// 20-byte values, preallocated, about 6 to 7 MiB at 65,536 entries.
#[map]
pub static CLIENTS: LruHashMap<SocketEnds, ClientOwner> = LruHashMap::with_max_entries(65536, 0);

/// The ends of each connection a local socket accepted, server end first,
/// for the packet path: a flow whose server end is here is reported from
/// it. Written when the accepted socket is established (in softirq, where
/// no process is known: the daemon names it by its listener). LRU, sized
/// as `CLIENTS`: 36-byte keys, 1-byte values.
#[map]
pub static SERVED: LruHashMap<SocketEnds, u8> = LruHashMap::with_max_entries(65536, 0);

/// A connecting socket's process for `CLIENTS`, keyed by the kernel's `sock`
/// address, from `SYN_SENT` (inside `connect`, in the process's context)
/// until `ESTABLISHED` (in softirq, where both ends are first known). LRU:
/// an entry of a socket that never got established ages out.
#[map]
pub static CLIENT_CONNECTING: LruHashMap<u64, ClientOwner> = LruHashMap::with_max_entries(8192, 0);

/// Local address of each freshly established inbound connection, keyed by the
/// remote address, until `accept` collects it: on a kernel whose BTF does
/// not let the hooks find a descriptor's socket (else `ACCEPTED`; the loader
/// shrinks the unused one to one entry). LRU: connections accepted by
/// untraced code age out.
#[map]
pub static PEER_TO_LOCAL: LruHashMap<SockAddr, SockAddr> = LruHashMap::with_max_entries(16384, 0);

/// Both ends of each freshly established inbound connection, keyed by its
/// kernel `sock` address: `accept` finds the socket behind its new
/// descriptor and its ends here, whatever its peer buffer (none from libuv
/// and Node.js). Removed at `CLOSE`; LRU besides.
#[map]
pub static ACCEPTED: LruHashMap<u64, Tuple> = LruHashMap::with_max_entries(16384, 0);

/// Slot 0 non-zero while the daemon is short of memory (90% of its budget
/// in use, `tracer/src/budget.rs`): payload is shed as under ring pressure.
#[map]
pub static SHEDDING: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the daemon asked for payload to be shed.
#[inline(always)]
pub fn memory_short() -> bool {
    SHEDDING.get(0).is_some_and(|flag| *flag != 0)
}

/// Events to the daemon, one ring per CPU (up to `MAX_RINGS`, CPUs beyond
/// share): a single ring shared by all CPUs made every event pay for its
/// lock and positions bouncing between CPUs, about a third of the cost of
/// an event. The loader sizes the rings in use from the command line and
/// shrinks the others to one page (the daemon's RSS counts each ring twice:
/// the kernel maps the data pages twice). A full ring fails the output and
/// `stat::RINGBUF_FULL` is counted. The names are the loader's: `EVENTS_0`...
macro_rules! rings {
    ($($name:ident = $index:literal),* $(,)?) => {
        $(
            #[map]
            pub static $name: RingBuf = RingBuf::with_byte_size(4096, 0);
        )*

        /// Whether this CPU's ring is more than half full: the daemon is
        /// behind, and whole events may soon be lost.
        #[inline(always)]
        pub fn ring_under_pressure() -> bool {
            // SAFETY: no arguments.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            let (waiting, size) = match cpu % ring_count() {
                $($index => (
                    $name.query(u64::from(BPF_RB_AVAIL_DATA)),
                    $name.query(u64::from(BPF_RB_RING_SIZE)),
                ),)*
                _ => (0, 0),
            };
            waiting > size / 2
        }

        /// Copies `size` bytes at `data` into this CPU's ring as one record;
        /// a full ring counts `full` (the source's `stat` index).
        #[inline(always)]
        pub fn output(data: *const c_void, size: u64, now: u64, full: u32) {
            let flags = wakeup_flags(size, now);
            // SAFETY: no arguments.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            let data = data as *mut c_void;
            // One call per ring: the verifier needs each map as a constant.
            // SAFETY: the caller's `data` spans `size` readable bytes.
            let ret = match cpu % ring_count() {
                $($index => unsafe {
                    bpf_ringbuf_output(&$name as *const RingBuf as *mut c_void, data, size, flags)
                },)*
                _ => -1,
            };
            if ret != 0 {
                count(full);
            }
        }
    };
}

rings!(
    EVENTS_0 = 0,
    EVENTS_1 = 1,
    EVENTS_2 = 2,
    EVENTS_3 = 3,
    EVENTS_4 = 4,
    EVENTS_5 = 5,
    EVENTS_6 = 6,
    EVENTS_7 = 7,
    EVENTS_8 = 8,
    EVENTS_9 = 9,
    EVENTS_10 = 10,
    EVENTS_11 = 11,
    EVENTS_12 = 12,
    EVENTS_13 = 13,
    EVENTS_14 = 14,
    EVENTS_15 = 15,
);
const _: () = assert!(tracer_common::MAX_RINGS == 16);

/// Rings in use, set by the loader (1 to `MAX_RINGS`).
#[no_mangle]
static RING_COUNT: u32 = 1;

#[inline(always)]
fn ring_count() -> u32 {
    // SAFETY: a plain read of a global the loader sets before load;
    // volatile so the compiler does not fold in the default.
    let n = unsafe { core::ptr::read_volatile(&RING_COUNT) };
    if n == 0 {
        1
    } else {
        n
    }
}

/// Per-CPU loss counters, indexed by `tracer_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(tracer_common::stat::COUNT, 0);

/// `[0]`: when the daemon was last woken (`bpf_ktime_get_ns`), shared by all
/// CPUs; see `wakeup_flags`. Racy updates only shift one wake-up.
#[map]
pub static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Bytes this CPU wrote to its ring since it last woke the daemon.
#[map]
pub static PENDING_BYTES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counter behind kernel connection ids.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU staging area for one connection event. On the stack it put the
/// chain hook -> `on_accept_exit` -> `emit` over the verifier's 512-byte
/// limit (kernel 6.18, rustc 1.97 nightly: "combined stack size of 3 calls
/// is 560. Too large"). One slot per CPU, no other user while a hook runs.
#[map]
pub static CONN_SCRATCH: PerCpuArray<tracer_common::ConnEvent> =
    PerCpuArray::with_max_entries(1, 0);

/// Staging area for one data event, one slot per CPU (indexed by CPU id;
/// the loader sizes it to the possible CPUs): too large for the 512-byte
/// stack, and too large for a per-CPU map, whose values the kernel caps at
/// 32 KiB. The payload area is three times `MAX_CAPTURE`: vectored I/O
/// copies segment after segment, and `capture::copy_at` bounds the offset
/// (below `MAX_CAPTURE`) and the length (below twice that) by masks, so the
/// verifier can prove a copy in bounds only if their sum fits. A program runs with
/// migration disabled, so its CPU's slot is its own while it runs.
#[map]
pub static SCRATCH: Array<DataScratch> = Array::with_max_entries(1, 0);

#[repr(C)]
pub struct DataScratch {
    pub event: DataEvent,
    pub data: [u8; 3 * MAX_CAPTURE],
    /// What the frame program (`FRAME_PROGRAM`) is to follow for `event`.
    pub job: FrameJob,
}

/// A chunk of an HTTP/2 connection handed to the frame program, which
/// follows its frames, appends the headers beyond the capture and sends
/// the record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FrameJob {
    /// The socket's key in `SOCKETS`.
    pub key: u64,
    /// The buffer, or the iovec array when `segments` is nonzero.
    pub user: u64,
    pub segments: u64,
    /// The record's time, for the ring's wake-up.
    pub now: u64,
    /// The second frame program's walk, kept across its runs: the next
    /// header's offset (first set to the first at or across the end of the
    /// capture), the heads appended, the runs so far, the segments
    /// entered, and the one at hand (its base, and where it starts and
    /// ends in the chunk).
    pub off: u64,
    pub heads: u64,
    /// Bytes appended after the captured payload so far.
    pub out: u64,
    pub rounds: u64,
    pub entered: u64,
    pub base: u64,
    pub seg_start: u64,
    pub seg_end: u64,
}

/// The frame programs (`tracer-ebpf/src/frames.rs`) of the attach mode,
/// reached by tail call: slot 0 follows frames through the captured bytes,
/// slot 1 beyond them. Each is verified on its own, so their loops do not
/// multiply the states of the copy before them.
#[map]
pub static FRAME_PROGRAM: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connecting {
    pub key: u64,
    /// The connection id registered at `SYN_SENT`: the fd may be closed and
    /// reused by another socket before this one's `CLOSE`.
    pub conn_id: u64,
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// Bytes this CPU may add to its ring before it wakes the daemon, set by the
/// loader: a share of the ring, so that the CPUs sharing it stay well below
/// its size.
#[no_mangle]
static WAKEUP_BYTES: u32 = 64 * 1024;
/// Longest a waiting event may go without a wake-up while events keep coming.
const WAKEUP_AFTER_NS: u64 = 5_000_000;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Flags for `bpf_ringbuf_output` that batch wake-ups. The kernel's default
/// wakes the reader for nearly every event when it keeps up, which costs a
/// context switch per event: more than all the rest of the work. Instead wake
/// when this CPU has written `WAKEUP_BYTES` since its last wake-up, or when
/// the last wake-up (by any CPU: the daemon then reads every ring) is
/// `WAKEUP_AFTER_NS` old; the daemon's short timer collects the tail of a
/// burst.
#[inline(always)]
fn wakeup_flags(size: u64, now: u64) -> u64 {
    if let Some(pending) = PENDING_BYTES.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe {
            let total = *pending + size;
            // SAFETY: a plain read of a global the loader sets before load.
            if total >= core::ptr::read_volatile(&WAKEUP_BYTES) as u64 {
                *pending = 0;
                return BPF_RB_FORCE_WAKEUP;
            }
            *pending = total;
        }
    }
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a valid map value pointer; a racy update only shifts one wake-up.
    unsafe {
        if now.wrapping_sub(*last) >= WAKEUP_AFTER_NS {
            *last = now;
            return BPF_RB_FORCE_WAKEUP;
        }
    }
    BPF_RB_NO_WAKEUP
}

/// Adds one to a loss counter.
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}
