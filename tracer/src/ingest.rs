//! Reads the kernel's ring buffer on the tokio runtime: waits on the map's fd
//! through `AsyncFd` (epoll, no polling loop), drains every record into a
//! handler (the pipeline, or a recording file), and after each drained batch (and on an idle tick) lets the
//! caller publish counters and beat the liveness heartbeat.

use std::future::Future;

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

/// Records handled before yielding to other tasks (the metrics server).
const BATCH: usize = 4096;

/// The kernel batches wake-ups (see `wakeup_flags` in tracer-ebpf), so the
/// last events of a burst may wait without one; this timer collects them and,
/// with no traffic at all, keeps the liveness heartbeat and gauges fresh.
const TAIL_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs until `shutdown` completes or the ring buffer fd fails: every record
/// goes to `handle(state, record)`.
pub async fn run<T>(
    events: RingBuf<MapData>,
    state: &mut T,
    mut handle: impl FnMut(&mut T, &[u8]),
    mut after_batch: impl FnMut(&mut T),
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open and
    // unchanged until it is dropped, which only the AsyncFd does.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(TAIL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut guard = tokio::select! {
            guard = ring.readable_mut() => guard?,
            _ = tick.tick() => {
                drain_all(ring.get_mut(), state, &mut handle).await;
                after_batch(state);
                continue;
            }
            () = &mut shutdown => return Ok(()),
        };
        let mut more = drain(guard.get_inner_mut(), state, &mut handle);
        if !more {
            guard.clear_ready();
            // A record that landed between the last read and clear_ready
            // raised no new edge: look once more before sleeping.
            more = drain(guard.get_inner_mut(), state, &mut handle);
        }
        drop(guard);
        after_batch(state);
        if more {
            tokio::task::yield_now().await;
        }
    }
}

/// Drains without waiting for readiness, yielding between batches.
async fn drain_all<T>(
    ring: &mut RingBuf<MapData>,
    state: &mut T,
    handle: &mut impl FnMut(&mut T, &[u8]),
) {
    while drain(ring, state, handle) {
        tokio::task::yield_now().await;
    }
}

/// Handles up to `BATCH` records; true if records may remain.
fn drain<T>(
    ring: &mut RingBuf<MapData>,
    state: &mut T,
    handle: &mut impl FnMut(&mut T, &[u8]),
) -> bool {
    for _ in 0..BATCH {
        match ring.next() {
            Some(record) => handle(state, &record),
            None => return false,
        }
    }
    true
}
