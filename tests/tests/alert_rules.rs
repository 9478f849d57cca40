//! The monitoring manifests, checked with Prometheus's own tools (`promtool`
//! from Debian's prometheus package):
//!
//! - `manifests/monitoring/tracer-rules.yml` loads (`promtool check rules`,
//!   every rule counted) and passes its unit tests
//!   (`promtool test rules tracer-rules.test.yml`);
//! - every alert there is complete (`for`, severity, summary, description)
//!   and has a unit test where it fires and one where it stays quiet;
//! - the PrometheusRule (`prometheusrule.yaml`) carries exactly the same
//!   groups, so the Operator's Prometheus and a plain one alert alike;
//! - every expression of the Grafana dashboard (`manifests/grafana/
//!   tracer-dashboard.json`, rows' nested panels included) and every query
//!   variable's selector parses with Prometheus's parser. promtool has no
//!   "parse this expression" command, so they become the recording rules of
//!   a generated rules file that `promtool check rules` reads; template
//!   variables are replaced first (`$__rate_interval` by `1m`, a dashboard
//!   variable by `.*`, which only makes sense inside `=~"..."`, so any other
//!   use fails the test) by `tracer_e2e::prom::concrete`, which
//!   `dashboard_live.rs` shares to run them against a live Prometheus.
//!
//! Nothing here loads eBPF: no root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};

use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;
use tracer_e2e::prom::{
    concrete, dashboard_panels, panel_queries, read_dashboard, variable_names, variable_queries,
    DashboardQuery, DASHBOARD, RULES,
};
use tracer_e2e::{require_tool, workspace_root, TestDir};

const RULE_TESTS: &str = "manifests/monitoring/tracer-rules.test.yml";
const PROMETHEUS_RULE: &str = "manifests/monitoring/prometheusrule.yaml";

/// What `$__rate_interval` (and `$__interval`) become: any valid duration
/// will do for parsing.
const RATE_INTERVAL: &str = "1m";

const GROUPS: [&str; 2] = ["tracer-services", "tracer-self"];

/// Runs promtool from the workspace root.
fn promtool(args: &[&str]) -> Output {
    let tool = require_tool("promtool");
    Command::new(&tool)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()))
}

fn stdout_and_stderr(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Yaml {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: bad YAML: {e}"))
}

fn dashboard() -> Json {
    read_dashboard(DASHBOARD)
}

fn seq<'a>(value: &'a Yaml, what: &str) -> &'a Vec<Yaml> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} should be a list, got {value:?}"))
}

