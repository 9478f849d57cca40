//! The Kubernetes manifests (`manifests/`) agree with the code.
//!
//! Renders `manifests/` and `manifests/variants/privileged` with
//! `kubectl kustomize`, exactly what `kubectl apply -k` would send, parses
//! every object into the k8s-openapi types (unknown kinds such as PodMonitor
//! and PrometheusRule as JSON values), and checks them against the code:
//!
//! 1. the ClusterRole grants exactly [`API_ACCESS`] (no wildcard, no write
//!    verb, one rule per group and resource), bound to the DaemonSet's
//!    ServiceAccount in the DaemonSet's namespace;
//! 2. the DaemonSet runs in the host PID namespace, gets `NODE_NAME` from the
//!    downward API, sets only variables `tracer run` reads, probes `/healthz`
//!    and `/readyz` on the port the metrics address listens on by default
//!    (read from [`tracer::cli`]), mounts every [`HOST_PATHS`] entry, sets
//!    resources, tolerates every taint, and is unprivileged with the
//!    capabilities the loader checks for (privileged in the variant);
//! 3. the Service and the PodMonitor select the DaemonSet's pods and name its
//!    `metrics` port;
//! 4. the Grafana dashboard ConfigMap and a PrometheusRule are deployed, and
//!    the plain Prometheus scrape config is not (it is not a Kubernetes
//!    object) but targets the same pods.
//!
//! Unprivileged. Needs `kubectl` (its built-in kustomize) on PATH: without it
//! the tests are skipped, or fail under `CI=true`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::Resource;
use serde_json::Value;
use tracer::metadata::kubernetes::API_ACCESS;
use tracer::metadata::HOST_PATHS;

/// Verbs that change cluster state or widen privileges: never granted.
const WRITE_VERBS: &[&str] = &[
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "escalate",
    "bind",
    "impersonate",
];

/// What `loader::check_capabilities` requires when CAP_SYS_ADMIN is absent
/// (Kubernetes spells capabilities without the `CAP_` prefix).
const REQUIRED_CAPABILITIES: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// The label the Service and PodMonitor select on.
const NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "tracer");

/// Where the manifests live: the workspace root.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tracer crate lives one level below the workspace root")
        .to_path_buf()
}

/// The objects one `kubectl kustomize` run produced, as JSON values.
struct Rendered {
    dir: &'static str,
    docs: Vec<Value>,
}

impl Rendered {
    /// Runs `kubectl kustomize DIR` from the workspace root. `None` when
    /// kubectl is not installed (outside CI).
    fn kustomize(dir: &'static str) -> Option<Self> {
        let output = match Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .current_dir(workspace_root())
            .output()
        {
            Ok(output) => output,
            Err(e) => {
                let why = format!("cannot run kubectl ({e}): the manifests are not checked");
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("skipped: {why}");
                return None;
            }
        };
        assert!(
            output.status.success(),
            "`kubectl kustomize {dir}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("kustomize prints UTF-8");
        Some(Self {
            dir,
            docs: split_documents(&text)
                .iter()
                .map(|doc| {
                    serde_yaml::from_str(doc).unwrap_or_else(|e| {
                        panic!("`kubectl kustomize {dir}` printed invalid YAML ({e}):\n{doc}")
                    })
                })
                .collect(),
        })
    }

    /// Every object of `api_version` and `kind`.
    fn values(&self, api_version: &str, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|doc| doc["apiVersion"] == api_version && doc["kind"] == kind)
            .collect()
    }

    /// Every object of type `T`, deserialised into it.
    fn all<T: Resource + DeserializeOwned>(&self) -> Vec<T> {
        self.values(T::API_VERSION, T::KIND)
            .into_iter()
            .map(|doc| {
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
                    panic!(
                        "{} {}/{} in `{}` does not parse as a {}: {e}",
                        T::KIND,
                        doc["metadata"]["namespace"].as_str().unwrap_or("-"),
                        doc["metadata"]["name"].as_str().unwrap_or("-"),
                        self.dir,
                        T::KIND
                    )
                })
            })
            .collect()
    }

    /// The one object of type `T`.
    fn one<T: Resource + DeserializeOwned>(&self) -> T {
        let mut all = self.all::<T>();
        assert_eq!(
            all.len(),
            1,
            "`kubectl kustomize {}` must produce exactly one {} {}",
            self.dir,
            T::API_VERSION,
            T::KIND
        );
        all.remove(0)
    }
}

