//! Payload capture: at the exit of every read/write-family syscall on a traced
//! socket, stamp the chunk with its byte position in that direction and copy
//! up to the capture limit into the ring buffer.

use aya_ebpf::helpers::{
    bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
    generated::bpf_probe_read_user as raw_read_user,
};
use aya_ebpf::EbpfContext;
use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
    mem::size_of,
};
use tracer_common::{
    conn_key, kind, pipelines, stat, switches_protocols, DataEvent, EventHeader, MAX_CAPTURE,
    SHED_CAPTURE, SNIFF_LEN, SWITCHING,
};

use crate::{
    capture_limit, frames,
    maps::{
        count, memory_short, output, ring_under_pressure, DataScratch, DUP_REFS, FRAME_PROGRAM,
        SCRATCH, SOCKETS,
    },
    regs::{Caller, SyscallArgs},
    seq,
};

/// Where the syscall's payload lives in user memory.
#[derive(Clone, Copy)]
pub enum Buffer {
    /// `(fd, buf, len)`: read, write, sendto.
    Flat,
    /// `(fd, buf, len, flags, ...)`: recvfrom, which may only peek.
    FlatWithFlags,
    /// `(fd, iov, iovcnt)`: readv, writev.
    Vector,
    /// `(fd, msghdr, flags)`: recvmsg, sendmsg; a receive may only peek.
    Message,
    /// Bytes moved without passing through user memory (sendfile,
    /// splice): a gap.
    None,
    /// `(fd, mmsghdr, count, flags, ...)`: sendmmsg, recvmmsg; the return
    /// value counts messages. Their bytes are a gap.
    Messages,
}

/// Where a chunk's bytes are in user memory.
#[derive(Clone, Copy)]
enum User {
    /// One buffer.
    Flat(u64),
    /// An iovec array and its length.
    Vector { iov: u64, segments: u64 },
}

/// `MSG_PEEK`: the bytes stay in the socket and will be read again.
const MSG_PEEK: u64 = 2;

/// Vectored I/O segments walked per syscall; the rest is a counted gap.
pub const MAX_SEGMENTS: u32 = 64;

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoVec {
    pub base: u64,
    pub len: u64,
}

/// A read/write-family syscall returned `ret` (bytes, or messages for
/// `Buffer::Messages`) moved in `direction` on its first argument.
#[inline(always)]
pub fn on_data_exit<C: EbpfContext>(ctx: &C, ret: i64, direction: u8, buffer: Buffer) {
    if ret <= 0 {
        return;
    }
    let Some(caller) = Caller::current() else {
        return;
    };
    let fd = caller.args.arg0();
    let len = match buffer {
        Buffer::Messages => message_bytes(caller.args.arg1(), ret as u64),
        _ => ret as u64,
    };
    capture(ctx, caller, fd, len, direction, buffer);
}

/// `splice` returned `ret` bytes moved. One end is a pipe; the other may be
/// a traced socket, written (`fd_out`, the third argument) or read (`fd_in`,
/// the first). The bytes never pass through user memory: a gap.
#[inline(always)]
pub fn on_splice_exit<C: EbpfContext>(ctx: &C, ret: i64) {
    if ret <= 0 {
        return;
    }
    let Some(caller) = Caller::current() else {
        return;
    };
    let (fd_in, fd_out) = (caller.args.arg0(), caller.args.arg2());
    let (fd, direction) = if SOCKETS
        .get_ptr(&conn_key(caller.tgid, fd_out as u32))
        .is_some()
    {
        (fd_out, tracer_common::direction::EGRESS)
    } else {
        (fd_in, tracer_common::direction::INGRESS)
    };
    capture(ctx, caller, fd, ret as u64, direction, Buffer::None);
}

/// Messages of a `sendmmsg`/`recvmmsg` whose lengths are added up; beyond
/// them the socket's counters (when known) still place the next chunk.
const MAX_MESSAGES: u64 = 16;

