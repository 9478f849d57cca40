//! HTTP/2 frame boundaries followed in the kernel, so that a frame header
//! beyond a syscall's captured bytes still reaches the daemon.
//!
//! A chunk is captured up to 16 KiB; HTTP/2's default largest frame is
//! 16 KiB too, so a response written in one syscall puts the header of its
//! next frame (and the END_STREAM flag that ends it) beyond the capture.
//! Per direction the kernel keeps where the next frame header starts
//! ([`ConnInfo::next_frame`]), steps from header to header through each
//! chunk (in the captured copy, then in user memory) and appends the
//! headers it finds beyond the capture to the record as [`FrameHead`]s.
//! Following starts at the client preface, at a server's first SETTINGS
//! frame, or after an HTTP/1.1 `101 Switching Protocols`; when it cannot
//! go on it stops for the connection and counts `FRAMES_LOST`, and the
//! daemon resyncs as it would without it.

use aya_ebpf::{
    helpers::{
        bpf_get_smp_processor_id, bpf_probe_read_user,
        generated::bpf_probe_read_user as raw_read_user,
    },
    EbpfContext,
};
use core::{ffi::c_void, mem::size_of};
use tracer_common::{
    settings_frame, stat, ConnInfo, DataEvent, FrameHead, FRAME_HEADER_LEN, MAX_CAPTURE,
    MAX_FRAME_EXTRA, MAX_FRAME_HEADS, MAX_FRAME_PAYLOAD, NO_FRAME, PREFACE, SWITCHING,
};

use crate::{
    capture::{IoVec, MAX_SEGMENTS},
    maps::{count, output, DataScratch, FRAME_PROGRAM, SCRATCH, SOCKETS},
};

/// The frame program's body (`tp_frames`, `kp_frames`): follows the
/// frames of the chunk staged in this CPU's scratch (`DataScratch::job`)
/// through its captured bytes, then either sends the record or, when a
/// header lies beyond the capture, hands over to the second frame program
/// (`FRAME_PROGRAM` slot 1) with where to go on.
#[inline(always)]
pub fn on_frames<C: EbpfContext>(ctx: &C) {
    let Some((scratch, info)) = staged() else {
        return;
    };
    let event = scratch.event;
    let captured = (event.cap_len as usize).min(MAX_CAPTURE);
    let dir = usize::from(event.direction & 1);
    if let Some(info) = info {
        if let Some(off) = follow(
            info,
            dir,
            event.pos,
            u64::from(event.orig_len),
            captured,
            scratch,
        ) {
            let job = &mut scratch.job;
            job.off = off;
            job.heads = 0;
            job.out = 0;
            job.rounds = 0;
            job.entered = 0;
            job.seg_start = 0;
            // A flat buffer is one segment, entered; an iovec's first is not.
            (job.base, job.seg_end) = if job.segments == 0 {
                (job.user, u64::from(event.orig_len))
            } else {
                (0, 0)
            };
            // SAFETY: `ctx` is this program's context.
            unsafe { FRAME_PROGRAM.tail_call(ctx, 1) };
            lose(info, dir);
        }
    }
    send(scratch, captured, 0, 0);
}

/// The second frame program (`tp_frames_beyond`, `kp_frames_beyond`):
/// reads the headers beyond the capture from user memory and appends
/// them, a few steps per run, calling itself again (`FRAME_PROGRAM` slot
/// 1, its state in `DataScratch::job`) until the chunk is done; then
/// sends the record. Short runs keep each one's verification small.
#[inline(always)]
pub fn on_frames_beyond<C: EbpfContext>(ctx: &C) {
    let Some((scratch, info)) = staged() else {
        return;
    };
    let event = scratch.event;
    let captured = (event.cap_len as usize).min(MAX_CAPTURE);
    let Some(info) = info else {
        send(scratch, captured, 0, 0);
        return;
    };
    let dir = usize::from(event.direction & 1);
    let len = u64::from(event.orig_len);
    match beyond(captured, len, scratch) {
        Walk::More if scratch.job.rounds < MAX_ROUNDS => {
            scratch.job.rounds += 1;
            // SAFETY: `ctx` is this program's context.
            unsafe { FRAME_PROGRAM.tail_call(ctx, 1) };
            lose(info, dir);
        }
        Walk::More | Walk::Lost => lose(info, dir),
        Walk::Done => finish(info, dir, event.pos, len, captured, scratch),
    }
    let heads = (scratch.job.heads as usize).min(MAX_FRAME_HEADS);
    send(scratch, captured, heads as u8, scratch.job.out);
}

