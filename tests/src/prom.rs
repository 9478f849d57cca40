//! A real Prometheus (Debian's 2.42) for the suite, and the shipped
//! dashboard's PromQL made concrete.
//!
//! [`Prometheus::start`] runs it on a free loopback port with a generated
//! configuration: every [`ScrapeJob`] scraped every second (negotiating
//! OpenMetrics), rules evaluated every second, the given rule files loaded.
//! [`Prometheus::reconfigure`] rewrites the scrape jobs and reloads them
//! (SIGHUP), the way targets come and go in a cluster. Queries go through
//! the HTTP API (`/api/v1/query`, percent-encoded), so what a test sees is
//! what Grafana or an alert would see.
//!
//! [`panel_queries`] and [`variable_queries`] list the PromQL of a Grafana
//! dashboard (rows' nested panels included), and [`concrete`] replaces its
//! template variables so Prometheus can run it: `$__rate_interval` by a
//! duration, a dashboard variable by its All value `.*` (only inside a
//! `=~"..."` or `!~"..."` matcher, where that value means anything).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::net::free_port;
use crate::process::{Guard, TestDir};
use crate::tracer::try_get;
use crate::wait::{wait_until, START_TIMEOUT};

/// The Grafana dashboard shipped with the tracer, relative to the workspace.
pub const DASHBOARD: &str = "manifests/grafana/tracer-dashboard.json";

/// The plain Prometheus rules file shipped with the tracer.
pub const RULES: &str = "manifests/monitoring/tracer-rules.yml";

/// One scrape job: its `job_name` and static targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeJob {
    pub name: String,
    pub targets: Vec<SocketAddr>,
}

impl ScrapeJob {
    pub fn new(name: &str, targets: &[SocketAddr]) -> Self {
        Self {
            name: name.to_string(),
            targets: targets.to_vec(),
        }
    }
}

/// A running Prometheus, stopped on drop. Its TSDB lives in the test
/// directory.
#[derive(Debug)]
pub struct Prometheus {
    guard: Guard,
    addr: SocketAddr,
    config: PathBuf,
    rule_files: Vec<PathBuf>,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every second with `rule_files`
    /// evaluated every second, and waits until it is ready (`/-/ready`).
    pub fn start(dir: &TestDir, jobs: &[ScrapeJob], rule_files: &[PathBuf]) -> Self {
        let config = dir.write("prometheus.yml", config_text(jobs, rule_files));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut cmd = Command::new(crate::require_tool("prometheus"));
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let mut guard = Guard::spawn("prometheus", &mut cmd, dir);
        let ready = wait_until(START_TIMEOUT, || {
            guard.assert_running();
            try_get(addr, "/-/ready").ok().filter(|r| r.status == 200)
        });
        assert!(
            ready.is_some(),
            "prometheus not ready on {addr} within {START_TIMEOUT:?}:\n{}",
            guard.stderr_tail(30)
        );
        Self {
            guard,
            addr,
            config,
            rule_files: rule_files.to_vec(),
        }
    }

    /// Where its HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the scrape jobs (same rule files) and reloads the
    /// configuration (SIGHUP); returns once the active targets are exactly
    /// those of `jobs`.
    pub fn reconfigure(&mut self, jobs: &[ScrapeJob]) {
        std::fs::write(&self.config, config_text(jobs, &self.rule_files))
            .unwrap_or_else(|e| panic!("write {}: {e}", self.config.display()));
        self.guard.signal(libc::SIGHUP);
        let mut want: Vec<(String, String)> = jobs
            .iter()
            .flat_map(|j| j.targets.iter().map(|t| (j.name.clone(), t.to_string())))
            .collect();
        want.sort();
        let reloaded = wait_until(START_TIMEOUT, || {
            self.guard.assert_running();
            let mut have: Vec<(String, String)> = self
                .targets()
                .iter()
                .map(|t| {
                    let label = |k: &str| t["labels"][k].as_str().unwrap_or_default().to_string();
                    (label("job"), label("instance"))
                })
                .collect();
            have.sort();
            (have == want).then_some(())
        });
        assert!(
            reloaded.is_some(),
            "prometheus did not take the new targets {want:?} within {START_TIMEOUT:?}:\n{}",
            self.diagnostics()
        );
    }