/// Bytes moved by the first `messages` entries of a `struct mmsghdr` array:
/// each is a 56-byte `user_msghdr` and the `unsigned int msg_len` the
/// kernel filled in, padded to 64 bytes (x86-64).
fn message_bytes(vec: u64, messages: u64) -> u64 {
    let mut total = 0u64;
    let mut i = 0u64;
    while i < MAX_MESSAGES && i < messages {
        // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
        match unsafe { bpf_probe_read_user((vec + i * 64 + 56) as *const u32) } {
            Ok(len) => total += len as u64,
            Err(_) => {
                count(stat::READ_FAILED);
                break;
            }
        }
        i += 1;
    }
    total
}

/// `len` bytes moved in `direction` on the caller's descriptor `fd`: when it
/// is a traced socket, place them in its stream and copy what `buffer` lets
/// us into the ring buffer.
#[inline(always)]
fn capture<C: EbpfContext>(
    ctx: &C,
    caller: Caller,
    fd: u64,
    len: u64,
    direction: u8,
    buffer: Buffer,
) {
    let Caller {
        pid_tgid,
        tgid,
        args,
    } = caller;
    let Some(info) = SOCKETS.get_ptr_mut(&conn_key(tgid, fd as u32)) else {
        return;
    };
    // A peek is not consumed: counting it would see the same bytes twice.
    let flags = match buffer {
        Buffer::FlatWithFlags | Buffer::Messages => args.arg3(),
        Buffer::Message if direction == tracer_common::direction::INGRESS => args.arg2(),
        _ => 0,
    };
    if flags & MSG_PEEK != 0 || len == 0 {
        return;
    }
    let dir = (direction & 1) as usize;
    // SAFETY: pointer into a live map value, aligned (u64 fields of a
    // repr(C) struct).
    let conn_id = unsafe { (*info).conn_id };
    // SAFETY: as above.
    let (unseen, pos) = match unsafe { seq::place(info, fd as u32, dir, len) } {
        Some(placed) => placed,
        None => {
            // Without the socket's counters: threads writing one socket at
            // once each get a range of their own, as the fetch-and-add
            // never hands out a position twice.
            // The target has no compare-and-swap, so
            // `AtomicU64::fetch_add` does not exist for it; the intrinsic
            // lowers to BPF's atomic fetch-add. Not Relaxed: LLVM 22 lowers
            // a relaxed one to the plain `lock +=`, whose register then
            // still holds the addend, not the old value.
            // SAFETY: as above.
            let pos = unsafe {
                let cell = core::ptr::addr_of_mut!((*info).pos[dir]);
                atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cell, len)
            };
            (pos, pos)
        }
    };
    // A connection with several descriptors keeps a furthest position per
    // descriptor: the bytes behind one may have gone through another, not
    // unseen.
    let unseen = if unseen < pos && DUP_REFS.get_ptr(&conn_id).is_some() {
        pos
    } else {
        unseen
    };
    // Bytes with no user memory behind them join the unseen ones in one gap.
    let (pos, len) = match buffer {
        Buffer::None | Buffer::Messages => (unseen, pos + len - unseen),
        _ => (pos, len),
    };

    // SAFETY: no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        count(stat::READ_FAILED);
        return;
    };
    // SAFETY: this CPU's slot, exclusively ours until this program returns
    // (programs run with migration disabled and do not nest on a CPU).
    let scratch: &mut DataScratch = unsafe { &mut *scratch };
    if unseen < pos {
        // Bytes moved where no hook saw them (io_uring, a splice by a
        // process we do not see): a gap, so the parsers skip exactly them.
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        scratch.event = DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                _pad: [0; 3],
                tgid,
                conn_id,
                ts_ns: now,
            },
            pos: unseen,
            pid: pid_tgid as u32,
            fd: fd as i32,
            orig_len: (pos - unseen).min(u32::MAX as u64) as u32,
            cap_len: 0,
            direction: dir as u8,
            frames: 0,
            _pad: [0; 6],
        };
        output(
            scratch as *const DataScratch as *const c_void,
            size_of::<DataEvent>() as u64,
            now,
            stat::RINGBUF_FULL,
        );
    }
    // SAFETY: pointer into a live map value; only the kernel side writes
    // this byte, and a racing first write of another thread sets the same.
    let mut pipelined = unsafe { (*info).pipelined } != 0;
    if !pipelined
        && pos == 0
        && len >= SNIFF_LEN as u64
        && sniff(&buffer, &args).is_some_and(|first| pipelines(&first))
    {
        pipelined = true;
        // SAFETY: as above.
        unsafe { (*info).pipelined = 1 };
    }
    // Branch-free: one verifier path for both limits (two paths put the
    // vectored copy loop over the verifier's 1M-instruction budget on
    // Linux 6.18).
    let default = (capture_limit() as u64).min(MAX_CAPTURE as u64);
    let mut limit = default + (MAX_CAPTURE as u64 - default) * u64::from(pipelined);
    let want = len.min(limit) as usize;
    let user = match buffer {
        Buffer::Flat | Buffer::FlatWithFlags => Some(User::Flat(args.arg1())),
        Buffer::Vector => Some(User::Vector {
            iov: args.arg1(),
            segments: args.arg2(),
        }),
        Buffer::Message => message_iov(args.arg1()),
        Buffer::None | Buffer::Messages => None,
    };
    let mut captured = match user {
        Some(User::Flat(buf)) => copy_at(scratch, 0, buf, want),
        Some(User::Vector { iov, segments }) => copy_vector(scratch, iov, segments, want),
        None => 0,
    };
    // After an HTTP/1.1 upgrade the connection speaks frames (h2c) in both
    // directions. The chunk holding the switch may carry the first frames
    // too (a client reading the 101 and the server's first frames at once):
    // a flat buffer is captured on to the larger limit now, a vectored one
    // from the next syscall.
    if !pipelined
        && captured >= SWITCHING.len()
        && switches_protocols(&scratch.data[..SWITCHING.len()])
    {
        pipelined = true;
        if let Some(User::Flat(buf)) = user {
            limit = MAX_CAPTURE as u64;
            let more = (len.min(limit) as usize).saturating_sub(captured);
            captured += copy_at(scratch, captured, buf + captured as u64, more);
        }
        // SAFETY: as above.
        unsafe {
            (*info).pipelined = 1;
            (*info).next_frame[dir] = frames::after_switch(pos, captured, scratch);
        }
    }
    // Under pressure payload goes before whole events do: a ring more than
    // half full means the daemon is behind; the daemon short of memory
    // says so itself. After the copy, so that the copy loop is verified
    // once. Not on connections that pipeline (HTTP/2, the databases): a cut
    // there loses whole messages, and HTTP/2's frame following beyond the
    // capture has a budget sized for a full one.
    if !pipelined && captured > SHED_CAPTURE && (ring_under_pressure() || memory_short()) {
        captured = SHED_CAPTURE;
        count(stat::CAPTURE_SHED);
    }
    // Only the capture limit truncates; failed copies and iovec overflow
    // have counters of their own.
    if len > limit && !matches!(buffer, Buffer::None | Buffer::Messages) {
        count(stat::TRUNCATED);
    }

    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    scratch.event = DataEvent {
        header: EventHeader {
            kind: kind::DATA,
            _pad: [0; 3],
            tgid,
            conn_id,
            ts_ns: now,
        },
        pos,
        pid: pid_tgid as u32,
        fd: fd as i32,
        orig_len: len.min(u32::MAX as u64) as u32,
        cap_len: captured as u32,
        direction: dir as u8,
        frames: 0,
        _pad: [0; 6],
    };
    if let (true, Some(user)) = (pipelined, user) {
        let (user, segments) = match user {
            User::Flat(buf) => (buf, 0),
            User::Vector { iov, segments } => (iov, segments),
        };
        // The walk's own state is set by the frame program that needs it.
        let job = &mut scratch.job;
        job.key = conn_key(tgid, fd as u32);
        job.user = user;
        job.segments = segments;
        job.now = now;
        // The frame program sends the record; this returns only when it is
        // not loaded.
        // SAFETY: `ctx` is this program's context.
        unsafe { FRAME_PROGRAM.tail_call(ctx, 0) };
    }
    // `scratch` spans size_of::<DataEvent>() + 3 * MAX_CAPTURE bytes and
    // `captured` is at most MAX_CAPTURE.
    let size = size_of::<DataEvent>() + (captured & (2 * MAX_CAPTURE - 1));
    output(
        scratch as *const DataScratch as *const c_void,
        size as u64,
        now,
        stat::RINGBUF_FULL,
    );
}

