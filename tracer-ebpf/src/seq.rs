//! Stream positions from the socket itself: `copied_seq` and `write_seq` of
//! `struct tcp_sock` advance with every byte the process reads or writes,
//! whatever moved it (read, splice, sendfile, io_uring), so a position taken
//! from them cannot drift the way a sum of the syscalls we hook does. The
//! field offsets come from the running kernel's BTF through the loader.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use tracer_common::{direction::EGRESS, stat, ConnInfo, SockOffsets};

use crate::maps::count;

/// Set by the loader from the kernel's BTF; all zero when unknown.
#[no_mangle]
static SOCK_OFFSETS: SockOffsets = SockOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private: 0,
    socket_sk: 0,
    sk_protocol: 0,
    sk_flags: 0,
    icsk_ulp_ops: 0,
    copied_seq: 0,
    rcv_nxt: 0,
    write_seq: 0,
};

/// [`ConnInfo::sk`] of a connection whose counters do not count the
/// process's bytes (kernel TLS): never looked up again.
pub const NOT_COUNTING: u64 = 1;

const IPPROTO_TCP: u16 = 6;
/// `sk_flags` bit `SOCK_DONE` (`enum sock_flags`): set by `tcp_fin` when the
/// peer's FIN arrives; a reset or a local shutdown leave it alone.
const SOCK_DONE: u64 = 1 << 1;

#[inline(always)]
fn offsets() -> SockOffsets {
    // SAFETY: a plain read of a global the loader rewrites before load;
    // volatile so the compiler does not fold in the zeros.
    unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) }
}

#[inline(always)]
fn read<T>(at: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(at as *const T) }.ok()
}

/// Whether the running kernel's BTF let the loader find the fields
/// `socket_of` walks.
#[inline(always)]
pub fn sockets_found() -> bool {
    offsets().known()
}

/// The TCP `struct sock` behind the current process's descriptor `fd`
/// (a descriptor already known to be a socket), or 0.
pub fn socket_of(fd: u32) -> u64 {
    let off = offsets();
    if !off.known() {
        return 0;
    }
    // SAFETY: no arguments.
    let task = unsafe { bpf_get_current_task() };
    let walk = || -> Option<u64> {
        let files: u64 = read(task + off.task_files as u64)?;
        let fdt: u64 = read(files + off.files_fdt as u64)?;
        let max_fds: u32 = read(fdt + off.fdt_max_fds as u64)?;
        if fd >= max_fds {
            return None;
        }
        let fds: u64 = read(fdt + off.fdt_fd as u64)?;
        let file: u64 = read(fds + fd as u64 * 8)?;
        let socket: u64 = read(file + off.file_private as u64)?;
        let sk: u64 = read(socket + off.socket_sk as u64)?;
        // MPTCP and other stream protocols have no `tcp_sock` behind `sk`.
        let protocol: u16 = read(sk + off.sk_protocol as u64)?;
        (protocol == IPPROTO_TCP).then_some(sk)
    };
    walk().unwrap_or(0)
}

/// The counter of `dir` in bytes of the stream: `write_seq` for bytes
/// written (a FIN of ours comes only after the last write), `copied_seq`
/// for bytes read, less the one sequence number of the peer's FIN once the
/// process has read up to it.
#[inline(always)]
fn counter(off: &SockOffsets, sk: u64, dir: usize) -> Option<u32> {
    if dir == EGRESS as usize {
        return read(sk + off.write_seq as u64);
    }
    let copied: u32 = read(sk + off.copied_seq as u64)?;
    let flags: u64 = read(sk + off.sk_flags as u64)?;
    if flags & SOCK_DONE == 0 {
        return Some(copied);
    }
    // The FIN takes a sequence number; `copied_seq` counts it once the
    // process has read up to it, that is once it has caught up with
    // `rcv_nxt`.
    let next: u32 = read(sk + off.rcv_nxt as u64)?;
    Some(if copied == next {
        copied.wrapping_sub(1)
    } else {
        copied
    })
}

/// Ties `info` to its socket `sk`: the counters' values now are the
/// positions `info.pos` plus `pending` bytes of direction `dir` just moved
/// (0 when called before any data).
#[inline(always)]
pub fn attach(info: &mut ConnInfo, sk: u64, dir: usize, pending: u64) {
    let off = offsets();
    if sk == 0 || !off.known() {
        return;
    }
    let (Some(ingress), Some(egress)) = (counter(&off, sk, 0), counter(&off, sk, 1)) else {
        return;
    };
    // No indexing by `dir` into a stack copy: the verifier cannot follow it.
    let pending_in = if dir & 1 == 0 { pending } else { 0 };
    let moved_in = info.pos[0] + pending_in;
    let moved_out = info.pos[1] + (pending - pending_in);
    info.seq_base = [
        ingress.wrapping_sub(moved_in as u32),
        egress.wrapping_sub(moved_out as u32),
    ];
    info.sk = sk;
}

/// Where a chunk of `len` bytes just moved in `dir` starts, and where the
/// bytes before it not seen by any hook start (equal when there are none);
/// `None` when the connection's counters are not usable, and the caller
/// adds up syscall results instead.
///
/// # Safety
/// `info` points to a live `SOCKETS` value.
#[inline(always)]
pub unsafe fn place(info: *mut ConnInfo, fd: u32, dir: usize, len: u64) -> Option<(u64, u64)> {
    let off = offsets();
    if !off.known() {
        return None;
    }
    let dir = dir & 1;
    let mut sk = (*info).sk;
    if sk == NOT_COUNTING {
        return None;
    }
    if sk == 0 {
        // Adopted mid-stream, or the walk at accept failed: from now on.
        attach(&mut *info, socket_of(fd), dir, len);
        sk = (*info).sk;
        if sk == 0 {
            return None;
        }
    }
    let ulp: u64 = read(sk + off.icsk_ulp_ops as u64)?;
    if ulp != 0 {
        (*info).sk = NOT_COUNTING;
        return None;
    }
    let seq = counter(&off, sk, dir)?;
    let start32 = seq
        .wrapping_sub((*info).seq_base[dir])
        .wrapping_sub(len as u32);
    // The counters are 32 bits; `pos` is the furthest end handed out, never
    // 2 GiB away from a chunk's start.
    let furthest = (*info).pos[dir];
    let ahead = start32.wrapping_sub(furthest as u32) as i32 as i64;
    if ahead < 0 {
        if furthest < ahead.unsigned_abs() {
            return None;
        }
        count(stat::POSITION_OVERLAP);
    }
    let start = furthest.wrapping_add(ahead as u64);
    if start + len > furthest {
        (*info).pos[dir] = start + len;
    }
    Some((furthest.min(start), start))
}
