//! The Kubernetes API server stand-in (`peers/kube_apiserver.py`): no real
//! kube-apiserver can run on the test machine, so the tracer's kube-rs
//! client talks to this one, which speaks the real wire protocol (lists,
//! paginated with `limit`/`continue`; chunked watches with bookmarks and 410
//! Expired; `PartialObjectMetadata` and `Table` content negotiation) over
//! plain HTTP on 127.0.0.1.
//!
//! A [`KubeApi`] starts the server, writes a kubeconfig pointing at it (give
//! the tracer `KUBECONFIG=<that file>`) and drives its control API: create,
//! replace and delete objects (each change a watch event, one global
//! resourceVersion like etcd's), simulate an outage, compact the history,
//! end watches, read the request log. The builders ([`pod`], [`replicaset`],
//! [`service`], ...) make objects shaped like the ones a real cluster holds.

use std::io::{self, BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cgroups::{random_container_id, random_uid, Qos};
use crate::net::{accepts, connect, free_port, read_response, Response};
use crate::peers::python;
use crate::process::{Guard, TestDir};
use crate::wait::{wait_until, START_TIMEOUT};

/// The API server stand-in, stopped on drop.
#[derive(Debug)]
pub struct KubeApi {
    guard: Guard,
    port: u16,
    kubeconfig: PathBuf,
    /// kubectl's discovery cache, kept in the test directory rather than
    /// `~/.kube/cache` (ports are reused across tests).
    kubectl_cache: PathBuf,
}

/// One API request the server received (control requests are not logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string, still percent-encoded.
    pub query: String,
    /// The `Accept` header, empty if there was none (kube-rs sends none
    /// except for metadata-only requests).
    pub accept: String,
    pub user_agent: String,
    /// The response status, 0 if the connection was closed without one
    /// (outage) or the response has not started yet.
    pub status: u16,
}

impl Request {
    /// A query parameter, percent-decoded (`+` as space).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }

    /// True for a watch request (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        self.param("watch")
            .is_some_and(|w| matches!(w.as_str(), "true" | "1"))
    }
}

impl KubeApi {
    /// Starts the server with bookmarks every second (tests should not wait
    /// for the 5 s default).
    pub fn start(dir: &TestDir) -> Self {
        Self::start_with(dir, &["--bookmark-seconds", "1"])
    }