/// The first `SNIFF_LEN` bytes the syscall moved, if it moved that many
/// in its first buffer segment (a chunk that short decides nothing).
fn sniff(buffer: &Buffer, args: &SyscallArgs) -> Option<[u8; SNIFF_LEN]> {
    let first = match buffer {
        Buffer::Flat | Buffer::FlatWithFlags => args.arg1(),
        Buffer::Vector => first_segment(args.arg1())?,
        Buffer::Message => {
            // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
            let iov = unsafe { bpf_probe_read_user((args.arg1() + 16) as *const u64) }.ok()?;
            first_segment(iov)?
        }
        Buffer::None | Buffer::Messages => return None,
    };
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(first as *const [u8; SNIFF_LEN]) }.ok()
}

/// The base address of the first segment of an iovec array.
fn first_segment(iov: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    let seg = unsafe { bpf_probe_read_user(iov as *const IoVec) }.ok()?;
    (seg.len >= SNIFF_LEN as u64).then_some(seg.base)
}

/// Copies `len` (at most `MAX_CAPTURE`) bytes from user address `src` to
/// `scratch.data[offset..]`; returns the bytes copied.
#[inline(always)]
fn copy_at(scratch: &mut DataScratch, offset: usize, src: u64, len: usize) -> usize {
    // Callers keep `offset` below MAX_CAPTURE and `len` at most MAX_CAPTURE;
    // the masks let the verifier see that without a branch per copy (each
    // branch multiplies the states it explores over the segment loop), and
    // `data` is sized for the masked extremes.
    let offset = offset & (MAX_CAPTURE - 1);
    let len = len & (2 * MAX_CAPTURE - 1);
    // SAFETY: offset < MAX_CAPTURE and len < 2 * MAX_CAPTURE, so the copy
    // stays inside `data` (3 * MAX_CAPTURE bytes); the helper checks `src`
    // and accepts a zero length.
    let ret = unsafe {
        raw_read_user(
            scratch.data.as_mut_ptr().add(offset) as *mut c_void,
            len as u32,
            src as *const c_void,
        )
    };
    if ret != 0 {
        count(stat::READ_FAILED);
        return 0;
    }
    len
}

