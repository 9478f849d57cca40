//! The kprobe attach path: kretprobes on the x86-64 syscall entry points
//! (`__x64_sys_*`), for kernels without syscall tracepoints. The same logic
//! as the tracepoints: arguments come from the task's saved registers.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::direction::{EGRESS, INGRESS};

use crate::{
    capture::{on_data_exit, on_splice_exit, Buffer},
    conn,
    regs::SyscallArgs,
};

macro_rules! data_exit {
    ($name:ident, $direction:expr, $buffer:expr) => {
        #[kretprobe]
        pub fn $name(ctx: RetProbeContext) -> u32 {
            if crate::hooks_only() {
                return 0;
            }
            on_data_exit(&ctx, ctx.ret::<i64>(), $direction, $buffer);
            0
        }
    };
}

data_exit!(kp_exit_read, INGRESS, Buffer::Flat);
data_exit!(kp_exit_recvfrom, INGRESS, Buffer::FlatWithFlags);
data_exit!(kp_exit_readv, INGRESS, Buffer::Vector);
data_exit!(kp_exit_recvmsg, INGRESS, Buffer::Message);
data_exit!(kp_exit_write, EGRESS, Buffer::Flat);
data_exit!(kp_exit_sendto, EGRESS, Buffer::Flat);
data_exit!(kp_exit_writev, EGRESS, Buffer::Vector);
data_exit!(kp_exit_sendmsg, EGRESS, Buffer::Message);
data_exit!(kp_exit_sendfile64, EGRESS, Buffer::None);
data_exit!(kp_exit_preadv2, INGRESS, Buffer::Vector);
data_exit!(kp_exit_pwritev2, EGRESS, Buffer::Vector);
data_exit!(kp_exit_recvmmsg, INGRESS, Buffer::Messages);
data_exit!(kp_exit_sendmmsg, EGRESS, Buffer::Messages);

#[kretprobe]
pub fn kp_exit_splice(ctx: RetProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    on_splice_exit(&ctx, ctx.ret::<i64>());
    0
}

/// Reached by tail call from the data programs of an HTTP/2 connection
/// (`maps::FRAME_PROGRAM` slot 0), never attached.
#[kretprobe]
pub fn kp_frames(ctx: RetProbeContext) -> u32 {
    crate::frames::on_frames(&ctx);
    0
}

/// Reached by tail call from the first (`maps::FRAME_PROGRAM` slot 1).
#[kretprobe]
pub fn kp_frames_beyond(ctx: RetProbeContext) -> u32 {
    crate::frames::on_frames_beyond(&ctx);
    0
}

#[kretprobe]
pub fn kp_exit_accept(ctx: RetProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    conn::on_accept_exit(ctx.ret::<i64>());
    0
}

#[kretprobe]
pub fn kp_exit_accept4(ctx: RetProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    conn::on_accept_exit(ctx.ret::<i64>());
    0
}

#[kretprobe]
pub fn kp_exit_connect(ctx: RetProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    conn::on_connect_exit(ctx.ret::<i64>());
    0
}

macro_rules! dup_exit {
    ($name:ident) => {
        #[kretprobe]
        pub fn $name(ctx: RetProbeContext) -> u32 {
            if crate::hooks_only() {
                return 0;
            }
            conn::on_dup_exit(ctx.ret::<i64>());
            0
        }
    };
}

dup_exit!(kp_exit_dup);
dup_exit!(kp_exit_dup2);
dup_exit!(kp_exit_dup3);
dup_exit!(kp_exit_fcntl);

#[kprobe]
pub fn kp_enter_close(_ctx: ProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    if let Some(fd) = SyscallArgs::current().map(|a| a.arg0()) {
        conn::on_close(fd);
    }
    0
}