    /// Runs an instant query (`GET /api/v1/query`): the `data.result` array,
    /// or Prometheus's error (or a transport error) as text.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let response = try_get(self.addr, &path).map_err(|e| format!("GET {path}: {e}"))?;
        let json: Value = serde_json::from_slice(&response.body).map_err(|e| {
            format!(
                "HTTP {} with a body that is not JSON ({e}): {}",
                response.status,
                response.body_text()
            )
        })?;
        if json["status"] != "success" {
            return Err(format!(
                "HTTP {}: {}: {}",
                response.status, json["errorType"], json["error"]
            ));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Polls `promql` (every 50 ms) until `accept` takes its result or
    /// `timeout` passes: `Ok` with the accepted result, else `Err` with the
    /// last result (or the last error).
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        mut accept: impl FnMut(&[Value]) -> bool,
    ) -> Result<Vec<Value>, String> {
        let mut last = String::from("never queried");
        let found = wait_until(timeout, || match self.query(promql) {
            Ok(result) if accept(&result) => Some(result),
            Ok(result) => {
                last = format!("last result: {}", Value::Array(result));
                None
            }
            Err(e) => {
                last = format!("last error: {e}");
                None
            }
        });
        found.ok_or(last)
    }

    /// Waits until some series of `promql` carries all of `labels`.
    pub fn wait_for_series(
        &self,
        promql: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Vec<Value>, String> {
        self.wait_for(promql, timeout, |r| has_series(r, labels))
    }

    /// The active targets (`/api/v1/targets`), with their labels, health and
    /// last error.
    pub fn targets(&self) -> Vec<Value> {
        self.api_data("/api/v1/targets")["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The rule groups as loaded and last evaluated (`/api/v1/rules`).
    pub fn rule_groups(&self) -> Vec<Value> {
        self.api_data("/api/v1/rules")["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn api_data(&self, path: &str) -> Value {
        try_get(self.addr, path)
            .ok()
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .map(|json| json["data"].clone())
            .unwrap_or(Value::Null)
    }

    /// The targets and the end of Prometheus's log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let targets: Vec<String> = self
            .targets()
            .iter()
            .map(|t| {
                format!(
                    "  {} {} health={} lastError={}",
                    t["labels"]["job"], t["labels"]["instance"], t["health"], t["lastError"]
                )
            })
            .collect();
        format!(
            "prometheus targets:\n{}\nprometheus log (last 20 lines):\n{}",
            targets.join("\n"),
            self.guard.stderr_tail(20)
        )
    }
}

/// The configuration file: every job scraped every second (timeout one
/// second), rules evaluated every second.
fn config_text(jobs: &[ScrapeJob], rule_files: &[PathBuf]) -> String {
    let mut text = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
    );
    if !rule_files.is_empty() {
        text.push_str("rule_files:\n");
        for file in rule_files {
            text.push_str(&format!("  - '{}'\n", file.display()));
        }
    }
    text.push_str("scrape_configs:\n");
    for job in jobs {
        let targets: Vec<String> = job.targets.iter().map(|t| format!("'{t}'")).collect();
        text.push_str(&format!(
            "  - job_name: '{}'\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
             static_configs:\n      - targets: [{}]\n",
            job.name,
            targets.join(", ")
        ));
    }
    text
}

/// `s` percent-encoded for a query string (everything but RFC 3986's
/// unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// True if some series of an instant-query result carries all of `labels`.
pub fn has_series(result: &[Value], labels: &[(&str, &str)]) -> bool {
    result
        .iter()
        .any(|s| labels.iter().all(|(k, v)| s["metric"][*k] == *v))
}

/// The value (as Prometheus writes it) of the first series whose labels
/// include all of `labels`.
pub fn value_of(result: &[Value], labels: &[(&str, &str)]) -> Option<String> {
    result
        .iter()
        .find(|s| labels.iter().all(|(k, v)| s["metric"][*k] == *v))
        .and_then(|s| s["value"][1].as_str().map(str::to_string))
}

/// A result on one line per series, `{labels} value`, for messages.
pub fn show(result: &[Value]) -> String {
    if result.is_empty() {
        return "(empty)".to_string();
    }
    let lines: Vec<String> = result
        .iter()
        .map(|s| format!("  {} {}", s["metric"], s["value"][1]))
        .collect();
    lines.join("\n")
}

/// Reads a dashboard (JSON) from a path relative to the workspace root.
pub fn read_dashboard(relative: &str) -> Value {
    let path = crate::workspace_root().join(relative);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{relative}: bad JSON: {e}"))
}

/// Every panel of a dashboard's `panels` list, rows' nested panels
/// included, depth first.
pub fn dashboard_panels(list: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        out.push(panel);
        out.extend(dashboard_panels(&panel["panels"]));
    }
    out
}

/// The dashboard's own variables (`templating.list[].name`).
pub fn variable_names(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

/// One query of a dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardQuery {
    /// A name usable as a recording rule's: `dashboard:panel_<id>_<refId>`
    /// or `dashboard:variable_<name>`.
    pub record: String,
    /// Where it comes from: `panel 3 "Error ratio" query A`, or
    /// `variable $service (label_values(selector, label))`.
    pub what: String,
    /// The expression as written (`None` if the query has none); for a
    /// variable, the series selector of its `label_values(...)`.
    pub expr: Option<String>,
    /// For a variable: the label whose values it lists.
    pub label: Option<String>,
}

/// Every panel query (`targets[].expr`) of a dashboard, in panel order.
pub fn panel_queries(dashboard: &Value) -> Vec<DashboardQuery> {
    let mut queries = Vec::new();
    for panel in dashboard_panels(&dashboard["panels"]) {
        let id = &panel["id"];
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let reference = target["refId"].as_str().unwrap_or("?");
            queries.push(DashboardQuery {
                record: format!("dashboard:panel_{id}_{reference}"),
                what: format!("panel {id} {title:?} query {reference}"),
                expr: target["expr"].as_str().map(str::to_string),
                label: None,
            });
        }
    }
    queries
}

