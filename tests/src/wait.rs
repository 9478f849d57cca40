//! Polling with a deadline: the suite synchronises on observable state (a
//! port accepting, a metric reaching a value, a log line appearing), never on
//! a fixed sleep.

use std::time::{Duration, Instant};

/// How long the tracer gets to turn traffic into metrics.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a process gets to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls `probe` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