/// This CPU's staged record, and its socket's entry if still the same
/// connection.
#[inline(always)]
fn staged() -> Option<(&'static mut DataScratch, Option<*mut ConnInfo>)> {
    // SAFETY: no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let scratch = SCRATCH.get_ptr_mut(cpu)?;
    // SAFETY: this CPU's slot, filled by the program that tail-called this
    // one on the same CPU; programs do not nest on a CPU.
    let scratch: &'static mut DataScratch = unsafe { &mut *scratch };
    let conn_id = scratch.event.header.conn_id;
    let info = SOCKETS
        .get_ptr_mut(&scratch.job.key)
        // SAFETY: pointer into a live map value.
        .filter(|&info| unsafe { (*info).conn_id } == conn_id);
    Some((scratch, info))
}

/// Sends the staged record with `frames` heads (`extra` bytes in all)
/// after its captured bytes.
#[inline(always)]
fn send(scratch: &mut DataScratch, captured: usize, frames: u8, extra: u64) {
    scratch.event.frames = frames;
    let size = size_of::<DataEvent>() + captured + (extra as usize & (2 * MAX_FRAME_EXTRA - 1));
    let now = scratch.job.now;
    output(
        scratch as *const DataScratch as *const c_void,
        size as u64,
        now,
        tracer_common::stat::RINGBUF_FULL,
    );
}

/// Frame headers stepped over in the captured bytes of one chunk.
const MAX_WALK: u32 = 96;

/// Steps per run of the second frame program (buffer segments entered
/// plus headers read), and its runs per chunk: tail calls chain at most 33
/// programs.
const STEPS: u32 = 8;
const MAX_ROUNDS: u64 = 24;

/// Bytes searched for the end of a `101 Switching Protocols` header.
const MAX_SWITCH_HEAD: usize = 512;

const HEAD: u64 = FRAME_HEADER_LEN as u64;

/// The DATA frame type: its payload is the one skipped.
const DATA: u8 = 0;

/// After a `101 Switching Protocols` at the start of a chunk: the position
/// where the new protocol's bytes begin, if its header ends in the capture.
#[inline(always)]
pub fn after_switch(pos: u64, captured: usize, scratch: &DataScratch) -> u64 {
    let end = captured.min(MAX_SWITCH_HEAD);
    let mut i = SWITCHING.len();
    while i + 4 <= end && i < MAX_SWITCH_HEAD {
        let at = i & (MAX_SWITCH_HEAD - 1);
        if scratch.data[at..at + 4] == *b"\r\n\r\n" {
            return pos + (at + 4) as u64;
        }
        i += 1;
    }
    NO_FRAME
}

/// Follows the frames of one chunk (`len` bytes at `pos` in direction
/// `dir`, the first `captured` of them in `scratch.data`) through its
/// captured bytes; the offset of the first header at or across the end of
/// the capture, if the chunk goes on beyond it.
#[inline(always)]
fn follow(
    info: *mut ConnInfo,
    dir: usize,
    pos: u64,
    len: u64,
    captured: usize,
    scratch: &DataScratch,
) -> Option<u64> {
    // SAFETY (all accesses to `info`): a pointer into a live map value;
    // only this program writes these fields, and two threads racing on
    // one direction at worst make the walk stop (positions then disagree).
    let mut next = unsafe { (*info).next_frame[dir] };
    if next == NO_FRAME {
        next = start(pos, captured, scratch);
        if next == NO_FRAME {
            return None;
        }
    }
    let cap = captured as u64;
    if next < pos {
        // The previous chunk ended inside a header, before its length.
        let held = u64::from(unsafe { (*info).split_len[dir] });
        if held == 0 || next + held != pos || cap < 3 {
            lose(info, dir);
            return None;
        }
        let split = unsafe { (*info).split[dir] };
        let byte = |i: u64| -> u64 {
            if i < held {
                u64::from(split[(i & 1) as usize])
            } else {
                u64::from(scratch.data[((i - held) & 3) as usize])
            }
        };
        next += HEAD + ((byte(0) << 16) | (byte(1) << 8) | byte(2));
        unsafe { (*info).split_len[dir] = 0 };
    }
    if next >= pos + len {
        unsafe { (*info).next_frame[dir] = next };
        return None;
    }

    // Headers within the captured copy: only their lengths are needed,
    // the daemon reads them itself.
    let mut off = next - pos;
    let mut steps = 0;
    let mut crossing = false;
    while steps < MAX_WALK && off + HEAD <= cap {
        let at = (off as usize) & (2 * MAX_CAPTURE - 1);
        let d = &scratch.data;
        let length = (u64::from(d[at]) << 16) | (u64::from(d[at + 1]) << 8) | u64::from(d[at + 2]);
        // A header block running past the capture: the daemon needs all of
        // it, so it is read again, whole, from user memory.
        if d[at + 3] != DATA && off + HEAD + length > cap && cap < len {
            crossing = true;
            break;
        }
        off += HEAD + length;
        steps += 1;
    }
    if crossing {
        return Some(off);
    }
    if off + HEAD <= cap {
        lose(info, dir);
        return None;
    }
    if off >= len {
        unsafe { (*info).next_frame[dir] = pos + off };
        return None;
    }
    if cap == len {
        // The chunk, all captured, ends inside this header.
        let at = (off as usize) & (2 * MAX_CAPTURE - 1);
        let have = len - off;
        if have >= 3 {
            let d = &scratch.data;
            let length =
                (u64::from(d[at]) << 16) | (u64::from(d[at + 1]) << 8) | u64::from(d[at + 2]);
            unsafe { (*info).next_frame[dir] = pos + off + HEAD + length };
        } else {
            unsafe {
                (*info).split[dir] = [scratch.data[at], scratch.data[at + 1]];
                (*info).split_len[dir] = have as u8;
                (*info).next_frame[dir] = pos + off;
            }
        }
        return None;
    }
    Some(off)
}