/// Splits a multi-document YAML stream on its `---` lines. A `---` inside a
/// block scalar (the dashboard JSON) is indented, so it never matches.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|doc| !doc.trim().is_empty());
    docs
}

/// `manifests/`, what `kubectl apply -k manifests/` deploys.
fn base() -> Option<&'static Rendered> {
    static RENDERED: OnceLock<Option<Rendered>> = OnceLock::new();
    RENDERED
        .get_or_init(|| Rendered::kustomize("manifests"))
        .as_ref()
}

/// `manifests/variants/privileged`.
fn privileged() -> Option<&'static Rendered> {
    static RENDERED: OnceLock<Option<Rendered>> = OnceLock::new();
    RENDERED
        .get_or_init(|| Rendered::kustomize("manifests/variants/privileged"))
        .as_ref()
}

/// The port `tracer run` serves /metrics, /healthz and /readyz on when
/// TRACER_METRICS_ADDR and --metrics-addr are not given.
fn default_metrics_port() -> u16 {
    if std::env::var_os("TRACER_METRICS_ADDR").is_some() {
        // clap would read the variable: take the declared default instead.
        let command = tracer::cli::Cli::command();
        let run = command.find_subcommand("run").expect("`tracer run` exists");
        let arg = run
            .get_arguments()
            .find(|arg| arg.get_env() == Some(OsStr::new("TRACER_METRICS_ADDR")))
            .expect("`tracer run` reads TRACER_METRICS_ADDR");
        let default = arg
            .get_default_values()
            .first()
            .expect("--metrics-addr has a default")
            .to_str()
            .expect("the default address is UTF-8");
        return default
            .parse::<SocketAddr>()
            .expect("the default metrics address parses")
            .port();
    }
    let cli = tracer::cli::Cli::try_parse_from(["tracer", "run"])
        .expect("`tracer run` without flags parses");
    match cli.command {
        tracer::cli::Command::Run(run) => run.metrics_addr.port(),
        other => panic!("`tracer run` parsed as {other:?}"),
    }
}

/// The DaemonSet's pod spec.
fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("the DaemonSet has a pod template with a spec")
}

/// The labels of the DaemonSet's pods.
fn pod_labels(ds: &DaemonSet) -> BTreeMap<String, String> {
    ds.spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|meta| meta.labels.clone())
        .expect("the DaemonSet's pod template has labels")
}

/// The tracer container (the DaemonSet runs exactly one).
fn container(ds: &DaemonSet) -> &Container {
    let containers = &pod_spec(ds).containers;
    assert_eq!(
        containers.len(),
        1,
        "the tracer pod runs one container, got {}",
        containers.len()
    );
    &containers[0]
}

/// The container port named `name`, if any.
fn named_port(container: &Container, name: &str) -> Option<i32> {
    container
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some(name))
        .map(|port| port.container_port)
}

/// A probe's or Service's port, resolved against the container's ports.
fn resolve_port(container: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(number) => *number,
        IntOrString::String(name) => named_port(container, name)
            .unwrap_or_else(|| panic!("port `{name}` is not a container port")),
    }
}

/// The value of a plain (non-downward-API) env var of the container.
fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|var| var.name == name)
        .and_then(|var| var.value.as_deref())
}

/// The port the tracer listens on in this container: TRACER_METRICS_ADDR if
/// the manifest sets it, else the CLI's default.
fn listen_port(container: &Container) -> i32 {
    match env_value(container, "TRACER_METRICS_ADDR") {
        Some(addr) => addr
            .parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("TRACER_METRICS_ADDR={addr} is not an address: {e}"))
            .port()
            .into(),
        None => default_metrics_port().into(),
    }
}