fn copy_vector(scratch: &mut DataScratch, iov: u64, count_segments: u64, want: usize) -> usize {
    let mut copied = 0usize;
    let mut i = 0u32;
    while i < MAX_SEGMENTS {
        if (i as u64) >= count_segments || copied >= want {
            return copied;
        }
        let at = iov + (i as u64) * size_of::<IoVec>() as u64;
        // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
        let Ok(seg) = (unsafe { bpf_probe_read_user(at as *const IoVec) }) else {
            count(stat::READ_FAILED);
            return copied;
        };
        let take = (seg.len as usize).min(want - copied);
        let got = copy_at(scratch, copied, seg.base, take);
        copied += got;
        if got < take {
            return copied;
        }
        i += 1;
    }
    if (i as u64) < count_segments && copied < want {
        count(stat::IOV_TRUNCATED);
    }
    copied
}

/// The iovec array and its length of a `struct user_msghdr`.
fn message_iov(msg: u64) -> Option<User> {
    // struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (x86-64).
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    let iov = unsafe { bpf_probe_read_user((msg + 16) as *const u64) };
    // SAFETY: as above.
    let cnt = unsafe { bpf_probe_read_user((msg + 24) as *const u64) };
    match (iov, cnt) {
        (Ok(iov), Ok(segments)) => Some(User::Vector { iov, segments }),
        _ => {
            count(stat::READ_FAILED);
            None
        }
    }
}
