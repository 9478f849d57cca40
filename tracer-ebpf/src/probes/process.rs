//! `sched/sched_process_exit`: a process's sockets close without `close()`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn tp_sched_process_exit(_ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    crate::conn::on_process_exit();
    0
}