/// Checks shared by the base and the privileged variant.
fn check_daemonset(rendered: &Rendered, ds: &DaemonSet) {
    let dir = rendered.dir;
    let spec = pod_spec(ds);
    let tracer = container(ds);

    // The selector picks the template's own pods.
    let labels = pod_labels(ds);
    let selector = ds
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.match_labels.clone())
        .expect("the DaemonSet selects on matchLabels");
    for (key, value) in &selector {
        assert_eq!(
            labels.get(key),
            Some(value),
            "{dir}: the DaemonSet's selector {key}={value} does not match its pod template"
        );
    }
    for (key, value) in [
        NAME_LABEL,
        ("app.kubernetes.io/component", "node-agent"),
        ("app.kubernetes.io/part-of", "tracer"),
    ] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "{dir}: the tracer pods must carry the label {key}={value}"
        );
    }

    assert_eq!(
        spec.host_pid,
        Some(true),
        "{dir}: hostPID must be true: /proc must list the node's processes"
    );
    assert_ne!(
        spec.host_network,
        Some(true),
        "{dir}: the tracer needs no host network"
    );

    // NODE_NAME from the downward API.
    let node_name = tracer
        .env
        .iter()
        .flatten()
        .find(|var| var.name == "NODE_NAME")
        .unwrap_or_else(|| panic!("{dir}: the container must set NODE_NAME"));
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|from| from.field_ref.as_ref())
        .map(|field| field.field_path.as_str());
    assert_eq!(
        field,
        Some("spec.nodeName"),
        "{dir}: NODE_NAME must come from the downward API (fieldRef spec.nodeName)"
    );
    assert!(
        node_name.value.is_none(),
        "{dir}: NODE_NAME must not also have a fixed value"
    );
    assert_eq!(
        env_value(tracer, "TRACER_LOG_FORMAT"),
        Some("json"),
        "{dir}: in a cluster the tracer logs JSON (TRACER_LOG_FORMAT=json)"
    );
    check_tracer_env(dir, tracer);

    // The metrics port and the probes.
    let port = listen_port(tracer);
    assert_eq!(
        named_port(tracer, "metrics"),
        Some(port),
        "{dir}: the container port `metrics` must be {port}, where the tracer listens"
    );
    for (probe, kind, path) in [
        (&tracer.liveness_probe, "liveness", "/healthz"),
        (&tracer.readiness_probe, "readiness", "/readyz"),
        (&tracer.startup_probe, "startup", "/healthz"),
    ] {
        let Some(probe) = probe else {
            assert!(
                kind == "startup",
                "{dir}: the container needs a {kind} probe"
            );
            continue;
        };
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("{dir}: the {kind} probe must be an httpGet"));
        assert_eq!(
            get.path.as_deref(),
            Some(path),
            "{dir}: the {kind} probe must get {path}"
        );
        assert_eq!(
            resolve_port(tracer, &get.port),
            port,
            "{dir}: the {kind} probe must use the metrics port {port}"
        );
    }

    // Host paths: /proc through hostPID, the rest as read-only hostPath mounts
    // at the same path.
    let mounts = tracer.volume_mounts.as_deref().unwrap_or_default();
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    assert!(
        !mounts
            .iter()
            .any(|m| m.mount_path == "/proc" || m.mount_path.starts_with("/proc/")),
        "{dir}: nothing can be mounted over /proc; hostPID covers it"
    );
    for path in HOST_PATHS {
        if *path == "/proc" {
            // Checked above: with hostPID the container's procfs is the host's.
            continue;
        }
        let mount = mounts
            .iter()
            .find(|m| m.mount_path == *path)
            .unwrap_or_else(|| panic!("{dir}: host path {path} (HOST_PATHS) is not mounted"));
        assert_eq!(
            mount.read_only,
            Some(true),
            "{dir}: host path {path} must be mounted read-only: the tracer only reads it"
        );
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("{dir}: volume `{}` is not defined", mount.name));
        let host_path = volume
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("{dir}: volume `{}` must be a hostPath", volume.name));
        assert_eq!(
            host_path.path, *path,
            "{dir}: {path} must be backed by the host's {path}"
        );
    }

    // Every taint tolerated.
    assert!(
        spec.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists")
                && t.key.as_deref().unwrap_or_default().is_empty()
                && t.effect.as_deref().unwrap_or_default().is_empty()
        }),
        "{dir}: the tracer must tolerate every taint (operator: Exists, no key, no effect)"
    );

    // Resources: requests for scheduling, a memory limit, no CPU limit.
    let resources = tracer
        .resources
        .as_ref()
        .unwrap_or_else(|| panic!("{dir}: the container must set resources"));
    let requests = resources.requests.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    for name in ["cpu", "memory"] {
        assert!(
            requests.contains_key(name),
            "{dir}: resources.requests.{name} must be set"
        );
    }
    assert!(
        limits.contains_key("memory"),
        "{dir}: resources.limits.memory must be set"
    );
    assert!(
        !limits.contains_key("cpu"),
        "{dir}: no CPU limit: throttling stalls the ring reader and loses events"
    );

    // The security context: what the API server accepts.
    let security = tracer
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{dir}: the container must set a securityContext"));
    let added: BTreeSet<&str> = security
        .capabilities
        .as_ref()
        .and_then(|caps| caps.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if security.allow_privilege_escalation == Some(false) {
        assert_ne!(
            security.privileged,
            Some(true),
            "{dir}: the API server rejects privileged with allowPrivilegeEscalation: false"
        );
        assert!(
            !added.contains("CAP_SYS_ADMIN"),
            "{dir}: the API server rejects CAP_SYS_ADMIN with allowPrivilegeEscalation: false"
        );
    }

    // The ServiceAccount the pods use, and its token.
    let account = spec
        .service_account_name
        .as_deref()
        .unwrap_or_else(|| panic!("{dir}: the DaemonSet must name its ServiceAccount"));
    let namespace = ds
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_else(|| panic!("{dir}: the DaemonSet must have a namespace"));
    assert!(
        rendered.all::<ServiceAccount>().iter().any(|sa| {
            sa.metadata.name.as_deref() == Some(account)
                && sa.metadata.namespace.as_deref() == Some(namespace)
                && sa.automount_service_account_token != Some(false)
        }),
        "{dir}: ServiceAccount {namespace}/{account} must be deployed with its token automounted"
    );
    assert_ne!(
        spec.automount_service_account_token,
        Some(false),
        "{dir}: the tracer uses the in-cluster config: keep the token mounted"
    );
    assert!(
        rendered
            .all::<Namespace>()
            .iter()
            .any(|ns| ns.metadata.name.as_deref() == Some(namespace)),
        "{dir}: the namespace {namespace} must be deployed"
    );
}

