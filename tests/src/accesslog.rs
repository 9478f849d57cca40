//! Ground truth on the server side: the access log that nginx (through the
//! `e2e` log_format in [`crate::peers::Nginx`]) and the Python peer
//! (`peers/http_server.py`) both write, one line per request they answered:
//!
//! ```text
//! $request_method $status $request_uri $connection $connection_requests $request_completion $body_bytes_sent
//! GET 200 /wrk?x=1 17 3 OK 3
//! ```
//!
//! nginx writes "-" for an empty variable; a line for a request nginx could
//! not parse (junk) keeps "-" or escaped bytes and lands in
//! [`AccessLog::unparsed`] if it does not split into the seven fields.

use std::collections::BTreeMap;
use std::path::Path;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub method: String,
    pub status: u16,
    /// As sent, with the query string.
    pub uri: String,
    /// The server's connection serial number.
    pub connection: String,
    /// The request's position on its connection (1 for the first).
    pub connection_requests: u64,
    /// nginx's `$request_completion`: "OK" if the whole response was sent.
    pub completed: bool,
    /// nginx's `$body_bytes_sent`: the response body's bytes after the
    /// header, chunk framing included; None where the server logs "-".
    pub body_bytes_sent: Option<u64>,
}

impl Entry {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// The path as the tracer's `http_route` label should show it.
    pub fn route(&self) -> String {
        template_route(self.path())
    }
}

/// The `http_route` the tracer derives from a path: the query is dropped and
/// purely numeric segments become `{id}`. (The tracer also templates UUIDs and
/// long hex strings; the suite's paths use only numeric ids.)
pub fn template_route(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    path.split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// (method, status, route) → requests.
pub type Counts = BTreeMap<(String, u16, String), u64>;

/// A parsed access log.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    pub entries: Vec<Entry>,
    /// Lines that did not split into the seven fields (junk requests).
    pub unparsed: Vec<String>,
}

impl AccessLog {
    /// Reads and parses the log at `path` (empty if it does not exist yet).
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read(path).unwrap_or_default();
        Self::parse(&String::from_utf8_lossy(&text))
    }

    pub fn parse(text: &str) -> Self {
        let mut log = AccessLog::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match parse_line(line) {
                Some(entry) => log.entries.push(entry),
                None => log.unparsed.push(line.to_string()),
            }
        }
        log
    }

    /// Entries whose path starts with `prefix`.
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.path().starts_with(prefix))
    }

    /// Requests per (method, status, route) among paths under `prefix`.
    pub fn counts(&self, prefix: &str) -> Counts {
        let mut counts = Counts::new();
        for e in self.under(prefix) {
            *counts
                .entry((e.method.clone(), e.status, e.route()))
                .or_default() += 1;
        }
        counts
    }

    /// True if some entry's path is exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.entries.iter().any(|e| e.path() == path)
    }
}

fn parse_line(line: &str) -> Option<Entry> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 7 || !f[2].starts_with('/') {
        return None;
    }
    Some(Entry {
        method: f[0].to_string(),
        status: f[1].parse().ok()?,
        uri: f[2].to_string(),
        connection: f[3].to_string(),
        connection_requests: f[4].parse().ok()?,
        completed: f[5] == "OK",
        body_bytes_sent: f[6].parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_counts_routes() {
        let log = AccessLog::parse(
            "GET 200 /c/items/42?x=1 3 1 OK 150\n\
             GET 200 /c/items/7 3 2 OK 150\n\
             POST 201 /c/created 4 1 OK -\n\
             - 400 - 5 1 - 0\n\
             \\x00\\x01 400 - 6 1 OK 150\n",
        );
        assert_eq!(log.entries.len(), 3);
        assert_eq!(log.unparsed.len(), 2);
        let counts = log.counts("/c/");
        assert_eq!(counts[&("GET".into(), 200, "/c/items/{id}".into())], 2);
        assert_eq!(counts[&("POST".into(), 201, "/c/created".into())], 1);
        assert!(log.entries[0].completed);
        assert_eq!(log.entries[0].body_bytes_sent, Some(150));
        assert_eq!(log.entries[2].body_bytes_sent, None);
    }

    #[test]
    fn templates_numeric_segments_only() {
        assert_eq!(template_route("/a/12/b/3x?q=1"), "/a/{id}/b/3x");
        assert_eq!(template_route("/"), "/");
    }
}