    /// Starts the server with extra flags: `--bookmark-seconds S`,
    /// `--watch-timeout S` (watches without `timeoutSeconds`), `--history N`
    /// (events kept for resuming watches).
    pub fn start_with(dir: &TestDir, args: &[&str]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg("-u")
            .arg(crate::peers_dir().join("kube_apiserver.py"))
            .args(["--port", &port.to_string()])
            .args(args);
        let mut guard = Guard::spawn("kube-apiserver", &mut cmd, dir);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ready = wait_until(START_TIMEOUT, || {
            guard.assert_running();
            (guard.stdout().contains("listening") && accepts(addr)).then_some(())
        });
        assert!(
            ready.is_some(),
            "kube_apiserver.py did not listen on {addr} within {START_TIMEOUT:?}; stderr:\n{}",
            guard.stderr()
        );
        let kubeconfig = dir.write("kubeconfig", kubeconfig_text(port));
        let kubectl_cache = dir.join("kubectl-cache");
        Self {
            guard,
            port,
            kubeconfig,
            kubectl_cache,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `http://127.0.0.1:PORT`, the kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The kubeconfig file (cluster, context and user all named `standin`,
    /// no credentials, default namespace `default`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.clone()
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Creates `object` or replaces the one with its kind, namespace and name
    /// (a watch sees ADDED or MODIFIED). Missing `uid` and
    /// `creationTimestamp` are filled in (kept from the object replaced);
    /// `resourceVersion` is always the server's. A missing namespace is
    /// created. Returns the object as stored.
    pub fn apply(&self, object: &Value) -> Value {
        let (status, body) = self.control("POST", "/_control/objects", Some(object));
        assert_eq!(status, 200, "apply {object}: {body}");
        body
    }

    /// Deletes an object at once (a watch sees DELETED, carrying the final
    /// object at a new resourceVersion). `kind` as `Pod`, `pod` or `pods`;
    /// `namespace` `-` (or empty) for cluster-scoped kinds. Panics if there
    /// is no such object. Returns the final object.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Value {
        let ns = if namespace.is_empty() { "-" } else { namespace };
        let path = format!("/_control/objects/{kind}/{ns}/{name}");
        let (status, body) = self.control("DELETE", &path, None);
        assert_eq!(status, 200, "delete {kind} {ns}/{name}: {body}");
        body
    }

    /// Starts a graceful deletion: the object stays, with
    /// `deletionTimestamp` and `deletionGracePeriodSeconds` set (MODIFIED;
    /// kubectl shows a pod as Terminating). [`Self::delete`] then removes it.
    pub fn delete_gracefully(&self, kind: &str, namespace: &str, name: &str, grace: u32) -> Value {
        let ns = if namespace.is_empty() { "-" } else { namespace };
        let path = format!("/_control/objects/{kind}/{ns}/{name}?grace_seconds={grace}");
        let (status, body) = self.control("DELETE", &path, None);
        assert_eq!(status, 200, "graceful delete {kind} {ns}/{name}: {body}");
        body
    }

    /// Turns the outage on or off. While on, every API request's connection
    /// is closed without a response, and turning it on cuts every open watch
    /// mid-stream (no terminating chunk): an API server crash or partition.
    pub fn outage(&self, on: bool) {
        self.set_outage(on, "close");
    }

    /// Like [`Self::outage`], but API requests get `503 ServiceUnavailable`
    /// (a `Status` body) instead of a closed connection.
    pub fn outage_503(&self, on: bool) {
        self.set_outage(on, "503");
    }

    fn set_outage(&self, on: bool, mode: &str) {
        let body = json!({"on": on, "mode": mode});
        let (status, answer) = self.control("POST", "/_control/outage", Some(&body));
        assert_eq!(status, 200, "outage {body}: {answer}");
    }

    /// Forgets the event history (after bumping the resourceVersion, so even
    /// an up-to-date client is behind) and ends open watches cleanly: every
    /// client's resumed watch gets `410 Expired` and must re-list. Returns
    /// the new oldest resumable resourceVersion.
    pub fn compact(&self) -> u64 {
        let (status, body) = self.control("POST", "/_control/compact", None);
        assert_eq!(status, 200, "compact: {body}");
        parse_rv(&body["compactedResourceVersion"])
    }

    /// Ends every open watch cleanly (terminating chunk), as the real server
    /// does at `timeoutSeconds`; clients resume from their last
    /// resourceVersion. Returns how many were open.
    pub fn drop_watches(&self) -> u64 {
        let (status, body) = self.control("POST", "/_control/drop_watches", None);
        assert_eq!(status, 200, "drop_watches: {body}");
        body["dropped"].as_u64().unwrap_or(0)
    }

    /// Every API request received so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        let (status, body) = self.control("GET", "/_control/requests", None);
        assert_eq!(status, 200, "requests: {body}");
        let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        body.as_array()
            .expect("the request log is an array")
            .iter()
            .map(|r| Request {
                method: text(r, "method"),
                path: text(r, "path"),
                query: text(r, "query"),
                accept: text(r, "accept"),
                user_agent: text(r, "user_agent"),
                status: r["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(0),
            })
            .collect()
    }

    pub fn clear_requests(&self) {
        let (status, body) = self.control("DELETE", "/_control/requests", None);
        assert_eq!(status, 200, "clear requests: {body}");
    }

    /// Open watch streams per resource (`{"pods": 1, ..., "total": 1}`).
    pub fn open_watches(&self) -> Value {
        let (status, body) = self.control("GET", "/_control/watches", None);
        assert_eq!(status, 200, "watches: {body}");
        body
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        let (status, body) = self.control("GET", "/_control/state", None);
        assert_eq!(status, 200, "state: {body}");
        parse_rv(&body["resourceVersion"])
    }

    /// A plain `GET` of an API path (with query), with an optional `Accept`.
    /// Panics if the connection fails (including during an outage).
    pub fn get(&self, path_and_query: &str, accept: Option<&str>) -> Response {
        self.try_get(path_and_query, accept)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"))
    }

    /// [`Self::get`] that returns connection errors (an outage closes the
    /// connection without a response).
    pub fn try_get(&self, path_and_query: &str, accept: Option<&str>) -> io::Result<Response> {
        let mut stream = connect(self.addr());
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\n{accept}Connection: close\r\n\r\n",
            self.addr()
        );
        stream.write_all(request.as_bytes())?;
        read_response(&mut BufReader::new(stream), false)
    }

    /// Opens a watch (`path_and_query` should carry `watch=true`) and reads
    /// its response head. Panics unless the status is 200.
    pub fn watch(&self, path_and_query: &str, accept: Option<&str>) -> WatchStream {
        WatchStream::open(self.addr(), path_and_query, accept)
    }

    /// Runs kubectl against the server (`--kubeconfig`, `--cache-dir` set).
    /// Panics if kubectl is not installed (`cargo xtask test` installs it).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl {args:?}: {e}"))
    }

