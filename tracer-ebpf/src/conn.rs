//! The socket table: which (process, fd) pairs are TCP connections we trace,
//! and the OPEN / CLOSE / PROC_EXIT events that tell the daemon about them.
//! Server sockets are registered at `accept` exit, client sockets when
//! `connect` moves them to `SYN_SENT` (the only point where we learn both the
//! fd and that the socket is TCP) and announced once `ESTABLISHED`.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    generated::bpf_get_smp_processor_id,
};
use tracer_common::{
    conn_key, kernel_conn_id, kind, role, ConnEvent, ConnInfo, EventHeader, FlowKey, SockAddr,
    Tuple, AF_INET, AF_INET6, COMM_LEN,
};

use core::{ffi::c_void, mem::size_of};

use crate::{
    clients, cover_flows,
    maps::{
        count, output, Connecting, ACCEPTED, CONNECTING, CONN_SCRATCH, CONN_SEQ, COVERED,
        COVER_KEY, DUP_REFS, PEER_TO_LOCAL, SOCKETS,
    },
    note_clients,
    regs::{Caller, SyscallArgs},
    seq, trace_syscalls,
};

const NR_CONNECT: u64 = 42;
const EINPROGRESS: i64 = 115;

pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

/// The fields of the `sock/inet_sock_set_state` tracepoint we use.
pub struct StateChange {
    pub sk: u64,
    pub oldstate: i32,
    pub newstate: i32,
    pub protocol: u16,
    /// `local` is the tracepoint's source, `remote` its destination.
    pub tuple: Tuple,
}

fn next_conn_id() -> u64 {
    // SAFETY: no arguments; returns the current CPU number.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(seq) = CONN_SEQ.get_ptr_mut(0) else {
        return kernel_conn_id(cpu, 0);
    };
    // SAFETY: per-CPU slot, no other writer on this CPU while we run.
    unsafe {
        *seq += 1;
        kernel_conn_id(cpu, *seq)
    }
}

pub fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// `task`: the process id in the upper half and the thread id in the lower,
/// as `bpf_get_current_pid_tgid` gives them (BPF calls take five arguments).
fn emit(event_kind: u8, task: u64, fd: i32, info: &ConnInfo, comm: [u8; COMM_LEN]) {
    let Some(event) = CONN_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot; nothing else uses it while this hook runs.
    let event = unsafe { &mut *event };
    event.header = EventHeader {
        kind: event_kind,
        _pad: [0; 3],
        tgid: (task >> 32) as u32,
        conn_id: info.conn_id,
        ts_ns: now,
    };
    event.tuple = info.tuple;
    event.fd = fd;
    event.pid = task as u32;
    event.role = info.role;
    event._pad = [0; 7];
    event.comm = comm;
    event.bytes = info.pos;
    output(
        event as *const ConnEvent as *const c_void,
        size_of::<ConnEvent>() as u64,
        now,
        tracer_common::stat::RINGBUF_FULL,
    );
    if event_kind == kind::OPEN {
        cover(&event.tuple);
    }
}

/// Both sources: the packet path skips a flow the hooks announce from now
/// on, before the daemon reads the announcement (a short connection would
/// be over by then). Covered in every network namespace (0): the daemon
/// narrows a loopback flow to its own when it reads the announcement.
fn cover(tuple: &Tuple) {
    if !cover_flows() || tuple.local.family == 0 || tuple.remote.family == 0 {
        return;
    }
    let Some(key) = COVER_KEY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else uses it while this hook runs.
    let key = unsafe { &mut *key };
    key.set(&tuple.local, &tuple.remote);
    // A full table only costs the packet path's copies, which the daemon
    // drops.
    let _ = COVERED.insert(&*key, 0, 0);
}

#[inline(always)]
fn task(tgid: u32, pid: u32) -> u64 {
    ((tgid as u64) << 32) | pid as u64
}

fn register(key: u64, info: &ConnInfo) -> bool {
    if SOCKETS.insert(&key, info, 0).is_err() {
        count(tracer_common::stat::CONN_MAP_FULL);
        return false;
    }
    true
}

/// Reads a `sockaddr_in` / `sockaddr_in6` from user memory.
fn read_user_sockaddr(ptr: u64) -> Option<SockAddr> {
    if ptr == 0 {
        return None;
    }
    // sockaddr_in:  family u16 | port be16 | addr [4]
    // sockaddr_in6: family u16 | port be16 | flowinfo u32 | addr [16]
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    let head: [u8; 24] = unsafe { bpf_probe_read_user(ptr as *const [u8; 24]) }.ok()?;
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    let mut addr = [0u8; 16];
    match family {
        AF_INET => addr[..4].copy_from_slice(&head[4..8]),
        AF_INET6 => addr.copy_from_slice(&head[8..24]),
        _ => return None,
    }
    Some(SockAddr { addr, port, family })
}

