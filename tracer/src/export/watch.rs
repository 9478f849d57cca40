//! `tracer watch`: one line per request/response pair on stdout, for an
//! operator debugging one machine. Prints the method and the path as the
//! metrics have them (methods outside the standard nine as `_OTHER`; no
//! query string; ids, tokens and email addresses as `{id}`), never a
//! header value, statement text or key (see `describe`).

use std::{
    io::Write,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    export::{metrics::calls::normalize_method, route},
    pipeline::records::{ip_of, Record, Sink},
    protocols::{Call, Side},
};

/// Which records to print; an empty list lets everything through.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub processes: Vec<String>,
    pub ports: Vec<u16>,
    /// Kubernetes namespaces of the process's pod.
    pub namespaces: Vec<String>,
    /// Pod names, or NAMESPACE/NAME.
    pub pods: Vec<String>,
}

impl Filter {
    fn admits(&self, record: &Record) -> bool {
        let pod = record.identity.pod.as_deref();
        (self.pids.is_empty() || self.pids.contains(&record.tgid))
            && (self.processes.is_empty()
                || self
                    .processes
                    .iter()
                    .any(|p| **p == *record.identity.service_name))
            && (self.ports.is_empty()
                || self.ports.contains(&record.local.port)
                || self.ports.contains(&record.remote.port))
            && (self.namespaces.is_empty()
                || pod.is_some_and(|pod| self.namespaces.iter().any(|n| **n == *pod.namespace)))
            && (self.pods.is_empty()
                || pod.is_some_and(|pod| {
                    self.pods.iter().any(|p| match p.split_once('/') {
                        Some((ns, name)) => *ns == *pod.namespace && *name == *pod.name,
                        None => **p == *pod.name,
                    })
                }))
    }
}

/// Prints records to a writer (stdout in the CLI).
pub struct PrintSink<W: Write> {
    filter: Filter,
    out: W,
    /// Wall-clock time minus CLOCK_MONOTONIC, to date kernel timestamps.
    offset_ns: i128,
}

impl<W: Write> PrintSink<W> {
    pub fn new(filter: Filter, out: W) -> Self {
        Self {
            filter,
            out,
            offset_ns: wall_minus_monotonic_ns(),
        }
    }
}

impl<W: Write> Sink for PrintSink<W> {
    fn record(&mut self, record: &Record) {
        if !self.filter.admits(record) {
            return;
        }
        let wall_ns = i128::from(record.exchange.end_ns) + self.offset_ns;
        let peer = match ip_of(&record.remote) {
            Some(ip) => SocketAddr::new(ip, record.remote.port).to_string(),
            None => "-".to_string(),
        };
        let side = match record.side {
            Side::Server => "server",
            Side::Client => "client",
        };
        let pod = match &record.identity.pod {
            Some(pod) => format!(" pod={}/{}", pod.namespace, pod.name),
            None => String::new(),
        };
        let (what, target, outcome) = describe(&record.exchange.call);
        let status = match record.exchange.failure {
            Some(failure) => failure.as_str().to_string(),
            None => outcome,
        };
        // A closed stdout (piped into `head`) is not worth a panic.
        let _ = writeln!(
            self.out,
            "{} {}[{}]{} {} peer={} {} {} {} {:.3}ms source={}",
            rfc3339(wall_ns),
            record.identity.service_name,
            record.tgid,
            pod,
            side,
            peer,
            what,
            target,
            status,
            record.duration_s() * 1e3,
            record.source.as_str(),
        );
        let _ = self.out.flush();
    }
}

/// Three words for a call: HTTP `METHOD /masked/path STATUS`; gRPC
/// `grpc /pkg.Service/Method STATUS`; databases `SYSTEM OPERATION[:table]
/// ok|ERROR-CODE`.
fn describe(call: &Call) -> (&str, String, String) {
    match call {
        Call::Http(http) => (
            // As the metrics have it: a method is the client's to choose.
            normalize_method(&http.method),
            route::template(&http.path),
            http.status.to_string(),
        ),
        Call::Grpc(grpc) => (
            "grpc",
            format!("/{}/{}", grpc.service, grpc.method),
            grpc.status
                .map_or_else(|| "-".to_string(), |s| s.to_string()),
        ),
        Call::Db(db) => (
            db.system.as_str(),
            match &db.collection {
                Some(table) => format!("{}:{table}", db.operation),
                None => db.operation.clone(),
            },
            db.error.clone().unwrap_or_else(|| "ok".to_string()),
        ),
    }
}

fn wall_minus_monotonic_ns() -> i128 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    wall - (i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// Formats Unix-epoch nanoseconds as UTC RFC 3339 with milliseconds.
fn rfc3339(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let millis = (ns.rem_euclid(1_000_000_000) / 1_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant), valid for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracer_common::{SockAddr, AF_INET};

    use super::*;
    use crate::protocols::{Call, Exchange, HttpCall};

    fn record(tgid: u32, service: &str, port: u16) -> Record {
        let addr = |p| SockAddr {
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: p,
            family: AF_INET,
        };
        Record {
            side: Side::Server,
            identity: Arc::new(crate::metadata::Identity {
                exe: Arc::from(service),
                service_name: Arc::from(service),
                container_id: None,
                partial: false,
                pod: None,
            }),
            peer_service: None,
            tgid,
            source: crate::source::events::Source::Syscalls,
            local: addr(port),
            remote: addr(40000),
            exchange: Exchange {
                call: Call::Http(HttpCall {
                    method: "GET".into(),
                    path: "/items/7".into(),
                    status: 200,
                }),
                failure: None,
                start_ns: 1_000_000,
                end_ns: 3_500_000,
                response_body_bytes: None,
            },
        }
    }

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_795_000_000_123_000_000),
            "2026-11-18T11:06:40.123Z"
        );
    }

    #[test]
    fn prints_one_line_per_record() {
        let mut sink = PrintSink::new(Filter::default(), Vec::new());
        sink.record(&record(42, "nginx", 8080));
        let line = String::from_utf8(sink.out).unwrap();
        assert!(line.ends_with(
            " nginx[42] server peer=127.0.0.1:40000 GET /items/{id} 200 2.500ms source=syscalls\n"
        ));
    }

    #[test]
    fn filters_by_pid_process_and_port() {
        let only = |filter: Filter, rec: Record| {
            let mut sink = PrintSink::new(filter, Vec::new());
            sink.record(&rec);
            !sink.out.is_empty()
        };
        let pid = Filter {
            pids: vec![42],
            ..Default::default()
        };
        assert!(only(pid.clone(), record(42, "nginx", 80)));
        assert!(!only(pid, record(43, "nginx", 80)));
        let process = Filter {
            processes: vec!["nginx".into()],
            ..Default::default()
        };
        assert!(!only(process, record(42, "python3", 80)));
        let port = Filter {
            ports: vec![40000],
            ..Default::default()
        };
        assert!(only(port.clone(), record(1, "x", 80)));
        let port = Filter {
            ports: vec![9],
            ..Default::default()
        };
        assert!(!only(port, record(1, "x", 80)));
    }
}