    /// The kubectl command [`Self::kubectl`] runs, to spawn it instead
    /// (`kubectl get pods -w` under a [`Guard`]).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(crate::require_tool("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.kubectl_cache)
            .args(["--request-timeout", "20s"])
            .args(args);
        cmd
    }

    /// One control-API call on a fresh connection: (status, JSON body).
    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut stream = connect(self.addr());
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            self.addr(),
            payload.len()
        );
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let response = read_response(&mut BufReader::new(stream), false)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let value = serde_json::from_slice(&response.body).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: answer is not JSON ({e}): {}",
                response.body_text()
            )
        });
        (response.status, value)
    }
}

fn kubeconfig_text(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: standin
  context:
    cluster: standin
    user: standin
    namespace: default
current-context: standin
users:
- name: standin
  user: {{}}
preferences: {{}}
"
    )
}

fn parse_rv(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("resourceVersion {v} is not a number in a string"))
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)),
            _ => None,
        };
        if let Some((hi, lo)) = escaped {
            out.push(u8::try_from(hi * 16 + lo).expect("two hex digits fit a byte"));
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A watch response being read: newline-delimited JSON events in chunks.
#[derive(Debug)]
pub struct WatchStream {
    reader: BufReader<TcpStream>,
    /// Bytes of the current chunk still to read.
    chunk_left: usize,
    /// Event bytes received but not yet ended by a newline.
    pending: Vec<u8>,
    ended: bool,
}

impl WatchStream {
    fn open(addr: SocketAddr, path_and_query: &str, accept: Option<&str>) -> Self {
        let mut stream = connect(addr);
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n");
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("watch {path_and_query}: {e}"));
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .unwrap_or_else(|e| panic!("watch {path_and_query}: {e}"));
        let mut chunked = false;
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("watch {path_and_query}: headers: {e}"));
            let line = line.trim_end();
            if n == 0 || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                chunked |= name.trim().eq_ignore_ascii_case("transfer-encoding")
                    && value.trim().eq_ignore_ascii_case("chunked");
            }
        }
        assert!(
            status_line.split_whitespace().nth(1) == Some("200") && chunked,
            "watch {path_and_query}: want a chunked 200, got {status_line:?} (chunked: {chunked})"
        );
        Self {
            reader,
            chunk_left: 0,
            pending: Vec::new(),
            ended: false,
        }
    }

    /// Sets how long [`Self::next_event`] waits (default 20 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
    }

    /// The next event (`{"type": ..., "object": ...}`); `Ok(None)` once the
    /// server ended the stream cleanly (terminating chunk); an error if the
    /// connection was cut mid-stream (`UnexpectedEof`) or the read timed out.
    pub fn next_event(&mut self) -> io::Result<Option<Value>> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let event = serde_json::from_slice(&line).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad event {:?}: {e}", String::from_utf8_lossy(&line)),
                    )
                })?;
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            self.read_more()?;
        }
    }

    /// The next event that is not a BOOKMARK.
    pub fn next_change(&mut self) -> io::Result<Option<Value>> {
        loop {
            match self.next_event()? {
                Some(e) if e["type"] == "BOOKMARK" => continue,
                other => return Ok(other),
            }
        }
    }

    fn read_more(&mut self) -> io::Result<()> {
        let cut = || io::Error::new(io::ErrorKind::UnexpectedEof, "watch cut mid-stream");
        if self.chunk_left == 0 {
            let mut size_line = String::new();
            if self.reader.read_line(&mut size_line)? == 0 {
                return Err(cut());
            }
            let size_hex = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size line {size_line:?}"),
                )
            })?;
            if size == 0 {
                self.ended = true;
                return Ok(());
            }
            self.chunk_left = size;
        }
        let mut buf = vec![0u8; self.chunk_left.min(64 * 1024)];
        let n = self.reader.read(&mut buf)?;
        if n == 0 {
            return Err(cut());
        }
        self.pending.extend_from_slice(&buf[..n]);
        self.chunk_left -= n;
        if self.chunk_left == 0 {
            // The CRLF that ends every chunk's data.
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).map_err(|_| cut())?;
        }
        Ok(())
    }
}