/// Where following starts in a chunk of a connection not yet followed.
#[inline(always)]
fn start(pos: u64, captured: usize, scratch: &DataScratch) -> u64 {
    if captured >= PREFACE.len() && scratch.data[..PREFACE.len()] == *PREFACE {
        pos + PREFACE.len() as u64
    } else if pos == 0 && captured >= FRAME_HEADER_LEN && settings_frame(&scratch.data[..16]) {
        0
    } else {
        NO_FRAME
    }
}

/// Stops following this direction.
#[inline(always)]
fn lose(info: *mut ConnInfo, dir: usize) {
    // SAFETY: as in `follow`.
    unsafe { (*info).next_frame[dir] = NO_FRAME };
    count(stat::FRAMES_LOST);
}

/// How a run of [`beyond`] ended.
enum Walk {
    /// Out of steps for this run.
    More,
    /// At or past the chunk's end, or at a header the chunk ends inside.
    Done,
    /// Out of segments or room for headers, a header across two buffer
    /// segments (rare: writers put a frame header in one piece), or a
    /// failed read.
    Lost,
}

/// Up to `STEPS` steps from the header at `job.off`: each enters the next
/// buffer segment or reads a header from user memory and appends it.
#[inline(always)]
fn beyond(captured: usize, len: u64, scratch: &mut DataScratch) -> Walk {
    // The walk's state in locals, written back for the next run.
    let job = scratch.job;
    let (user, segments) = (job.user, job.segments);
    let (mut off, mut heads, mut out) = (job.off, job.heads, job.out);
    let (mut entered, mut base, mut seg_start, mut seg_end) =
        (job.entered, job.base, job.seg_start, job.seg_end);
    let mut walk = Walk::More;
    let mut steps = 0;
    while steps < STEPS {
        steps += 1;
        if off + HEAD > len {
            walk = Walk::Done;
            break;
        }
        if heads >= MAX_FRAME_HEADS as u64 {
            walk = Walk::Lost;
            break;
        }
        if off >= seg_end {
            if entered >= segments || entered >= u64::from(MAX_SEGMENTS) {
                walk = Walk::Lost;
                break;
            }
            let at = user + entered * size_of::<IoVec>() as u64;
            // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
            let Ok(seg) = (unsafe { bpf_probe_read_user(at as *const IoVec) }) else {
                walk = Walk::Lost;
                break;
            };
            base = seg.base;
            seg_start = seg_end;
            seg_end = seg_start + seg.len;
            entered += 1;
            continue;
        }
        if off + HEAD > seg_end {
            walk = Walk::Lost;
            break;
        }
        let at = base + (off - seg_start);
        // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
        let Ok(head) = (unsafe { bpf_probe_read_user(at as *const [u8; FRAME_HEADER_LEN]) }) else {
            walk = Walk::Lost;
            break;
        };
        // Every frame but DATA carries what the daemon must read: header
        // blocks (HPACK), settings, stream resets.
        let payload = length(&head);
        let extra = if head[3] == DATA {
            0
        } else {
            payload.min(len - off - HEAD)
        };
        if extra > MAX_FRAME_PAYLOAD as u64
            || out + (size_of::<FrameHead>() as u64) + extra > MAX_FRAME_EXTRA as u64
            || off + HEAD + extra > seg_end
        {
            walk = Walk::Lost;
            break;
        }
        if extra > 0 && !copy_payload(scratch, captured, out, at + HEAD, extra) {
            walk = Walk::Lost;
            break;
        }
        append(scratch, captured, out, off, FRAME_HEADER_LEN, &head, extra);
        heads += 1;
        out += size_of::<FrameHead>() as u64 + extra;
        off += HEAD + payload;
    }
    let job = &mut scratch.job;
    job.off = off;
    job.heads = heads;
    job.out = out;
    job.entered = entered;
    job.base = base;
    job.seg_start = seg_start;
    job.seg_end = seg_end;
    walk
}

