//! What leaves the daemon: Prometheus metrics (`metrics`, with the route
//! templating and budgets of `route`), the HTTP endpoints (`server`), and
//! the `tracer watch` lines (`watch`).

pub mod metrics;
pub mod route;
pub mod server;
pub mod watch;
