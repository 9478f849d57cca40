//! Reads the kernel's ring buffer on the tokio runtime: waits on the map's fd
//! through `AsyncFd` (epoll, no polling loop), drains every record into a
//! handler (the pipeline, or a recording file), and after each drained batch
//! lets the caller publish counters and beat the liveness heartbeat.

use std::{future::Future, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};

/// Records handled before yielding to other tasks (the metrics server).
const BATCH: usize = 4096;

/// The kernel batches wake-ups (`wakeup_flags` in tracer-ebpf): an event
/// within 5 ms of the last wake-up raises none. So after every batch that
/// handled records, one look this much later collects such stragglers; it
/// re-arms only while it finds records, so an idle tracer has no timer.
const TAIL: Duration = Duration::from_millis(10);

/// With no traffic at all, the caller still publishes gauges and beats the
/// liveness heartbeat this often; the ring buffer is not read then.
const HEARTBEAT: Duration = Duration::from_secs(5);

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
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tail: Option<Instant> = None;
    loop {
        let tail_at = tail.unwrap_or_else(Instant::now);
        let mut guard = tokio::select! {
            guard = ring.readable_mut() => guard?,
            () = tokio::time::sleep_until(tail_at), if tail.is_some() => {
                let (handled, _) = drain_all(ring.get_mut(), state, &mut handle).await;
                tail = (handled > 0).then(|| Instant::now() + TAIL);
                after_batch(state);
                continue;
            }
            _ = heartbeat.tick() => {
                after_batch(state);
                continue;
            }
            () = &mut shutdown => return Ok(()),
        };
        let (mut handled, mut more) = drain(guard.get_inner_mut(), state, &mut handle);
        if !more {
            guard.clear_ready();
            // A record that landed between the last read and clear_ready
            // raised no new edge: look once more before sleeping.
            let (again, rest) = drain(guard.get_inner_mut(), state, &mut handle);
            handled += again;
            more = rest;
        }
        drop(guard);
        if handled > 0 {
            tail = Some(Instant::now() + TAIL);
        }
        after_batch(state);
        if more {
            tokio::task::yield_now().await;
        }
    }
}

/// Drains without waiting for readiness, yielding between batches; returns
/// the records handled.
async fn drain_all<T>(
    ring: &mut RingBuf<MapData>,
    state: &mut T,
    handle: &mut impl FnMut(&mut T, &[u8]),
) -> (usize, bool) {
    let mut total = 0;
    loop {
        let (handled, more) = drain(ring, state, handle);
        total += handled;
        if !more {
            return (total, false);
        }
        tokio::task::yield_now().await;
    }
}

/// Handles up to `BATCH` records: how many, and whether more may remain.
fn drain<T>(
    ring: &mut RingBuf<MapData>,
    state: &mut T,
    handle: &mut impl FnMut(&mut T, &[u8]),
) -> (usize, bool) {
    for handled in 0..BATCH {
        match ring.next() {
            Some(record) => handle(state, &record),
            None => return (handled, false),
        }
    }
    (BATCH, true)
}