/// Every TRACER_* variable the manifest sets, and NODE_NAME, is one
/// `tracer run` reads; a fixed value must be one it accepts.
fn check_tracer_env(dir: &str, container: &Container) {
    let command = tracer::cli::Cli::command();
    let run = command.find_subcommand("run").expect("`tracer run` exists");
    for var in container.env.iter().flatten() {
        if !(var.name.starts_with("TRACER_") || var.name == "NODE_NAME") {
            continue;
        }
        let arg = run
            .get_arguments()
            .find(|arg| arg.get_env() == Some(OsStr::new(&var.name)))
            .unwrap_or_else(|| panic!("{dir}: `tracer run` does not read {}", var.name));
        let Some(value) = var.value.as_deref() else {
            // From the downward API: known only on the node.
            continue;
        };
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("{dir}: {} has no --flag to test it with", var.name));
        let flag = format!("--{long}");
        let mut argv = vec!["tracer", "run", flag.as_str()];
        if arg.get_action().takes_values() {
            argv.push(value);
        }
        if let Err(e) = tracer::cli::Cli::try_parse_from(argv) {
            panic!(
                "{dir}: {}={value} is rejected by `tracer run`: {e}",
                var.name
            );
        }
    }
}

#[test]
fn cluster_role_grants_exactly_api_access() {
    let Some(base) = base() else { return };
    let role = base.one::<ClusterRole>();
    assert!(
        role.aggregation_rule.is_none(),
        "the ClusterRole must not aggregate other roles"
    );
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.non_resource_urls
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "the ClusterRole grants nonResourceURLs: {rule:?}"
        );
        assert!(
            rule.resource_names
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "the tracer reads objects of any name: no resourceNames in {rule:?}"
        );
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        assert!(
            groups.len() == 1 && resources.len() == 1,
            "one rule per (API group, resource), so each has its own comment: {rule:?}"
        );
        for word in groups.iter().chain(resources).chain(&rule.verbs) {
            assert!(
                !word.contains('*'),
                "no wildcards in the ClusterRole: {rule:?}"
            );
        }
        for verb in &rule.verbs {
            assert!(
                !WRITE_VERBS.contains(&verb.as_str()),
                "the tracer only reads: verb `{verb}` in {rule:?}"
            );
        }
        let key = (groups[0].clone(), resources[0].clone());
        let verbs: BTreeSet<String> = rule.verbs.iter().cloned().collect();
        assert!(
            granted.insert(key.clone(), verbs).is_none(),
            "two rules for {key:?}: merge them"
        );
    }
    let expected: BTreeMap<(String, String), BTreeSet<String>> = API_ACCESS
        .iter()
        .map(|access| {
            (
                (access.group.to_string(), access.resource.to_string()),
                access.verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        granted, expected,
        "manifests/base/clusterrole.yaml must grant exactly \
         tracer::metadata::kubernetes::API_ACCESS (left: the ClusterRole, right: the code)"
    );
}

#[test]
fn the_binding_gives_the_role_to_the_daemonsets_service_account() {
    let Some(base) = base() else { return };
    let role = base.one::<ClusterRole>();
    let ds = base.one::<DaemonSet>();
    let account = pod_spec(&ds)
        .service_account_name
        .clone()
        .expect("the DaemonSet names its ServiceAccount");
    let namespace = ds
        .metadata
        .namespace
        .clone()
        .expect("the DaemonSet has a namespace");
    let role_name = role.metadata.name.expect("the ClusterRole has a name");
    let bound = base.all::<ClusterRoleBinding>().iter().any(|binding| {
        binding.role_ref.kind == "ClusterRole"
            && binding.role_ref.name == role_name
            && binding.subjects.iter().flatten().any(|subject| {
                subject.kind == "ServiceAccount"
                    && subject.name == account
                    && subject.namespace.as_deref() == Some(namespace.as_str())
            })
    });
    assert!(
        bound,
        "a ClusterRoleBinding must bind ClusterRole {role_name} to ServiceAccount \
         {namespace}/{account}, the one the DaemonSet runs as"
    );
}

#[test]
fn the_daemonset_matches_the_code() {
    let Some(base) = base() else { return };
    let ds = base.one::<DaemonSet>();
    check_daemonset(base, &ds);
    let security = container(&ds)
        .security_context
        .as_ref()
        .expect("the container sets a securityContext");
    assert_ne!(
        security.privileged,
        Some(true),
        "manifests/: the base DaemonSet must not be privileged (see variants/privileged)"
    );
    let caps = security
        .capabilities
        .as_ref()
        .expect("manifests/: the container must set capabilities");
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    for cap in REQUIRED_CAPABILITIES {
        assert!(
            added.contains(cap),
            "manifests/: capability {cap} is missing (loader::check_capabilities needs it)"
        );
    }
    for admin in ["SYS_ADMIN", "CAP_SYS_ADMIN"] {
        assert!(
            !added.contains(admin),
            "manifests/: no CAP_SYS_ADMIN: BPF and PERFMON cover it"
        );
    }
    assert!(
        caps.drop.iter().flatten().any(|cap| cap == "ALL"),
        "manifests/: drop ALL capabilities, then add back the ones needed"
    );
}

#[test]
fn the_privileged_variant_is_privileged() {
    let Some(variant) = privileged() else { return };
    let ds = variant.one::<DaemonSet>();
    check_daemonset(variant, &ds);
    let security = container(&ds)
        .security_context
        .as_ref()
        .expect("the container sets a securityContext");
    assert_eq!(
        security.privileged,
        Some(true),
        "manifests/variants/privileged must make the container privileged"
    );
    // Everything but the security context is the base's.
    let Some(base) = base() else { return };
    let base_ds = base.one::<DaemonSet>();
    let mut base_container = container(&base_ds).clone();
    let mut variant_container = container(&ds).clone();
    base_container.security_context = None;
    variant_container.security_context = None;
    assert_eq!(
        base_container, variant_container,
        "the privileged variant must differ from the base only in the security context"
    );
}

#[test]
fn the_service_and_podmonitor_select_the_tracer_pods() {
    let Some(base) = base() else { return };
    let ds = base.one::<DaemonSet>();
    let labels = pod_labels(&ds);
    let tracer = container(&ds);
    let metrics_port = named_port(tracer, "metrics").expect("the container has a `metrics` port");
    let namespace = ds
        .metadata
        .namespace
        .clone()
        .expect("the DaemonSet has a namespace");

    // The Service.
    let service = base.one::<Service>();
    assert_eq!(
        service.metadata.namespace.as_deref(),
        Some(namespace.as_str()),
        "the Service must be in the tracer's namespace"
    );
    let spec = service.spec.expect("the Service has a spec");
    let selector = spec.selector.unwrap_or_default();
    assert_eq!(
        selector.get(NAME_LABEL.0).map(String::as_str),
        Some(NAME_LABEL.1),
        "the Service must select on {}={}",
        NAME_LABEL.0,
        NAME_LABEL.1
    );
    for (key, value) in &selector {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the Service selects {key}={value}, which the tracer pods do not carry"
        );
    }
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some("metrics"))
        .expect("the Service must have a port named `metrics`");
    let target = port
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(port.port));
    assert_eq!(
        resolve_port(tracer, &target),
        metrics_port,
        "the Service's `metrics` port must lead to the container's `metrics` port"
    );

    // The PodMonitor.
    let monitors = base.values("monitoring.coreos.com/v1", "PodMonitor");
    assert_eq!(monitors.len(), 1, "exactly one PodMonitor");
    let monitor = monitors[0];
    assert!(
        monitor["metadata"]["name"] == "tracer" && monitor["spec"]["jobLabel"].is_null(),
        "the PodMonitor's job is `tracer/tracer`, as the TracerDown alert expects: \
         keep its name `tracer` and no jobLabel"
    );
    let match_labels = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("the PodMonitor selects on matchLabels");
    assert_eq!(
        match_labels.get(NAME_LABEL.0).and_then(Value::as_str),
        Some(NAME_LABEL.1),
        "the PodMonitor must select on {}={}",
        NAME_LABEL.0,
        NAME_LABEL.1
    );
    for (key, value) in match_labels {
        assert_eq!(
            labels.get(key).map(String::as_str),
            value.as_str(),
            "the PodMonitor selects {key}={value}, which the tracer pods do not carry"
        );
    }
    let in_namespace = monitor["metadata"]["namespace"] == namespace.as_str();
    let names_namespace = monitor["spec"]["namespaceSelector"]["matchNames"]
        .as_array()
        .is_some_and(|names| names.iter().any(|n| n == namespace.as_str()));
    assert!(
        in_namespace || names_namespace,
        "the PodMonitor must look in namespace {namespace}"
    );
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("the PodMonitor has podMetricsEndpoints");
    assert!(!endpoints.is_empty(), "the PodMonitor has no endpoints");
    for endpoint in endpoints {
        assert_eq!(
            endpoint["port"], "metrics",
            "the PodMonitor must scrape the port named `metrics`"
        );
        assert_eq!(
            endpoint["interval"], "15s",
            "the PodMonitor scrapes every 15 s"
        );
    }
}