/// Copies `n` (at most MAX_FRAME_PAYLOAD) bytes of a frame's payload from
/// user address `src` to after the head appended at `out`.
#[inline(always)]
fn copy_payload(scratch: &mut DataScratch, captured: usize, out: u64, src: u64, n: u64) -> bool {
    // As in `append`: a volatile read keeps the masks LLVM would drop.
    // SAFETY: reading a local.
    let at =
        unsafe { core::ptr::read_volatile(&(captured + out as usize + size_of::<FrameHead>())) }
            & (2 * MAX_CAPTURE - 1);
    // SAFETY: reading a local.
    let n = unsafe { core::ptr::read_volatile(&n) } & (2 * MAX_FRAME_PAYLOAD as u64 - 1);
    // SAFETY: at < 2 * MAX_CAPTURE and n < 2 * MAX_FRAME_PAYLOAD, inside
    // `data` (3 * MAX_CAPTURE bytes); the helper checks `src`.
    let ret = unsafe {
        raw_read_user(
            scratch.data.as_mut_ptr().add(at) as *mut c_void,
            n as u32,
            src as *const c_void,
        )
    };
    ret == 0
}

/// The walk reached the chunk's end: where the next header is, and the
/// start of a header the chunk ends inside, appended.
#[inline(always)]
fn finish(
    info: *mut ConnInfo,
    dir: usize,
    pos: u64,
    len: u64,
    captured: usize,
    scratch: &mut DataScratch,
) {
    let job = scratch.job;
    let off = job.off;
    if off >= len {
        // SAFETY: as in `follow`.
        unsafe { (*info).next_frame[dir] = pos + off };
        return;
    }
    // The chunk ends inside this header; its bytes must be in the segment
    // at hand (a header across segments is given up).
    if off < job.seg_start || len > job.seg_end || job.heads >= MAX_FRAME_HEADS as u64 {
        lose(info, dir);
        return;
    }
    let have = len - off;
    let mut head = [0u8; 16];
    // SAFETY: `have` < 9, masked so the verifier sees the write stays
    // inside `head`; the helper checks the source.
    let ret = unsafe {
        raw_read_user(
            head.as_mut_ptr() as *mut c_void,
            (have & 7) as u32,
            (job.base + (off - job.seg_start)) as *const c_void,
        )
    };
    if ret != 0 {
        lose(info, dir);
        return;
    }
    if job.out + size_of::<FrameHead>() as u64 > MAX_FRAME_EXTRA as u64 {
        lose(info, dir);
        return;
    }
    let mut part = [0u8; FRAME_HEADER_LEN];
    part.copy_from_slice(&head[..FRAME_HEADER_LEN]);
    append(scratch, captured, job.out, off, have as usize, &part, 0);
    scratch.job.heads += 1;
    scratch.job.out += size_of::<FrameHead>() as u64;
    let next = if have >= 3 {
        pos + off + HEAD + length(&part)
    } else {
        // SAFETY: as in `follow`.
        unsafe {
            (*info).split[dir] = [part[0], part[1]];
            (*info).split_len[dir] = have as u8;
        }
        pos + off
    };
    // SAFETY: as in `follow`.
    unsafe { (*info).next_frame[dir] = next };
}

/// The payload length a frame header starts with.
#[inline(always)]
fn length(head: &[u8; FRAME_HEADER_LEN]) -> u64 {
    (u64::from(head[0]) << 16) | (u64::from(head[1]) << 8) | u64::from(head[2])
}

/// Writes a [`FrameHead`] `out` bytes after the captured bytes.
#[inline(always)]
fn append(
    scratch: &mut DataScratch,
    captured: usize,
    out: u64,
    off: u64,
    len: usize,
    head: &[u8; FRAME_HEADER_LEN],
    extra: u64,
) {
    let frame = FrameHead {
        offset: off as u32,
        len: len as u8,
        head: *head,
        extra: extra as u16,
    };
    // `captured` <= MAX_CAPTURE and `out` < MAX_FRAME_EXTRA, so the mask
    // changes nothing; LLVM knows that and drops it, but the verifier
    // needs it to bound the pointer. A volatile read hides the value from
    // LLVM so the mask stays.
    // SAFETY: reading a local.
    let at =
        unsafe { core::ptr::read_volatile(&(captured + out as usize)) } & (2 * MAX_CAPTURE - 1);
    // SAFETY: `at + size_of::<FrameHead>()` <= 2 * MAX_CAPTURE + 16, inside `data`.
    unsafe {
        core::ptr::write_unaligned(scratch.data.as_mut_ptr().add(at) as *mut FrameHead, frame);
    }
}
