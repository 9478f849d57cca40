//! The syscall-tracepoint attach path (`syscalls/sys_{enter,exit}_*`): stable
//! across kernels, needs tracefs and `CONFIG_FTRACE_SYSCALLS`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::direction::{EGRESS, INGRESS};

use crate::{
    capture::{on_data_exit, on_splice_exit, Buffer},
    conn,
};

/// `long ret` of every `sys_exit_*` record; `fd` of `sys_enter_close`.
const EXIT_RET: usize = 16;
const ENTER_ARG0: usize = 16;

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: sys_exit_* records carry `long ret` at offset 16.
    unsafe { ctx.read_at::<i64>(EXIT_RET) }.unwrap_or(-1)
}

macro_rules! data_exit {
    ($name:ident, $direction:expr, $buffer:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            if crate::hooks_only() {
                return 0;
            }
            on_data_exit(&ctx, ret(&ctx), $direction, $buffer);
            0
        }
    };
}

data_exit!(tp_exit_read, INGRESS, Buffer::Flat);
data_exit!(tp_exit_recvfrom, INGRESS, Buffer::FlatWithFlags);
data_exit!(tp_exit_readv, INGRESS, Buffer::Vector);
data_exit!(tp_exit_recvmsg, INGRESS, Buffer::Message);
data_exit!(tp_exit_write, EGRESS, Buffer::Flat);
data_exit!(tp_exit_sendto, EGRESS, Buffer::Flat);
data_exit!(tp_exit_writev, EGRESS, Buffer::Vector);
data_exit!(tp_exit_sendmsg, EGRESS, Buffer::Message);
data_exit!(tp_exit_sendfile64, EGRESS, Buffer::None);
data_exit!(tp_exit_preadv2, INGRESS, Buffer::Vector);
data_exit!(tp_exit_pwritev2, EGRESS, Buffer::Vector);
data_exit!(tp_exit_recvmmsg, INGRESS, Buffer::Messages);
data_exit!(tp_exit_sendmmsg, EGRESS, Buffer::Messages);

#[tracepoint]
pub fn tp_exit_splice(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    on_splice_exit(&ctx, ret(&ctx));
    0
}

/// Reached by tail call from the data programs of an HTTP/2 connection
/// (`maps::FRAME_PROGRAM` slot 0), never attached.
#[tracepoint]
pub fn tp_frames(ctx: TracePointContext) -> u32 {
    crate::frames::on_frames(&ctx);
    0
}

/// Reached by tail call from the first (`maps::FRAME_PROGRAM` slot 1).
#[tracepoint]
pub fn tp_frames_beyond(ctx: TracePointContext) -> u32 {
    crate::frames::on_frames_beyond(&ctx);
    0
}

#[tracepoint]
pub fn tp_exit_accept(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    conn::on_accept_exit(ret(&ctx));
    0
}

#[tracepoint]
pub fn tp_exit_accept4(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    conn::on_accept_exit(ret(&ctx));
    0
}

#[tracepoint]
pub fn tp_exit_connect(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    conn::on_connect_exit(ret(&ctx));
    0
}

macro_rules! dup_exit {
    ($name:ident) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            if crate::hooks_only() {
                return 0;
            }
            conn::on_dup_exit(ret(&ctx));
            0
        }
    };
}

dup_exit!(tp_exit_dup);
dup_exit!(tp_exit_dup2);
dup_exit!(tp_exit_dup3);
dup_exit!(tp_exit_fcntl);

#[tracepoint]
pub fn tp_enter_close(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    // SAFETY: sys_enter_close carries `unsigned int fd` in an 8-byte slot at 16.
    if let Ok(fd) = unsafe { ctx.read_at::<u64>(ENTER_ARG0) } {
        conn::on_close(fd);
    }
    0
}