#[test]
fn the_dashboard_and_rules_are_deployed_and_the_scrape_config_is_not() {
    let Some(base) = base() else { return };
    let ds = base.one::<DaemonSet>();
    let namespace = ds
        .metadata
        .namespace
        .clone()
        .expect("the DaemonSet has a namespace");

    // Every namespaced object lands in the tracer's namespace.
    for doc in &base.docs {
        if let Some(ns) = doc["metadata"]["namespace"].as_str() {
            assert_eq!(
                ns, namespace,
                "{} {} is in namespace {ns}, not {namespace}",
                doc["kind"], doc["metadata"]["name"]
            );
        }
    }

    // The Grafana dashboard, for the sidecar.
    let dashboards: Vec<ConfigMap> = base
        .all::<ConfigMap>()
        .into_iter()
        .filter(|cm| {
            cm.metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get("grafana_dashboard"))
                .map(String::as_str)
                == Some("1")
        })
        .collect();
    assert_eq!(
        dashboards.len(),
        1,
        "exactly one ConfigMap labelled grafana_dashboard=1 (the dashboard)"
    );
    let dashboard = &dashboards[0];
    assert_eq!(
        dashboard.metadata.name.as_deref(),
        Some("tracer-dashboard"),
        "the dashboard ConfigMap keeps a fixed name (disableNameSuffixHash)"
    );
    let data = dashboard.data.clone().unwrap_or_default();
    let json = data
        .get("tracer-dashboard.json")
        .expect("the dashboard ConfigMap holds tracer-dashboard.json");
    let parsed: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("grafana/tracer-dashboard.json is not valid JSON: {e}"));
    assert!(parsed.is_object(), "the dashboard JSON is an object");

    // The alerting rules.
    let rules = base.values("monitoring.coreos.com/v1", "PrometheusRule");
    assert!(!rules.is_empty(), "a PrometheusRule must be deployed");
    for rule in rules {
        assert!(
            rule["spec"]["groups"].is_array(),
            "PrometheusRule {} has no spec.groups",
            rule["metadata"]["name"]
        );
    }

    // The plain Prometheus scrape config is not a Kubernetes object...
    assert!(
        base.docs
            .iter()
            .all(|doc| doc.get("scrape_configs").is_none()),
        "monitoring/prometheus-scrape-config.yaml must not be a kustomize resource"
    );
    // ...but it scrapes the same pods and port.
    let path = workspace_root().join("manifests/monitoring/prometheus-scrape-config.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let config: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    let jobs = config["scrape_configs"]
        .as_array()
        .expect("the scrape config is a `scrape_configs:` list");
    let job = jobs
        .iter()
        .find(|job| {
            job["kubernetes_sd_configs"]
                .as_array()
                .is_some_and(|sd| sd.iter().any(|sd| sd["role"] == "pod"))
        })
        .expect("a scrape job with kubernetes_sd_configs role pod");
    assert_eq!(
        job["scrape_interval"], "15s",
        "the scrape job runs every 15 s"
    );
    // The TracerDown alert (monitoring/tracer-rules.yml) matches
    // up{job=~"(.+/)?tracer"}: job "tracer" here, "tracer/tracer" (namespace/
    // name) for the PodMonitor.
    assert_eq!(
        job["job_name"], "tracer",
        "the scrape job is named `tracer`, as the TracerDown alert expects"
    );
    let keeps: Vec<(String, String)> = job["relabel_configs"]
        .as_array()
        .expect("the scrape job has relabel_configs")
        .iter()
        .filter(|rule| rule["action"] == "keep")
        .map(|rule| {
            let sources = rule["source_labels"]
                .as_array()
                .map(|labels| {
                    labels
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(";")
                })
                .unwrap_or_default();
            (
                sources,
                rule["regex"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for wanted in [
        ("__meta_kubernetes_namespace".to_string(), namespace.clone()),
        (
            "__meta_kubernetes_pod_label_app_kubernetes_io_name".to_string(),
            NAME_LABEL.1.to_string(),
        ),
        (
            "__meta_kubernetes_pod_container_port_name".to_string(),
            "metrics".to_string(),
        ),
    ] {
        assert!(
            keeps.contains(&wanted),
            "the scrape job must keep only {}={} (keep rules: {keeps:?})",
            wanted.0,
            wanted.1
        );
    }
}