// ----------------------------------------------------------------- builders

/// A `Pod` being built: see [`pod`].
#[derive(Debug, Clone)]
pub struct PodBuilder {
    namespace: String,
    name: String,
    node: String,
    uid: String,
    ip: Option<String>,
    host_ip: String,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    owners: Vec<Value>,
    host_network: bool,
    containers: Vec<(String, String)>,
    phase: Option<String>,
    qos: Qos,
}

/// A scheduled, running pod on `node` with pod IP `ip`, like kubelet reports
/// it: `spec.nodeName`, `status.{phase, podIP, podIPs, hostIP, hostIPs,
/// conditions, containerStatuses, qosClass}`. With `ip` `None` the pod is
/// Pending with no IP (unless [`PodBuilder::host_network`], where the pod IP
/// is the host IP); with `node` empty it is also unscheduled. Without a
/// [`PodBuilder::container`] call it has one container, `app`, with a random
/// container ID.
pub fn pod(namespace: &str, name: &str, node: &str, uid: &str, ip: Option<&str>) -> PodBuilder {
    PodBuilder {
        namespace: namespace.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        uid: uid.to_string(),
        ip: ip.map(str::to_string),
        host_ip: "10.0.0.10".to_string(),
        labels: Map::new(),
        annotations: Map::new(),
        owners: Vec::new(),
        host_network: false,
        containers: Vec::new(),
        phase: None,
        qos: Qos::BestEffort,
    }
}

impl PodBuilder {
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), json!(value));
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), json!(value));
        self
    }

    /// Adds a controller owner reference (`ReplicaSet`, `Job`, `StatefulSet`,
    /// `DaemonSet`, `Node` for static pods, ...).
    pub fn owner(mut self, kind: &str, name: &str, uid: &str) -> Self {
        self.owners.push(owner_reference(kind, name, uid));
        self
    }

    /// `spec.hostNetwork`: the pod IP is the host IP.
    pub fn host_network(mut self, on: bool) -> Self {
        self.host_network = on;
        self
    }

    /// The node's IP (`status.hostIP`), default `10.0.0.10`.
    pub fn host_ip(mut self, ip: &str) -> Self {
        self.host_ip = ip.to_string();
        self
    }

    /// Adds a running container: `spec.containers[].name` and a
    /// `status.containerStatuses[]` entry whose `containerID` is
    /// `containerd://<container_id>` (an ID that already has a `scheme://`
    /// prefix is kept as it is).
    pub fn container(mut self, name: &str, container_id: &str) -> Self {
        self.containers
            .push((name.to_string(), container_id.to_string()));
        self
    }

    /// Overrides `status.phase` (default Running, or Pending without an IP).
    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = Some(phase.to_string());
        self
    }

    /// `status.qosClass` (default BestEffort): the QoS level of the pod's
    /// [`crate::cgroups::PodCgroup`].
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    pub fn build(self) -> Value {
        let scheduled = !self.node.is_empty();
        let pod_ip = if self.host_network && scheduled {
            Some(self.host_ip.clone())
        } else {
            self.ip.clone()
        };
        let phase = self.phase.clone().unwrap_or_else(|| {
            if pod_ip.is_some() && scheduled {
                "Running".to_string()
            } else {
                "Pending".to_string()
            }
        });
        let running = phase == "Running";
        let containers = if self.containers.is_empty() {
            vec![("app".to_string(), random_container_id())]
        } else {
            self.containers.clone()
        };
        let started = "2024-01-01T00:00:00Z";
        let spec_containers: Vec<Value> = containers
            .iter()
            .map(|(name, _)| {
                json!({
                    "name": name,
                    "image": format!("registry.example/{name}:1.0"),
                    "imagePullPolicy": "IfNotPresent",
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                })
            })
            .collect();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|(name, id)| container_status(name, id, running, started))
            .collect();
        let mut metadata = json!({
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
        });
        if !self.labels.is_empty() {
            metadata["labels"] = Value::Object(self.labels.clone());
        }
        if !self.annotations.is_empty() {
            metadata["annotations"] = Value::Object(self.annotations.clone());
        }
        if !self.owners.is_empty() {
            metadata["ownerReferences"] = Value::Array(self.owners.clone());
        }
        let mut spec = json!({
            "containers": spec_containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": if self.host_network { "ClusterFirstWithHostNet" } else { "ClusterFirst" },
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "priority": 0,
            "preemptionPolicy": "PreemptLowerPriority",
        });
        if scheduled {
            spec["nodeName"] = json!(self.node);
        }
        if self.host_network {
            spec["hostNetwork"] = json!(true);
        }
        let condition = |kind: &str, ok: bool| {
            json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastProbeTime": null,
                   "lastTransitionTime": started})
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                condition("PodReadyToStartContainers", running),
                condition("Initialized", scheduled),
                condition("Ready", running),
                condition("ContainersReady", running),
                condition("PodScheduled", scheduled),
            ],
            "qosClass": self.qos.class(),
        });
        if scheduled {
            status["hostIP"] = json!(self.host_ip);
            status["hostIPs"] = json!([{"ip": self.host_ip}]);
            status["startTime"] = json!(started);
            status["containerStatuses"] = json!(statuses);
        }
        if let Some(ip) = pod_ip.filter(|_| scheduled) {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{ "ip": ip }]);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
            "status": status,
        })
    }
}