/// `accept` / `accept4` returned `ret`: register the new server socket.
pub fn on_accept_exit(ret: i64) {
    if ret < 0 {
        return;
    }
    let Some(Caller {
        pid_tgid,
        tgid,
        args,
    }) = Caller::current()
    else {
        return;
    };
    let mut tuple = Tuple::default();
    let fd = ret as u32;
    // 0 for a Unix socket, or without the BTF offsets.
    let sk = seq::socket_of(fd);
    // The ends the socket was established with, exact whatever the peer
    // buffer (none at all from libuv and Node.js).
    let mut established = None;
    if sk != 0 {
        // SAFETY: plain map lookup; the value is copied out at once.
        established = unsafe { ACCEPTED.get(&sk) }.copied();
        let _ = ACCEPTED.remove(&sk);
    }
    let peer_ptr = args.arg1();
    if let Some(ends) = established {
        tuple = ends;
    } else if peer_ptr != 0 {
        // A non-inet family is a Unix socket: skip.
        let Some(remote) = read_user_sockaddr(peer_ptr) else {
            return;
        };
        tuple.remote = remote;
        // SAFETY: plain map lookup; the value is copied out at once.
        if let Some(local) = unsafe { PEER_TO_LOCAL.get(&remote) } {
            tuple.local = *local;
            let _ = PEER_TO_LOCAL.remove(&remote);
        }
    }
    // Otherwise (no buffer, and no note: a Unix socket, say) the addresses
    // stay unknown (family 0), and the parser drops the connection if it is
    // not HTTP.
    let mut info = ConnInfo::new(next_conn_id(), tuple, role::SERVER);
    seq::attach(&mut info, sk, 0, 0);
    if register(conn_key(tgid, fd), &info) {
        emit(kind::OPEN, pid_tgid, fd as i32, &info, comm());
    }
}

/// `connect` returned `ret`: a failure other than "in progress" unregisters
/// the socket that `SYN_SENT` registered.
pub fn on_connect_exit(ret: i64) {
    if ret == 0 || ret == -EINPROGRESS {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(fd) = SyscallArgs::current().map(|a| a.arg0()) else {
        return;
    };
    let _ = SOCKETS.remove(&conn_key(tgid, fd as u32));
}

/// `close(fd)`: announce and forget a traced socket.
pub fn on_close(fd: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    drop_descriptor(tgid, pid_tgid as u32, fd as u32);
}

/// One descriptor of a traced socket is gone; the connection ends with its
/// last descriptor.
fn drop_descriptor(tgid: u32, pid: u32, fd: u32) {
    let key = conn_key(tgid, fd);
    // SAFETY: plain map lookup; the value is copied out at once.
    let Some(info) = (unsafe { SOCKETS.get(&key) }).copied() else {
        return;
    };
    let _ = SOCKETS.remove(&key);
    if let Some(refs) = DUP_REFS.get_ptr_mut(&info.conn_id) {
        // SAFETY: a valid map value pointer, copied out at once.
        let left = unsafe {
            *refs = (*refs).saturating_sub(1);
            *refs
        };
        if left > 0 {
            return;
        }
        let _ = DUP_REFS.remove(&info.conn_id);
    }
    emit(kind::CLOSE, task(tgid, pid), fd as i32, &info, comm());
}

const NR_FCNTL: u64 = 72;
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

/// `dup`, `dup2`, `dup3` or `fcntl` returned `ret`: a new descriptor of a
/// traced socket shares its connection id and starts at its positions.
pub fn on_dup_exit(ret: i64) {
    if ret < 0 {
        return;
    }
    let Some(Caller {
        pid_tgid,
        tgid,
        args,
    }) = Caller::current()
    else {
        return;
    };
    if args.syscall_nr() == NR_FCNTL && !matches!(args.arg1(), F_DUPFD | F_DUPFD_CLOEXEC) {
        return;
    }
    let (old_fd, new_fd) = (args.arg0(), ret as u64);
    if old_fd == new_fd {
        return;
    }
    // dup2/dup3 onto an open descriptor closes it first.
    drop_descriptor(tgid, pid_tgid as u32, new_fd as u32);
    // SAFETY: plain map lookup; the value is copied out at once.
    let Some(info) = (unsafe { SOCKETS.get(&conn_key(tgid, old_fd as u32)) }).copied() else {
        return;
    };
    if !register(conn_key(tgid, new_fd as u32), &info) {
        return;
    }
    let refs = match DUP_REFS.get_ptr_mut(&info.conn_id) {
        // SAFETY: a valid map value pointer.
        Some(refs) => unsafe { *refs + 1 },
        None => 2,
    };
    if DUP_REFS.insert(&info.conn_id, &refs, 0).is_err() {
        // Without its count the first close would end the connection:
        // the new descriptor goes untraced, counted.
        let _ = SOCKETS.remove(&conn_key(tgid, new_fd as u32));
        count(tracer_common::stat::CONN_MAP_FULL);
    }
}

/// A TCP socket changed state.
pub fn on_state_change(change: &StateChange) {
    if change.protocol != IPPROTO_TCP {
        return;
    }
    if note_clients() {
        clients::note_client(change);
    }
    if !trace_syscalls() {
        return;
    }
    match (change.oldstate, change.newstate) {
        // Inside connect(), in the caller's context: fd and socket meet here.
        (_, TCP_SYN_SENT) => on_syn_sent(change),
        (TCP_SYN_SENT, TCP_ESTABLISHED) => on_client_established(change),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            // Server side: keep both ends until accept() asks for them, by
            // the socket where accept() can find the socket behind its new
            // descriptor, else by the peer's address (which accept() then
            // needs its peer buffer to name).
            if seq::sockets_found() {
                let _ = ACCEPTED.insert(&change.sk, &change.tuple, 0);
            } else {
                let _ = PEER_TO_LOCAL.insert(&change.tuple.remote, &change.tuple.local, 0);
            }
        }
        (_, TCP_CLOSE) => {
            // The daemon covers the flows the hooks announce; a socket's
            // end uncovers its flow even when the daemon never learns of it.
            let _ = COVERED.remove(&FlowKey::new(&change.tuple.local, &change.tuple.remote));
            // One never accepted through the hooks (reset in the queue,
            // accepted by io_uring) must not leave its ends to a later
            // socket at the same address.
            let _ = ACCEPTED.remove(&change.sk);
            on_closed(change.sk)
        }
        _ => {}
    }
}

