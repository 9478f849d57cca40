//! Kernel programs of the tracer: syscall hooks that register TCP sockets and
//! copy the payload of every read and write on them into one ring buffer.
//!
//! ```text
//!  accept/accept4 exit ──┐                        ┌──▶ OPEN / CLOSE events
//!  connect exit ─────────┤                        │
//!  inet_sock_set_state ──┼──▶ SOCKETS (tgid,fd) ──┤
//!  close enter ──────────┘          │             │
//!                                   ▼             │
//!  read-family exits ──────────▶ capture ─────────┼──▶ DATA events ──▶ EVENTS ring buffer ──▶ daemon
//!  write-family exits ─────────┘    │             │
//!                       positions from the socket's
//!                       TCP sequence counters (seq.rs)
//!  sched_process_exit ────────────────────────────┘──▶ PROC_EXIT events
//!
//!  inet_sock_set_state ──▶ CLIENTS (a client socket's ends → its process),
//!                          SERVED (an accepted socket's ends)
//!                            ◀── read by the daemon for the packet path
//!  AF_PACKET socket filter (packets.rs) ──▶ PACKET events ──▶ the same rings
//! ```
//!
//! Read family: read, readv, preadv2, recvfrom, recvmsg, recvmmsg, and splice
//! from a socket. Write family: write, writev, pwritev2, sendto, sendmsg,
//! sendmmsg, sendfile, and splice into a socket.
//!
//! Every data hook runs at syscall *exit* only and reads the syscall's
//! arguments from the task's saved user registers (`bpf_task_pt_regs`): one
//! program run per syscall instead of an enter/exit pair, and no per-thread
//! map to carry arguments across. Only file descriptors present in `SOCKETS`
//! produce data, so file and pipe I/O never reach the ring buffer.
//!
//! Two attach paths share that logic: syscall tracepoints
//! (`probes/syscalls_tp.rs`) and kprobes on the syscall entry points
//! (`probes/syscalls_kprobe.rs`). The daemon picks one at load time.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "atomic_xadd: the BPF target has no AtomicU64::fetch_add"
)]

mod capture;
mod clients;
mod conn;
mod frames;
mod maps;
mod packets;
mod probes;
mod regs;
mod seq;

/// Runtime capture limit in bytes, set by the loader (at most `MAX_CAPTURE`).
#[no_mangle]
static CAPTURE_LIMIT: u32 = tracer_common::DEFAULT_CAPTURE;

/// The daemon's own process id: it never traces itself.
#[no_mangle]
static SELF_TGID: u32 = 0;

/// The daemon's network namespace (its inode): the packet path's sockets
/// live there.
#[no_mangle]
static SELF_NETNS: u32 = 0;

/// Non-zero: both sources run, so the hooks cover the flows they announce
/// (`COVERED`) at once, before their first payload reaches the wire.
#[no_mangle]
static COVER_FLOWS: u8 = 0;

/// Non-zero: the syscall hooks run (`--source syscalls` or `both`); zero
/// when only the packet path does, which still needs `inet_sock_set_state`
/// to name the processes of client sockets (`CLIENTS`).
#[no_mangle]
static TRACE_SYSCALLS: u8 = 1;

/// Non-zero: the packet path runs, so `CLIENTS` is kept.
#[no_mangle]
static NOTE_CLIENTS: u8 = 0;

/// Non-zero: every hook returns at once (the benchmark's overhead floor).
#[no_mangle]
static HOOKS_ONLY: u8 = 0;

/// True when the loader asked for empty hooks.
#[inline(always)]
fn hooks_only() -> bool {
    // SAFETY: as for `capture_limit`.
    unsafe { core::ptr::read_volatile(&HOOKS_ONLY) != 0 }
}

#[inline(always)]
fn capture_limit() -> u32 {
    // SAFETY: a plain read of a global the loader rewrites before load;
    // volatile so the compiler does not fold in the default.
    unsafe { core::ptr::read_volatile(&CAPTURE_LIMIT) }
}

#[inline(always)]
fn cover_flows() -> bool {
    // SAFETY: as for `capture_limit`.
    unsafe { core::ptr::read_volatile(&COVER_FLOWS) != 0 }
}

#[inline(always)]
fn trace_syscalls() -> bool {
    // SAFETY: as for `capture_limit`.
    unsafe { core::ptr::read_volatile(&TRACE_SYSCALLS) != 0 }
}

#[inline(always)]
fn note_clients() -> bool {
    // SAFETY: as for `capture_limit`.
    unsafe { core::ptr::read_volatile(&NOTE_CLIENTS) != 0 }
}

#[inline(always)]
fn self_netns() -> u32 {
    // SAFETY: as for `capture_limit`.
    unsafe { core::ptr::read_volatile(&SELF_NETNS) }
}

#[inline(always)]
fn self_tgid() -> u32 {
    // SAFETY: as for `capture_limit`.
    unsafe { core::ptr::read_volatile(&SELF_TGID) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot unwind or abort; the verifier rejects any
    // path that could reach here, so it is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
