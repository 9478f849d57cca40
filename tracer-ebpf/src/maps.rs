//! Every map of the kernel side, with its sizing and what happens when full.
//! The loader may resize `SOCKETS` and `EVENTS` from the command line.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{ConnInfo, DataEvent, SockAddr, COMM_LEN, MAX_CAPTURE};

/// Traced TCP sockets, keyed by `conn_key(tgid, fd)`: the filter every data
/// hook consults first. 72-byte values: 65,536 entries is about 6 MiB with
/// keys and overhead. A plain hash (not LRU) so that a full table is visible:
/// a new connection that does not fit is counted (`stat::CONN_MAP_FULL`) and
/// not traced, instead of silently evicting a live one.
#[map]
pub static SOCKETS: HashMap<u64, ConnInfo> = HashMap::with_max_entries(65536, 0);

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

/// All events to the daemon. 16 MiB by default (the loader may change it);
/// when full `bpf_ringbuf_output` fails and `stat::RINGBUF_FULL` is counted.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per-CPU loss counters, indexed by `tracer_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(tracer_common::stat::COUNT, 0);

/// Per-CPU counter behind kernel connection ids.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU staging area for one data event: too large for the 512-byte stack.
/// Per-CPU values are capped at 32 KiB by the kernel, which caps MAX_CAPTURE.
/// The payload area is twice `MAX_CAPTURE` so that a copy of at most
/// `MAX_CAPTURE` bytes at any offset below `MAX_CAPTURE` is provably in
/// bounds for the verifier (vectored I/O copies segment after segment).
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

/// Adds one to a loss counter.
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}