/// A TCP socket reached `CLOSE`. One still connecting (refused, timed out,
/// reset, or closed mid-connect) was never announced: no OPEN, no data, so
/// it leaves the table now. Otherwise a process that exits without closing
/// it would leave its entry for good: process exit closes descriptors
/// without `close`, and the daemon forgets only the connections it was told
/// of.
fn on_closed(sk: u64) {
    // SAFETY: plain map lookup; the value is copied out at once.
    let Some(pending) = (unsafe { CONNECTING.get(&sk) }).copied() else {
        return;
    };
    let _ = CONNECTING.remove(&sk);
    // SAFETY: plain map lookup; the value is copied out at once.
    let registered = unsafe { SOCKETS.get(&pending.key) }.map(|info| info.conn_id);
    if registered == Some(pending.conn_id) {
        let _ = SOCKETS.remove(&pending.key);
    }
}

fn on_syn_sent(change: &StateChange) {
    let Some(Caller {
        pid_tgid,
        tgid,
        args,
    }) = Caller::current()
    else {
        return;
    };
    // Anything else (io_uring, kernel sockets) has no fd we could match.
    if args.syscall_nr() != NR_CONNECT {
        return;
    }
    let fd = args.arg0();
    let key = conn_key(tgid, fd as u32);
    let info = ConnInfo::new(next_conn_id(), change.tuple, role::CLIENT);
    if !register(key, &info) {
        return;
    }
    let pending = Connecting {
        key,
        conn_id: info.conn_id,
        pid: pid_tgid as u32,
        _pad: 0,
        comm: comm(),
    };
    let _ = CONNECTING.insert(&change.sk, &pending, 0);
}

fn on_client_established(change: &StateChange) {
    // SAFETY: plain map lookup; the value is copied out at once.
    let Some(pending) = (unsafe { CONNECTING.get(&change.sk) }).copied() else {
        return;
    };
    let _ = CONNECTING.remove(&change.sk);
    let Some(info) = SOCKETS.get_ptr_mut(&pending.key) else {
        return;
    };
    // SAFETY: pointer into a live map value; only this connection's hooks
    // write it and the local port is first known now. No byte has moved
    // yet and the counters are set (`copied_seq` before the state
    // changes): tie them to the connection now, not at its first chunk,
    // where a reading and a writing thread would race.
    let info = unsafe {
        (*info).tuple = change.tuple;
        seq::attach(&mut *info, change.sk, 0, 0);
        *info
    };
    let tgid = (pending.key >> 32) as u32;
    let fd = pending.key as u32 as i32;
    emit(kind::OPEN, task(tgid, pending.pid), fd, &info, pending.comm);
}

/// A thread exited; when it is the group leader, the process is gone and its
/// sockets closed without any `close` call we could see.
pub fn on_process_exit() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid != pid_tgid as u32 {
        return;
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let header = EventHeader {
        kind: kind::PROC_EXIT,
        _pad: [0; 3],
        tgid,
        conn_id: 0,
        ts_ns: now,
    };
    output(
        &header as *const EventHeader as *const c_void,
        size_of::<EventHeader>() as u64,
        now,
        tracer_common::stat::RINGBUF_FULL,
    );
}