fn container_status(name: &str, id: &str, running: bool, started: &str) -> Value {
    let image = format!("registry.example/{name}:1.0");
    let mut status = json!({
        "name": name,
        "image": image,
        "imageID": format!("{image}@sha256:{}", random_container_id()),
        "ready": running,
        "restartCount": 0,
        "started": running,
        "lastState": {},
    });
    if running {
        let container_id = if id.contains("://") {
            id.to_string()
        } else {
            format!("containerd://{id}")
        };
        status["containerID"] = json!(container_id);
        status["state"] = json!({"running": {"startedAt": started}});
    } else {
        // Before the runtime created it, a container has no ID.
        status["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
    }
    status
}

/// The API group/version a kind is served under, for owner references.
fn api_version_of(kind: &str) -> &'static str {
    match kind {
        "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "v1",
    }
}

/// A controller owner reference, as controllers set them.
pub fn owner_reference(kind: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": api_version_of(kind),
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A pod template for workloads: one container `app`, labels `app=<app>`.
fn template(app: &str, restart_policy: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1.0",
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
            }],
            "restartPolicy": restart_policy,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30,
        },
    })
}

fn workload_metadata(
    namespace: &str,
    name: &str,
    uid: &str,
    app: &str,
    owner: Option<(&str, &str, &str)>,
) -> Value {
    let mut metadata = json!({
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "generation": 1,
        "labels": {"app": app},
    });
    if let Some((kind, owner_name, owner_uid)) = owner {
        metadata["ownerReferences"] = json!([owner_reference(kind, owner_name, owner_uid)]);
    }
    metadata
}

/// The `app` label a workload's pods carry: a ReplicaSet or Job named after
/// its owner (`web-7d9f8b6c5d`) shares the owner's.
fn app_label(name: &str, owner: Option<(&str, &str, &str)>) -> String {
    owner
        .map_or(name, |(_, owner_name, _)| owner_name)
        .to_string()
}

/// A ReplicaSet with one ready replica, owned by `owner` (kind, name, uid:
/// usually the Deployment) if given.
pub fn replicaset(
    namespace: &str,
    name: &str,
    uid: &str,
    owner: Option<(&str, &str, &str)>,
) -> Value {
    let app = app_label(name, owner);
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": workload_metadata(namespace, name, uid, &app, owner),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app}},
            "template": template(&app, "Always"),
        },
        "status": {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1,
                   "availableReplicas": 1, "observedGeneration": 1},
    })
}

