//! A small OpenMetrics (and Prometheus text format) parser: enough to read the
//! daemon's `/metrics` and ask "what is the value of this series", with label
//! order irrelevant (`le` comes first on the daemon's bucket lines) and `le`
//! compared as a number (`1` == `1.0`).
//!
//! It is deliberately strict: a line it cannot parse fails the scrape, so a
//! malformed exposition is caught here as well as by the real Prometheus test.

use std::fmt::Write as _;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The label's value; an absent label reads as "" (Prometheus semantics).
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// True if every `(name, value)` of `filter` matches; `le` numerically.
    pub fn matches(&self, filter: &[(&str, &str)]) -> bool {
        filter.iter().all(|(name, want)| {
            let have = self.label(name);
            if *name == "le" {
                parse_value(have).is_some_and(|h| parse_value(want).is_some_and(|w| h == w))
            } else {
                have == *want
            }
        })
    }

    /// The sample as an exposition line, labels in their original order.
    pub fn line(&self) -> String {
        let mut s = self.name.clone();
        if !self.labels.is_empty() {
            s.push('{');
            for (i, (n, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(
                    s,
                    "{n}=\"{}\"",
                    v.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
            s.push('}');
        }
        let _ = write!(s, " {}", self.value);
        s
    }
}

/// A parsed `/metrics` body.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// True if the body ended with `# EOF` (required by OpenMetrics).
    pub has_eof: bool,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut scrape = Scrape::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if line == "# EOF" {
                scrape.has_eof = true;
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample =
                parse_sample(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?;
            scrape.samples.push(sample);
        }
        Ok(scrape)
    }

    /// Samples named `name` whose labels match `filter`.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(filter))
    }

    /// The sum over every matching series (0 when none match).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.series(name, filter).map(|s| s.value).sum()
    }

    /// [`Scrape::sum`] of a counter-like value, as an integer.
    pub fn count(&self, name: &str, filter: &[(&str, &str)]) -> u64 {
        let sum = self.sum(name, filter);
        assert!(
            sum >= 0.0 && sum.fract() == 0.0,
            "{name} {filter:?} is not a count: {sum}"
        );
        sum as u64
    }

    /// [`Scrape::count`] grouped by the value of `label`.
    pub fn count_by(
        &self,
        name: &str,
        filter: &[(&str, &str)],
        label: &str,
    ) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for sample in self.series(name, filter) {
            *counts.entry(sample.label(label).to_string()).or_default() += sample.value as u64;
        }
        counts
    }

    /// Every line whose metric name starts with `prefix` and whose labels
    /// match `filter`, for failure messages.
    pub fn lines(&self, prefix: &str, filter: &[(&str, &str)]) -> String {
        self.samples
            .iter()
            .filter(|s| s.name.starts_with(prefix) && s.matches(filter))
            .map(|s| s.line() + "\n")
            .collect()
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // Label name up to '='.
            let start = match chars.peek() {
                Some(&(_, '}')) => {
                    end = chars.next().map(|(i, _)| i).ok_or("unterminated labels")?;
                    break;
                }
                Some(&(i, _)) => i,
                None => return Err("unterminated labels".into()),
            };
            let eq = loop {
                match chars.next() {
                    Some((i, '=')) => break i,
                    Some(_) => {}
                    None => return Err("label without '='".into()),
                }
            };
            let label = after[start..eq].to_string();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label} value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("dangling escape".into()),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.push((label, value));
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    end = i;
                    break;
                }
                _ => return Err("expected ',' or '}' after a label".into()),
            }
        }
        rest = &after[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let raw = fields.next().ok_or("no value")?;
    let value = parse_value(raw).ok_or_else(|| format!("bad value {raw:?}"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP http_server_request_duration_seconds Duration.
# TYPE http_server_request_duration_seconds histogram
# UNIT http_server_request_duration_seconds seconds
http_server_request_duration_seconds_sum{service_name="nginx",http_request_method="GET",http_response_status_code="200",http_route="/a",error_type=""} 0.5
http_server_request_duration_seconds_count{service_name="nginx",http_request_method="GET",http_response_status_code="200",http_route="/a",error_type=""} 3
http_server_request_duration_seconds_bucket{le="0.1",service_name="nginx",http_request_method="GET",http_response_status_code="200",http_route="/a",error_type=""} 1
http_server_request_duration_seconds_bucket{le="1.0",service_name="nginx",http_request_method="GET",http_response_status_code="200",http_route="/a",error_type=""} 3
http_server_request_duration_seconds_bucket{le="+Inf",service_name="nginx",http_request_method="GET",http_response_status_code="200",http_route="/a",error_type=""} 3
http_server_request_duration_seconds_count{service_name="nginx",http_request_method="GET",http_response_status_code="503",http_route="/a",error_type="503"} 2
odd{v="a \"q\" \\ b,}"} 7
tracer_connections 4
# EOF
"#;

    #[test]
    fn parses_and_queries() {
        let s = Scrape::parse(TEXT).unwrap();
        assert!(s.has_eof);
        let c = "http_server_request_duration_seconds_count";
        assert_eq!(
            s.count(c, &[("service_name", "nginx"), ("http_route", "/a")]),
            5
        );
        assert_eq!(s.count(c, &[("error_type", "")]), 3);
        assert_eq!(s.count(c, &[("error_type", "503")]), 2);
        let b = "http_server_request_duration_seconds_bucket";
        assert_eq!(s.count(b, &[("le", "1")]), 3);
        assert_eq!(s.count(b, &[("le", "0.10")]), 1);
        assert_eq!(s.count(b, &[("le", "+Inf")]), 3);
        assert_eq!(s.count("tracer_connections", &[]), 4);
        assert_eq!(s.count("odd", &[("v", "a \"q\" \\ b,}")]), 7);
        assert_eq!(s.count("absent", &[]), 0);
        assert_eq!(s.count(c, &[("missing_label", "")]), 5);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Scrape::parse("metric{a=\"b\" 1\n").is_err());
        assert!(Scrape::parse("metric{a=b} 1\n").is_err());
        assert!(Scrape::parse("metric x\n").is_err());
    }
}
