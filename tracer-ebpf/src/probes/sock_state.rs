//! `sock/inet_sock_set_state`: TCP state changes, where a client socket's fd
//! meets its kernel socket and where both ends' addresses become known; and
//! where the packet path learns which process connected a client socket
//! (`clients.rs`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{SockAddr, Tuple, AF_INET, AF_INET6};

use crate::conn::{on_state_change, StateChange};

// Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format,
// unchanged since the tracepoint gained `protocol` (Linux 4.16); the loader
// checks every one against the running kernel's format file before attaching
// (tracer/src/source/loader.rs, SOCK_STATE_FIELDS).
const SKADDR: usize = 8;
const OLDSTATE: usize = 16;
const NEWSTATE: usize = 20;
const SPORT: usize = 24;
const DPORT: usize = 26;
const FAMILY: usize = 28;
const PROTOCOL: usize = 30;
const SADDR: usize = 32;
const DADDR: usize = 36;
const SADDR_V6: usize = 40;
const DADDR_V6: usize = 56;

#[tracepoint]
pub fn tp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    let _ = try_state(&ctx);
    0
}

fn try_state(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: every offset lies inside the record described above.
    unsafe {
        let protocol = ctx.read_at::<u16>(PROTOCOL)?;
        let family = ctx.read_at::<u16>(FAMILY)?;
        let mut tuple = Tuple::default();
        tuple.local.port = ctx.read_at::<u16>(SPORT)?;
        tuple.remote.port = ctx.read_at::<u16>(DPORT)?;
        tuple.local.family = family;
        tuple.remote.family = family;
        if family == AF_INET {
            read_v4(ctx, SADDR, &mut tuple.local)?;
            read_v4(ctx, DADDR, &mut tuple.remote)?;
        } else if family == AF_INET6 {
            tuple.local.addr = ctx.read_at::<[u8; 16]>(SADDR_V6)?;
            tuple.remote.addr = ctx.read_at::<[u8; 16]>(DADDR_V6)?;
        } else {
            return Ok(());
        }
        on_state_change(&StateChange {
            sk: ctx.read_at::<u64>(SKADDR)?,
            oldstate: ctx.read_at::<i32>(OLDSTATE)?,
            newstate: ctx.read_at::<i32>(NEWSTATE)?,
            protocol,
            tuple,
        });
    }
    Ok(())
}

/// # Safety
/// `offset` must lie inside the tracepoint record.
unsafe fn read_v4(ctx: &TracePointContext, offset: usize, out: &mut SockAddr) -> Result<(), i32> {
    // SAFETY: guaranteed by the caller.
    let v4 = unsafe { ctx.read_at::<[u8; 4]>(offset)? };
    out.addr[..4].copy_from_slice(&v4);
    Ok(())
}
