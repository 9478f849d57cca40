//! Reads the kernel's event rings on the tokio runtime: waits on an epoll set
//! of the rings' fds through `AsyncFd` (no polling loop), drains every record
//! into a handler (the pipeline, or a recording file) in timestamp order, and
//! after each drained batch lets the caller publish counters and beat the
//! liveness heartbeat.

use std::{
    future::Future,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use aya::maps::MapData;
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};

use crate::source::rings::{Drained, Rings};

/// Records handled before yielding to other tasks (the metrics server).
const BATCH: usize = 4096;

/// The kernel batches wake-ups (`wakeup_flags` in tracer-ebpf): an event
/// within 5 ms of the last wake-up raises none, and records from several
/// CPUs are held back until they are 2 ms old (`rings::HOLD_BACK_NS`). So
/// after every batch that handled or left records, one look this much later
/// collects them; it re-arms only while there are any, so an idle tracer has
/// no timer.
const TAIL: Duration = Duration::from_millis(10);

/// With no traffic at all, the caller still publishes gauges, hands over
/// exchanges whose identity arrived, reports timed-out requests and beats
/// the liveness heartbeat this often; the rings are not read then.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Runs until `shutdown` completes or waiting on the rings fails: every
/// record goes to `handle(state, record)`.
pub async fn run<T>(
    events: Vec<MapData>,
    state: &mut T,
    mut handle: impl FnMut(&mut T, &[u8]),
    mut after_batch: impl FnMut(&mut T),
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut rings = Rings::new(events)?;
    // SAFETY: the OwnedFd keeps the epoll fd open and unchanged until it is
    // dropped, which only the AsyncFd does.
    let ready = unsafe { AsyncFd::register_with_interest(epoll_of(&rings)?, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    tokio::pin!(shutdown);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tail: Option<Instant> = None;
    let mut drain = |rings: &mut Rings, state: &mut T| rings.drain(BATCH, |r| handle(state, r));
    loop {
        let tail_at = tail.unwrap_or_else(Instant::now);
        let mut guard = tokio::select! {
            guard = ready.readable() => guard?,
            () = tokio::time::sleep_until(tail_at), if tail.is_some() => {
                let last = drain_all(&mut rings, state, &mut drain).await;
                tail = (last.handled > 0 || last.waiting).then(|| Instant::now() + TAIL);
                after_batch(state);
                continue;
            }
            _ = heartbeat.tick() => {
                after_batch(state);
                continue;
            }
            () = &mut shutdown => return Ok(()),
        };
        let mut last = drain(&mut rings, state);
        let mut handled = last.handled;
        if !last.more {
            guard.clear_ready();
            // A record that landed between the last read and clear_ready
            // raised no new edge: look once more before sleeping.
            last = drain(&mut rings, state);
            handled += last.handled;
        }
        drop(guard);
        if handled > 0 || last.waiting {
            tail = Some(Instant::now() + TAIL);
        }
        after_batch(state);
        if last.more {
            tokio::task::yield_now().await;
        }
    }
}

/// Drains without waiting for readiness, yielding between batches; returns
/// the last batch.
async fn drain_all<T>(
    rings: &mut Rings,
    state: &mut T,
    drain: &mut impl FnMut(&mut Rings, &mut T) -> Drained,
) -> Drained {
    let mut handled = 0;
    loop {
        let last = drain(rings, state);
        handled += last.handled;
        if !last.more {
            return Drained { handled, ..last };
        }
        tokio::task::yield_now().await;
    }
}

/// An epoll set holding every ring: readable when any ring has records. One
/// fd for the runtime to wait on, however many rings there are.
fn epoll_of(rings: &Rings) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
    for ring in rings.iter() {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; `event` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring.as_fd().as_raw_fd(),
                &mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(epoll)
}