/// The query variables' selectors: `label_values(<series selector>,
/// <label>)` gives the selector (an expression too) and the label.
pub fn variable_queries(dashboard: &Value) -> Vec<DashboardQuery> {
    let mut queries = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        let parts = variable["query"]
            .as_str()
            .and_then(|q| q.strip_prefix("label_values("))
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','));
        queries.push(DashboardQuery {
            record: format!("dashboard:variable_{name}"),
            what: format!("variable ${name} (label_values(selector, label))"),
            expr: parts.map(|(selector, _)| selector.to_string()),
            label: parts.map(|(_, label)| label.trim().to_string()),
        });
    }
    queries
}

/// `expr` with Grafana's variables replaced by concrete values: the interval
/// variables (`$__rate_interval`, `$__interval`) by `rate_interval`,
/// `$__range` by `1h`, a dashboard variable by `.*`, which must stand inside
/// a `=~"..."` or `!~"..."` matcher (the All value is `.*`; anywhere else a
/// multi-value selection would not be valid PromQL).
pub fn concrete(expr: &str, variables: &[String], rate_interval: &str) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(dollar) = rest.find('$') {
        let before = &expr[..expr.len() - rest.len() + dollar];
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {expr:?}"))?;
            let name = braced[..end].split(':').next().unwrap_or_default();
            (name, end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match name {
            "__rate_interval" | "__interval" => out.push_str(rate_interval),
            "__range" => out.push_str("1h"),
            _ if variables.iter().any(|v| v == name) => {
                let in_string = before.matches('"').count() % 2 == 1;
                let quote = before.rfind('"').unwrap_or(0);
                let matcher = before[..quote].trim_end();
                if !(in_string && (matcher.ends_with("=~") || matcher.ends_with("!~"))) {
                    return Err(format!(
                        "${name} outside a =~\"...\" matcher in {expr:?}: its All value .* and \
                         multi-value selections only work in a regex matcher"
                    ));
                }
                out.push_str(".*");
            }
            _ => return Err(format!("unknown variable ${name} in {expr:?}")),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The absolute path of a file of the workspace (a rules file for
/// [`Prometheus::start`]), which must exist.
pub fn workspace_file(relative: &str) -> PathBuf {
    let path = crate::workspace_root().join(relative);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}