/// A Deployment with one ready replica.
pub fn deployment(namespace: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": workload_metadata(namespace, name, uid, name, None),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, "Always"),
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                   "readyReplicas": 1, "availableReplicas": 1},
    })
}

/// A Job with one active pod, owned by `owner` (usually a CronJob) if given.
pub fn job(namespace: &str, name: &str, uid: &str, owner: Option<(&str, &str, &str)>) -> Value {
    let app = app_label(name, owner);
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": workload_metadata(namespace, name, uid, &app, owner),
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 6,
            "completionMode": "NonIndexed",
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}},
            "template": template(&app, "Never"),
        },
        "status": {"active": 1, "ready": 1, "startTime": "2024-01-01T00:00:00Z"},
    })
}

/// A CronJob every five minutes.
pub fn cronjob(namespace: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": workload_metadata(namespace, name, uid, name, None),
        "spec": {
            "schedule": "*/5 * * * *",
            "concurrencyPolicy": "Allow",
            "suspend": false,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": template(name, "Never")}},
        },
        "status": {},
    })
}

/// A StatefulSet with one ready replica (its pods are named `<name>-0`, ...).
pub fn statefulset(namespace: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": workload_metadata(namespace, name, uid, name, None),
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, "Always"),
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
        },
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                   "currentReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    })
}

/// A DaemonSet scheduled on one node.
pub fn daemonset(namespace: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": workload_metadata(namespace, name, uid, name, None),
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, "Always"),
            "updateStrategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
        },
        "status": {"currentNumberScheduled": 1, "desiredNumberScheduled": 1,
                   "numberMisscheduled": 0, "numberReady": 1, "updatedNumberScheduled": 1,
                   "numberAvailable": 1, "observedGeneration": 1},
    })
}

/// A ClusterIP Service selecting `app=<name>`, one TCP port `http` to the
/// same target port.
pub fn service(namespace: &str, name: &str, cluster_ip: &str, port: u16) -> Value {
    let family = if cluster_ip.contains(':') {
        "IPv6"
    } else {
        "IPv4"
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": random_uid(),
            "labels": {"app": name},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": [family],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": port}],
            "selector": {"app": name},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    })
}

/// One endpoint of an [`endpointslice`]: a pod's address.
#[derive(Debug, Clone, Copy)]
pub struct SliceEndpoint<'a> {
    pub ip: &'a str,
    pub pod: &'a str,
    pub pod_uid: &'a str,
    pub node: &'a str,
}

/// The EndpointSlice the endpoint-slice controller keeps for `service`:
/// labelled `kubernetes.io/service-name`, one ready endpoint per pod with a
/// `targetRef` to it, port `http`/`port`. Its name is `<service>-<5
/// chars>` like the controller's `generateName`, but derived from the
/// service name so a test can predict it.
pub fn endpointslice(
    namespace: &str,
    service: &str,
    port: u16,
    endpoints: &[SliceEndpoint<'_>],
) -> Value {
    let family = if endpoints.iter().any(|e| e.ip.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({
                "addresses": [e.ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": e.node,
                "targetRef": {"kind": "Pod", "name": e.pod, "namespace": namespace, "uid": e.pod_uid},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{}", name_suffix(service)),
            "namespace": namespace,
            "generateName": format!("{service}-"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })
}

/// Five characters from the alphabet of Kubernetes' `rand.String`
/// (no vowels, no confusable digits), derived from `seed` (FNV-1a).
fn name_suffix(seed: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..5)
        .map(|_| {
            let c = ALPHABET[(hash % ALPHABET.len() as u64) as usize];
            hash /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

/// A Namespace (the server creates missing ones on apply; this is for
/// labelled ones).
pub fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// A Ready Node with InternalIP `internal_ip`.
pub fn node(name: &str, internal_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": "2024-01-01T00:00:00Z",
                            "lastTransitionTime": "2024-01-01T00:00:00Z"}],
            "nodeInfo": {
                "kubeletVersion": "v1.32.4",
                "kubeProxyVersion": "v1.32.4",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kernelVersion": "6.1.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    })
}
