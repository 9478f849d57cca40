//! The daemon's HTTP endpoints: Prometheus scrapes and Kubernetes probes.
//!
//! Input: the shared [`Metrics`] and [`Health`] the ingest side updates.
//! Output: HTTP/1.1 responses on the listener `main` binds.
//!
//! - `GET /metrics`: calls `before_scrape` (the daemon refreshes the kernel
//!   counters there), then returns [`Metrics::encode`] as OpenMetrics text.
//! - `GET /healthz` (liveness): 200 `ok`, or 503 when the ingest loop has
//!   stopped beating for longer than [`Health`]'s stale limit while ready.
//! - `GET /readyz` (readiness): 200 once probes are attached and the
//!   ring-buffer reader runs, 503 before.
//! - Any other path: 404. (A known path with another method gets axum's 405;
//!   `HEAD` works wherever `GET` does.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::export::metrics::Metrics;

/// `Content-Type` of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Liveness state shared between the ingest side and the probes.
///
/// Readiness is a flag the daemon sets once the kernel programs are attached
/// and the ring-buffer reader runs. Liveness is a heartbeat: the ingest loop
/// calls [`Health::beat`] on every iteration, including idle wake-ups, so it
/// must wake at least every few seconds even without traffic. Once ready, a
/// heartbeat older than the stale limit means the loop is stuck and the pod
/// should be restarted. Before ready, the daemon is loading and counts as live,
/// so a slow start-up is not killed by the liveness probe.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat.
    last_beat_ms: AtomicU64,
    stale_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Heartbeat age after which `/healthz` fails.
    pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

    /// Not ready, with the default stale limit.
    pub fn new() -> Self {
        Self::with_stale_after(Self::DEFAULT_STALE_AFTER)
    }

    /// Not ready, failing liveness when the heartbeat is older than `stale_after`.
    pub fn with_stale_after(stale_after: Duration) -> Self {
        Self {
            ready: AtomicBool::new(false),
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            stale_after,
        }
    }

    /// Marks the daemon ready (or not). Becoming ready also beats, so the
    /// heartbeat age starts from now rather than from start-up.
    pub fn set_ready(&self, ready: bool) {
        if ready {
            self.beat();
        }
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether probes are attached and the reader runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records that the ingest loop made progress.
    pub fn beat(&self) {
        self.last_beat_ms.store(self.now_ms(), Ordering::Release);
    }

    /// False only when ready and the last heartbeat is older than the limit.
    pub fn is_live(&self) -> bool {
        if !self.is_ready() {
            return true;
        }
        let age_ms = self
            .now_ms()
            .saturating_sub(self.last_beat_ms.load(Ordering::Acquire));
        Duration::from_millis(age_ms) <= self.stale_after
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
}

/// Serves the endpoints on `listener` until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health, before_scrape))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics,
            health,
            before_scrape,
        })
}

async fn metrics_handler(State(app): State<AppState>) -> Response {
    // Refreshing kernel counters is a few bpf syscalls and encoding walks every
    // series: both block, so they run off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        (app.before_scrape)();
        app.metrics.encode()
    })
    .await;
    match result {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
        Err(err) => {
            tracing::warn!(error = %err, "metrics scrape task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "scrape failed\n").into_response()
        }
    }
}

async fn healthz(State(app): State<AppState>) -> Response {
    if app.health.is_live() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "ingest loop stalled\n").into_response()
    }
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends one raw HTTP/1.1 request; returns (status, headers, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn routes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = Arc::new(Metrics::new(10));
        let health = Arc::new(Health::with_stale_after(Duration::from_millis(200)));
        let scrapes = Arc::new(AtomicUsize::new(0));
        let before_scrape: Arc<dyn Fn() + Send + Sync> = {
            let metrics = Arc::clone(&metrics);
            let scrapes = Arc::clone(&scrapes);
            Arc::new(move || {
                scrapes.fetch_add(1, Ordering::SeqCst);
                metrics.set_kernel_stats(&[("ringbuf_full", 42)]);
            })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health),
            before_scrape,
            async {
                let _ = stopped.await;
            },
        ));

        let (status, head, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(head
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"));
        assert!(
            body.contains("tracer_kernel_drops_total{cause=\"ringbuf_full\"} 42"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
        assert_eq!(scrapes.load(Ordering::SeqCst), 1);

        // Starting up: live, not ready.
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
        let (status, _, body) = request(addr, "GET", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert_eq!(request(addr, "GET", "/readyz").await.0, 503);

        health.set_ready(true);
        assert_eq!(request(addr, "GET", "/readyz").await.0, 200);
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);

        // No heartbeat past the limit: liveness fails, a beat restores it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(request(addr, "GET", "/healthz").await.0, 503);
        health.beat();
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);

        assert_eq!(request(addr, "GET", "/").await.0, 404);
        assert_eq!(request(addr, "GET", "/metrics/x").await.0, 404);
        assert_eq!(request(addr, "GET", "/nope").await.0, 404);
        assert_eq!(request(addr, "HEAD", "/readyz").await.0, 200);

        let _ = stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops after shutdown")
            .expect("server task");
        assert!(result.is_ok());
    }

    #[test]
    fn health_before_ready_is_live() {
        let h = Health::with_stale_after(Duration::ZERO);
        assert!(h.is_live());
        assert!(!h.is_ready());
        h.set_ready(false);
        assert!(h.is_live());
    }
}
