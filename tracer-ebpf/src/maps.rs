//! Every map of the kernel side, with its sizing and what happens when full.
//! The loader may resize `SOCKETS` and `EVENTS` from the command line.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{ConnInfo, DataEvent, SockAddr, COMM_LEN, MAX_CAPTURE};

/// Traced TCP sockets, keyed by `conn_key(tgid, fd)`: the filter every data
/// hook consults first. 72-byte values: 65,536 entries is about 6 MiB with
/// keys and overhead. A plain hash (not LRU) so that a full table is visible:
/// a new connection that does not fit is counted (`stat::CONN_MAP_FULL`) and
/// not traced, instead of silently evicting a live one.
#[map]
pub static SOCKETS: HashMap<u64, ConnInfo> = HashMap::with_max_entries(65536, 0);

/// Open descriptors of connections that were `dup`ed, keyed by connection id:
/// CLOSE goes out when the last one closes. Only dup'ed connections have an
/// entry. LRU: an entry of a process that died without closing ages out.
#[map]
pub static DUP_REFS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Where a client socket's `connect` came from, keyed by the kernel's `sock`
/// address, from `SYN_SENT` until `ESTABLISHED` or `CLOSE`. LRU: an entry
/// whose socket vanished without a `CLOSE` transition ages out.
#[map]
pub static CONNECTING: LruHashMap<u64, Connecting> = LruHashMap::with_max_entries(8192, 0);

/// Local address of each freshly established inbound connection, keyed by the
/// remote address, until `accept` collects it. LRU: connections accepted by
/// untraced code age out.
#[map]
pub static PEER_TO_LOCAL: LruHashMap<SockAddr, SockAddr> = LruHashMap::with_max_entries(16384, 0);

/// All events to the daemon: 8 MiB by default, set by the loader from the
/// command line (the daemon's RSS counts it twice: the kernel maps the data
/// pages twice). When full, `bpf_ringbuf_output` fails and
/// `stat::RINGBUF_FULL` is counted.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU loss counters, indexed by `tracer_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(tracer_common::stat::COUNT, 0);

/// `[0]`: when the daemon was last woken (`bpf_ktime_get_ns`), shared by all
/// CPUs; see `wakeup_flags`. Racy updates only shift one wake-up.
#[map]
pub static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU counter behind kernel connection ids.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU staging area for one data event: too large for the 512-byte stack.
/// Per-CPU values are capped at 32 KiB by the kernel, which caps MAX_CAPTURE.
/// The payload area is twice `MAX_CAPTURE`: vectored I/O copies segment after
/// segment, and the verifier bounds the offset (below `MAX_CAPTURE`) and the
/// length (at most `MAX_CAPTURE`) separately, so it can prove a copy in
/// bounds only if their sum fits.
#[map]
pub static SCRATCH: PerCpuArray<DataScratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct DataScratch {
    pub event: DataEvent,
    pub data: [u8; 2 * MAX_CAPTURE],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connecting {
    pub key: u64,
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// Unread bytes in `EVENTS` that make the next event wake the daemon.
const WAKEUP_BYTES: u64 = 128 * 1024;
/// Longest a waiting event may go without a wake-up while events keep coming.
const WAKEUP_AFTER_NS: u64 = 5_000_000;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for `bpf_ringbuf_output` that batch wake-ups. The kernel's default
/// wakes the reader for nearly every event when it keeps up, which costs a
/// context switch per event: more than all the rest of the work. Instead wake
/// when `WAKEUP_BYTES` are waiting or the last wake-up is `WAKEUP_AFTER_NS`
/// old; the daemon's short timer collects the tail of a burst.
#[inline(always)]
pub fn wakeup_flags(size: u64) -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if waiting < WAKEUP_BYTES && waiting + size >= WAKEUP_BYTES {
        return BPF_RB_FORCE_WAKEUP;
    }
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: no arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
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