fn str_of<'a>(value: &'a Yaml, key: &str, what: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{key}` should be a string, got {:?}", value[key]))
}

/// The alerting rules of the plain file, in order.
fn alert_rules() -> Vec<Yaml> {
    let rules = yaml(RULES);
    seq(&rules["groups"], "groups")
        .iter()
        .flat_map(|g| seq(&g["rules"], "rules").iter().cloned())
        .collect()
}

#[test]
fn promtool_check_rules_accepts_every_rule() {
    let output = promtool(&["check", "rules", RULES]);
    let report = stdout_and_stderr(&output);
    assert!(
        output.status.success(),
        "promtool check rules {RULES} failed\n{report}"
    );
    let count = alert_rules().len();
    assert!(
        report.contains(&format!("SUCCESS: {count} rules found")),
        "promtool should have read all {count} rules of {RULES}\n{report}"
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let output = promtool(&["test", "rules", RULE_TESTS]);
    assert!(
        output.status.success(),
        "promtool test rules {RULE_TESTS} failed\n{}",
        stdout_and_stderr(&output)
    );
}

#[test]
fn every_alert_is_complete_and_unit_tested_both_ways() {
    let rules = yaml(RULES);
    let names: Vec<&str> = seq(&rules["groups"], "groups")
        .iter()
        .map(|g| str_of(g, "name", "group"))
        .collect();
    assert_eq!(names, GROUPS, "{RULES}: rule groups");

    // alert name -> (evaluations where it fires, evaluations where it must not)
    let mut tested: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let tests = yaml(RULE_TESTS);
    for test in seq(&tests["tests"], "tests") {
        let Some(evals) = test["alert_rule_test"].as_sequence() else {
            continue;
        };
        for eval in evals {
            let name = str_of(eval, "alertname", "alert_rule_test").to_string();
            let firing = eval["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty());
            let entry = tested.entry(name).or_default();
            if firing {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }

    let mut alerts = BTreeSet::new();
    for rule in alert_rules() {
        let name = str_of(&rule, "alert", "rule (recording rules do not belong here)");
        alerts.insert(name.to_string());
        for key in ["expr", "for"] {
            assert!(rule[key].as_str().is_some(), "{name}: no `{key}`");
        }
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{name}: no annotations.{key}"
            );
        }
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical" | "info")),
            "{name}: labels.severity is {severity:?}"
        );
        let (firing, quiet) = tested.get(name).copied().unwrap_or_default();
        assert!(
            firing > 0,
            "{name}: no unit test in {RULE_TESTS} where it fires"
        );
        assert!(
            quiet > 0,
            "{name}: no unit test in {RULE_TESTS} where it stays quiet"
        );
    }
    let unknown: Vec<_> = tested.keys().filter(|n| !alerts.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "{RULE_TESTS} tests alerts {RULES} lacks: {unknown:?}"
    );
}

#[test]
fn prometheus_rule_carries_exactly_the_plain_groups() {
    let object = yaml(PROMETHEUS_RULE);
    let plain = yaml(RULES);
    assert_eq!(
        object["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(object["kind"].as_str(), Some("PrometheusRule"));
    let metadata = &object["metadata"];
    assert_eq!(metadata["name"].as_str(), Some("tracer"));
    assert_eq!(metadata["namespace"].as_str(), Some("tracer"));
    for (key, value) in [
        ("app.kubernetes.io/name", "tracer"),
        ("app.kubernetes.io/part-of", "tracer"),
    ] {
        assert_eq!(
            metadata["labels"][key].as_str(),
            Some(value),
            "{PROMETHEUS_RULE}: metadata.labels.{key}"
        );
    }
    assert!(
        seq(&plain["groups"], "groups").len() == GROUPS.len(),
        "{RULES}: groups"
    );
    let (ours, theirs) = (&object["spec"]["groups"], &plain["groups"]);
    if ours != theirs {
        // Name the first rule that differs rather than dumping both files.
        let show = |v: &Yaml| serde_yaml::to_string(v).unwrap_or_default();
        let rules = |groups: &Yaml| -> Vec<Yaml> {
            groups
                .as_sequence()
                .map(|gs| {
                    gs.iter()
                        .flat_map(|g| {
                            let mut head = g.clone();
                            if let Some(map) = head.as_mapping_mut() {
                                map.remove("rules");
                            }
                            std::iter::once(head)
                                .chain(g["rules"].as_sequence().cloned().unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let (a, b) = (rules(ours), rules(theirs));
        let i = (0..a.len().max(b.len()))
            .find(|&i| a.get(i) != b.get(i))
            .unwrap_or(0);
        panic!(
            "{PROMETHEUS_RULE} spec.groups differs from the groups of {RULES} (edit both \
             together); first difference, item {i} (groups and their rules in order):\n\
             --- PrometheusRule:\n{}\n--- {RULES}:\n{}",
            a.get(i).map(show).unwrap_or_else(|| "(nothing)".into()),
            b.get(i).map(show).unwrap_or_else(|| "(nothing)".into()),
        );
    }
}

#[test]
fn concrete_replaces_variables_only_inside_regex_matchers() {
    let vars = ["namespace".to_string(), "node".to_string()];
    assert_eq!(
        concrete(
            r#"rate(x{a=~"$namespace", b!~"${node}"}[$__rate_interval])"#,
            &vars,
            RATE_INTERVAL
        ),
        Ok(r#"rate(x{a=~".*", b!~".*"}[1m])"#.to_string())
    );
    assert!(concrete(r#"x{a="$namespace"}"#, &vars, RATE_INTERVAL).is_err());
    assert!(concrete(r#"x{a=~"$nodes"}"#, &vars, RATE_INTERVAL).is_err());
    assert!(concrete("x[$namespace]", &vars, RATE_INTERVAL).is_err());
}

#[test]
fn every_dashboard_expression_parses_with_prometheus_parser() {
    let dashboard = dashboard();
    let variables = variable_names(&dashboard);
    // Panel queries, then the query variables' selectors
    // (`label_values(<series selector>, <label>)`: an expression too).
    let queries = panel_queries(&dashboard)
        .into_iter()
        .chain(variable_queries(&dashboard));

    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for DashboardQuery {
        record, what, expr, ..
    } in queries
    {
        match expr.map(|e| concrete(&e, &variables, RATE_INTERVAL)) {
            Some(Ok(expr)) => rules.push((record, what, expr)),
            Some(Err(e)) => errors.push(format!("{what}: {e}")),
            None => errors.push(format!("{what}: no expression")),
        }
    }
    assert!(errors.is_empty(), "{DASHBOARD}:\n{}", errors.join("\n"));
    let panel_queries = rules
        .iter()
        .filter(|(r, _, _)| r.starts_with("dashboard:panel"))
        .count();
    assert!(
        panel_queries >= 30,
        "{DASHBOARD}: only {panel_queries} panel queries found; are rows' nested panels read?"
    );

    let file = json!({
        "groups": [{
            "name": "dashboard-expressions",
            "rules": rules
                .iter()
                .map(|(record, _, expr)| json!({ "record": record, "expr": expr }))
                .collect::<Vec<_>>(),
        }]
    });
    let dir = TestDir::new("dashboard-exprs");
    let path = dir.write(
        "dashboard-rules.yml",
        serde_yaml::to_string(&file).expect("serialise the generated rules"),
    );
    let output = promtool(&["check", "rules", &path.to_string_lossy()]);
    let report = stdout_and_stderr(&output);
    let listing: Vec<String> = rules
        .iter()
        .map(|(record, what, expr)| format!("{record}: {what}\n    {expr}"))
        .collect();
    assert!(
        output.status.success()
            && report.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "Prometheus's parser rejects a dashboard expression\n{report}\nexpressions:\n{}",
        listing.join("\n")
    );
}

#[test]
fn dashboard_model_is_importable() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "tracer-red");
    assert_eq!(dashboard["title"], "Tracer: services (RED)");
    assert_eq!(dashboard["schemaVersion"], 39);
    let prometheus = json!({ "type": "prometheus", "uid": "${datasource}" });

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let by_name = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let datasource = by_name("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for (name, label) in [
        ("namespace", "service_namespace"),
        ("service", "service_name"),
        ("node", "k8s_node_name"),
    ] {
        let variable = by_name(name);
        assert_eq!(variable["type"], "query", "${name}");
        assert_eq!(variable["datasource"], prometheus, "${name}");
        assert_eq!(variable["multi"], true, "${name}");
        assert_eq!(variable["includeAll"], true, "${name}");
        // `.*` also matches series without the label: processes outside pods.
        assert_eq!(variable["allValue"], ".*", "${name}");
        let query = variable["query"].as_str().unwrap_or_default();
        assert!(
            query.starts_with("label_values(") && query.ends_with(&format!(", {label})")),
            "${name} should list the values of {label}: {query:?}"
        );
    }

    let all = dashboard_panels(&dashboard["panels"]);
    let mut ids = BTreeSet::new();
    let mut rows = 0;
    for panel in &all {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title:?}: no numeric id"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let (x, w) = (&panel["gridPos"]["x"], &panel["gridPos"]["w"]);
        let (x, w) = (x.as_u64().unwrap_or(99), w.as_u64().unwrap_or(99));
        assert!(
            x + w <= 24 && panel["gridPos"]["h"].as_u64().is_some(),
            "{title:?}: gridPos {} outside the 24 columns",
            panel["gridPos"]
        );
        if panel["type"] == "row" {
            rows += 1;
            continue;
        }
        assert!(!title.is_empty(), "panel {id}: no title");
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 40),
            "{title:?}: no description of what the numbers mean"
        );
        assert_eq!(panel["datasource"], prometheus, "{title:?}: datasource");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title:?}: no queries");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert_eq!(
                target["datasource"], prometheus,
                "{title:?}: query datasource"
            );
            assert!(
                refs.insert(target["refId"].as_str().unwrap_or_default()),
                "{title:?}: refId used twice"
            );
        }
    }
    assert_eq!(
        rows, 4,
        "rows: Services, Routes, Callers to callees, Tracer health"
    );
    // A nested panel means a collapsed row; the walk above covered it.
    assert!(all.len() > dashboard["panels"].as_array().map_or(0, Vec::len));

    // No data source uid anywhere but the variable (and Grafana's built-in
    // annotation source): the dashboard imports into any Grafana.
    fn uids<'a>(value: &'a Json, out: &mut BTreeSet<&'a str>) {
        match value {
            Json::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value.as_str()) {
                        ("uid", Some(uid)) => {
                            out.insert(uid);
                        }
                        _ => uids(value, out),
                    }
                }
            }
            Json::Array(list) => list.iter().for_each(|v| uids(v, out)),
            _ => {}
        }
    }
    let mut found = BTreeSet::new();
    uids(&dashboard, &mut found);
    let expected: BTreeSet<&str> = ["tracer-red", "${datasource}", "-- Grafana --"].into();
    assert_eq!(found, expected, "{DASHBOARD}: uids");
}
