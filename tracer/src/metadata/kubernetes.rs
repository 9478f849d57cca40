//! Kubernetes metadata: the pods of this node, the cluster's Service
//! ClusterIPs and EndpointSlice addresses, and pods' top-level owners, kept
//! in memory for the metadata stage.
//!
//! Input: the API server, through kube-rs (in-cluster configuration, or
//! `--kubeconfig`). Output: [`Cluster`], which the resolver asks for a pod by
//! uid (waiting a bounded time for one that is not listed yet) and the
//! pipeline asks for the Service behind a peer address; the uids of deleted
//! pods once their grace period is over; and [`KubeStats`] for the
//! `tracer_kubernetes_*` metrics.
//!
//! Memory stays small on a large cluster: pods are watched for this node only
//! (field selector `spec.nodeName`); Services and EndpointSlices are watched
//! cluster-wide but only their addresses and names are kept; owners
//! (ReplicaSet -> Deployment, Job -> CronJob) are read one object at a time
//! as metadata only, and cached. Each watch lists (in pages), then watches
//! from the list's resourceVersion with bookmarks; it re-lists after a
//! broken stream or 410 Gone (a complete list also drops what was deleted
//! meanwhile), with exponential backoff; an outage leaves the cache as it
//! was, so labels keep being served.

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{ListParams, ObjectMeta, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    Api, Client, Config, Resource,
};
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::{Owner, PeerService, PodIdentity};

/// One kind of object the tracer reads from the API server, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    /// API group: "" for the core group, e.g. "apps".
    pub group: &'static str,
    /// Plural resource name, e.g. "pods".
    pub resource: &'static str,
    /// The verbs the code uses on it.
    pub verbs: &'static [&'static str],
}

/// Everything the tracer calls on the API server. The shipped ClusterRole
/// (manifests/) must grant exactly this: a test checks it.
pub const API_ACCESS: &[ApiAccess] = &[
    // The pods of this node (field selector): list, watch, and a list again
    // on demand when a process's pod is not known yet.
    ApiAccess {
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
    },
    // ClusterIP -> Service name, for the callee labels of client requests.
    ApiAccess {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
    },
    // Pod IP -> Service name, for callees on other nodes.
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
    },
    // Owner chain: ReplicaSet -> Deployment, Job -> CronJob (metadata only).
    ApiAccess {
        group: "apps",
        resource: "replicasets",
        verbs: &["get"],
    },
    ApiAccess {
        group: "batch",
        resource: "jobs",
        verbs: &["get"],
    },
];

/// How to reach the API server, from the command line.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kubeconfig` / `KUBECONFIG`; else in-cluster when
    /// `KUBERNETES_SERVICE_HOST` is set; else no Kubernetes.
    pub kubeconfig: Option<PathBuf>,
    /// `--node-name` / `NODE_NAME`.
    pub node_name: Option<String>,
    /// How long a deleted pod's series stay.
    pub pod_grace: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            node_name: None,
            pod_grace: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("--kubeconfig {path}: {source}; pass a kubeconfig file that kubectl accepts")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "in-cluster Kubernetes configuration (KUBERNETES_SERVICE_HOST is set): {0}; keep \
         automountServiceAccountToken on for the tracer's pod, or pass --kubeconfig"
    )]
    InCluster(kube::config::InClusterError),
    #[error(
        "NODE_NAME is not set: in a cluster the tracer must know its node; set the env var \
         NODE_NAME from the downward API (valueFrom.fieldRef.fieldPath: spec.nodeName) or pass \
         --node-name"
    )]
    NodeName,
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("starting the metadata thread: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The client and this node's name, or None when no Kubernetes is
/// configured. Bad configuration is an error; an unreachable API server is
/// not (the watchers retry, and metrics flow meanwhile).
pub async fn connect(options: &KubeOptions) -> Result<Option<(Client, Arc<str>)>, KubeError> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let node_name = options.node_name.as_deref().filter(|n| !n.is_empty());
    if in_cluster && node_name.is_none() {
        // Checked first: the fix for a DaemonSet without NODE_NAME is in
        // its manifest, whatever else is wrong.
        return Err(KubeError::NodeName);
    }
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None if in_cluster => Config::incluster().map_err(KubeError::InCluster)?,
        None => return Ok(None),
    };
    let node: Arc<str> = match node_name {
        Some(node) => Arc::from(node),
        None => {
            // By hand with a kubeconfig: node names are host names by default.
            let host = hostname();
            tracing::warn!(
                node = %host,
                "NODE_NAME is not set; assuming this host's name is its Kubernetes node name \
                 (pass --node-name if it is not)"
            );
            Arc::from(host)
        }
    };
    let client = Client::try_from(config).map_err(KubeError::Client)?;
    tracing::info!(node = %node, "Kubernetes metadata enabled");
    Ok(Some((client, node)))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Watch and cache counters of one kind of object.
#[derive(Debug, Default)]
pub struct ResourceStats {
    /// 1 while the watch is established and its list complete.
    pub up: AtomicU64,
    /// Re-lists and re-watches after a failure or a 410 Gone.
    pub restarts: AtomicU64,
    /// Failed requests and error events.
    pub errors: AtomicU64,
    /// Objects kept in the cache.
    pub objects: AtomicU64,
    /// Listed completely at least once.
    pub listed: AtomicBool,
}

impl ResourceStats {
    fn set_objects(&self, n: usize) {
        self.objects.store(n as u64, Ordering::Relaxed);
    }
}

/// Counters for `tracer_kubernetes_*`.
#[derive(Debug, Default)]
pub struct KubeStats {
    pub pods: ResourceStats,
    pub services: ResourceStats,
    pub endpointslices: ResourceStats,
    /// Owner lookups (ReplicaSets, Jobs): errors and cached owners.
    pub owners: ResourceStats,
    /// Processes in a pod the API server did not know within the wait.
    pub unresolved_pods: AtomicU64,
}

impl KubeStats {
    /// Every cache (pods, Services, EndpointSlices) has been listed once:
    /// `/readyz` waits for it, so that neither a pod nor a callee is missed
    /// for want of a first list.
    pub fn synced(&self) -> bool {
        [&self.pods, &self.services, &self.endpointslices]
            .iter()
            .all(|s| s.listed.load(Ordering::Relaxed))
    }

    /// Each kind with its `resource` label value.
    pub fn resources(&self) -> [(&'static str, &ResourceStats); 4] {
        [
            ("pods", &self.pods),
            ("services", &self.services),
            ("endpointslices", &self.endpointslices),
            ("owners", &self.owners),
        ]
    }
}

/// What is kept of a pod of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub node: Arc<str>,
    /// See [`PodInfo::name_service`].
    pub service_name: Arc<str>,
    /// The name the pod gives its service itself (annotation or label).
    named: Option<Arc<str>>,
    pub service_namespace: Arc<str>,
    /// The direct controller (a ReplicaSet, say), as the pod names it.
    controller: Option<Owner>,
    /// The top-level owner, once known (see [`Cluster::owner_of`]).
    pub owner: Option<Owner>,
    /// The top-level owner still waits for an API lookup.
    owner_pending: bool,
    /// Container id (64 hex) -> container name.
    containers: Vec<(Arc<str>, Arc<str>)>,
    container_names: Vec<Arc<str>>,
    ips: Vec<IpAddr>,
    host_ip: Option<IpAddr>,
    host_network: bool,
}

impl PodInfo {
    /// The pod side of a process's identity; `container_id` picks the
    /// container (a single-container pod needs none).
    pub fn identity(&self, container_id: Option<&str>) -> Arc<PodIdentity> {
        let container = container_id
            .and_then(|id| self.containers.iter().find(|(cid, _)| &**cid == id))
            .map(|(_, name)| name.clone())
            .or_else(|| match self.container_names.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            });
        Arc::new(PodIdentity {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            node: self.node.clone(),
            container,
            owner: self.owner.clone(),
            service_namespace: self.service_namespace.clone(),
        })
    }

    fn knows_container(&self, container_id: Option<&str>) -> bool {
        match container_id {
            Some(id) => self.containers.iter().any(|(cid, _)| &**cid == id),
            None => true,
        }
    }

    fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let uid: Arc<str> = Arc::from(meta.uid.as_deref()?);
        let name: Arc<str> = Arc::from(meta.name.as_deref()?);
        let namespace: Arc<str> = Arc::from(meta.namespace.as_deref().unwrap_or("default"));
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .or_else(|| meta.owner_references.as_ref()?.first())
            .map(|o| Owner {
                kind: Arc::from(o.kind.as_str()),
                name: Arc::from(o.name.as_str()),
            });
        let containers = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .filter_map(|c| {
                let id = c.container_id.as_deref()?;
                // "containerd://<id>", "cri-o://<id>", "docker://<id>".
                let id = id.split_once("://").map_or(id, |(_, id)| id);
                Some((Arc::from(id), Arc::from(c.name.as_str())))
            })
            .collect();
        let container_names = spec
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| Arc::from(c.name.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let ips = status
            .into_iter()
            .flat_map(|s| {
                s.pod_ips
                    .iter()
                    .flatten()
                    .map(|p| p.ip.as_str())
                    .chain(s.pod_ip.as_deref())
            })
            .filter_map(|ip| ip.parse().ok())
            .collect::<HashSet<IpAddr>>()
            .into_iter()
            .collect();
        let host_ip = status
            .and_then(|s| s.host_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let node = Arc::from(spec.and_then(|s| s.node_name.as_deref()).unwrap_or(""));
        let service_namespace = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(SERVICE_NAMESPACE_ANNOTATION))
            .filter(|s| !s.is_empty())
            .map_or_else(|| namespace.clone(), |s| Arc::from(s.as_str()));
        let mut info = Self {
            uid,
            namespace,
            name,
            node,
            service_name: Arc::from(""),
            named: named_by_meta(meta),
            service_namespace,
            owner: controller.clone(),
            owner_pending: false,
            controller,
            containers,
            container_names,
            ips,
            host_ip,
            host_network,
        };
        info.name_service();
        Some(info)
    }

    /// `service_name`: the pod's own name for it (annotation, else
    /// `app.kubernetes.io/name`), else its top-level owner's name, else the
    /// pod's name. Called again whenever the owner becomes known.
    fn name_service(&mut self) {
        self.service_name = self
            .named
            .clone()
            .or_else(|| self.owner.as_ref().map(|o| o.name.clone()))
            .unwrap_or_else(|| self.name.clone());
    }
}

/// The annotation that names a pod's service, as OpenTelemetry defines it.
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// The annotation that names a pod's service namespace.
pub const SERVICE_NAMESPACE_ANNOTATION: &str = "resource.opentelemetry.io/service.namespace";
/// The recommended application-name label.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

/// The service name a pod gives itself: the OpenTelemetry annotation, else
/// the `app.kubernetes.io/name` label.
fn named_by_meta(meta: &ObjectMeta) -> Option<Arc<str>> {
    let annotation = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_NAME_ANNOTATION));
    let label = meta.labels.as_ref().and_then(|l| l.get(APP_NAME_LABEL));
    [annotation, label]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .map(|s| Arc::from(s.as_str()))
}

/// (namespace, name) of a Service or EndpointSlice.
type ObjectKey = (Arc<str>, Arc<str>);

/// Addresses that name a Service, kept per object so that an update or a
/// delete takes back exactly what the object put in.
#[derive(Default)]
struct AddressIndex {
    by_object: HashMap<ObjectKey, Vec<IpAddr>>,
    by_ip: HashMap<IpAddr, Arc<PeerService>>,
}

impl AddressIndex {
    fn replace(&mut self, key: ObjectKey, ips: Vec<IpAddr>, peer: Arc<PeerService>) {
        self.remove(&key);
        for ip in &ips {
            self.by_ip.insert(*ip, peer.clone());
        }
        self.by_object.insert(key, ips);
    }

    fn remove(&mut self, key: &ObjectKey) {
        for ip in self.by_object.remove(key).into_iter().flatten() {
            self.by_ip.remove(&ip);
        }
    }

    /// Keeps the objects `keep` says yes to.
    fn retain(&mut self, mut keep: impl FnMut(&ObjectKey) -> bool) {
        let gone: Vec<ObjectKey> = self
            .by_object
            .keys()
            .filter(|key| !keep(key))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
    }

    fn get(&self, ip: IpAddr) -> Option<&Arc<PeerService>> {
        self.by_ip.get(&ip)
    }

    fn len(&self) -> usize {
        self.by_object.len()
    }
}

/// The object's (namespace, name) key and the Service it names (a Service
/// names itself; an EndpointSlice its `kubernetes.io/service-name`).
fn named(meta: &ObjectMeta, service: Option<&str>) -> Option<(ObjectKey, Arc<PeerService>)> {
    let namespace: Arc<str> = Arc::from(meta.namespace.as_deref()?);
    let name: Arc<str> = Arc::from(meta.name.as_deref()?);
    let peer = Arc::new(PeerService {
        name: Arc::from(service?),
        namespace: namespace.clone(),
    });
    Some(((namespace, name), peer))
}

fn slice_key(meta: &ObjectMeta) -> Option<ObjectKey> {
    Some((
        Arc::from(meta.namespace.as_deref()?),
        Arc::from(meta.name.as_deref()?),
    ))
}

/// A direct controller to look up, with its namespace.
type OwnerLookup = (Owner, Arc<str>);

/// (kind, namespace, name) of a direct controller.
type OwnerKey = (Arc<str>, Arc<str>, Arc<str>);

/// The cluster as far as this node needs it.
pub struct Cluster {
    node: Arc<str>,
    state: RwLock<State>,
    /// Bumped on every pod change, so waiting resolutions look again.
    changed: tokio::sync::watch::Sender<u64>,
    /// Asks the pod watcher for an extra list (a pod not seen yet).
    relist: tokio::sync::Notify,
    /// Taken by the owner-lookup task when the watchers start.
    owner_queue: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<OwnerLookup>>>,
    owner_keys: tokio::sync::mpsc::UnboundedSender<OwnerLookup>,
    stats: Arc<KubeStats>,
}

#[derive(Default)]
struct State {
    pods: HashMap<Arc<str>, Arc<PodInfo>>,
    /// Pod IP -> the pod's service (pods of this node, host network excluded).
    pod_ips: HashMap<IpAddr, Arc<PeerService>>,
    /// This node's own addresses (host-network pods share them).
    host_ips: HashSet<IpAddr>,
    /// Service ClusterIPs, by Service.
    services: AddressIndex,
    /// Pod addresses of EndpointSlices, by slice.
    slices: AddressIndex,
    /// (kind, namespace, name) of a direct controller -> its top owner.
    owners: HashMap<OwnerKey, Owner>,
    /// Deleted pods, removed once their grace period is over.
    deleted: Vec<(Instant, Arc<str>)>,
}

impl Cluster {
    pub fn new(node: Arc<str>, stats: Arc<KubeStats>) -> Self {
        let (owner_keys, owner_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            node,
            state: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(0),
            relist: tokio::sync::Notify::new(),
            owner_queue: std::sync::Mutex::new(Some(owner_rx)),
            owner_keys,
            stats,
        }
    }

    /// The watch and cache counters.
    pub fn stats(&self) -> Arc<KubeStats> {
        self.stats.clone()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Service (by ClusterIP or endpoint address) or pod behind an
    /// address. This node's own addresses are never a pod: host-network pods
    /// share them.
    pub fn peer(&self, ip: IpAddr) -> Option<Arc<PeerService>> {
        let ip = ip.to_canonical();
        let state = self.read();
        if let Some(service) = state.services.get(ip) {
            return Some(service.clone());
        }
        if state.host_ips.contains(&ip) {
            return None;
        }
        state
            .slices
            .get(ip)
            .or_else(|| state.pod_ips.get(&ip))
            .cloned()
    }

    /// The pod with this uid, waiting at most `wait` for the watch (and an
    /// extra list) to bring it, its container and its top-level owner; or
    /// what is known when `hurry` is notified.
    pub async fn wait_for_pod(
        &self,
        uid: &str,
        container_id: Option<&str>,
        wait: Duration,
        hurry: &tokio::sync::Notify,
    ) -> Option<Arc<PodInfo>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.changed.subscribe();
        let mut asked = false;
        loop {
            let found = self.read().pods.get(uid).cloned();
            match &found {
                Some(pod) if pod.knows_container(container_id) && !pod.owner_pending => {
                    return found;
                }
                Some(_) => {}
                None if !asked => {
                    // A pod younger than the watch's last event: list now.
                    self.relist.notify_one();
                    asked = true;
                }
                None => {}
            }
            let give_up = tokio::select! {
                changed = tokio::time::timeout_at(deadline, changes.changed()) => changed.is_err(),
                () = hurry.notified() => true,
            };
            if give_up {
                // Partial knowledge (no container status or owner yet) beats none.
                if found.is_none() {
                    self.stats.unresolved_pods.fetch_add(1, Ordering::Relaxed);
                }
                return found;
            }
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn apply_pod(&self, pod: &Pod) {
        let Some(mut info) = PodInfo::from_pod(pod) else {
            return;
        };
        if let Some(controller) = info.controller.clone() {
            if matches!(&*controller.kind, "ReplicaSet" | "Job") {
                let key = (
                    controller.kind.clone(),
                    info.namespace.clone(),
                    controller.name.clone(),
                );
                let cached = self.read().owners.get(&key).cloned();
                match cached {
                    Some(top) => info.owner = Some(top),
                    None => {
                        info.owner_pending = true;
                        let _ = self.owner_keys.send((controller, info.namespace.clone()));
                    }
                }
            }
        }
        self.store_pod(info);
    }

    fn store_pod(&self, mut info: PodInfo) {
        info.name_service();
        let info = Arc::new(info);
        let mut state = self.write();
        if let Some(old) = state.pods.insert(info.uid.clone(), info.clone()) {
            for ip in &old.ips {
                state.pod_ips.remove(ip);
            }
        }
        if let Some(host) = info.host_ip {
            state.host_ips.insert(host);
        }
        if !info.host_network {
            let peer = Arc::new(PeerService {
                name: info.service_name.clone(),
                namespace: info.service_namespace.clone(),
            });
            for ip in &info.ips {
                state.pod_ips.insert(*ip, peer.clone());
            }
        }
        self.stats
            .pods
            .objects
            .store(state.pods.len() as u64, Ordering::Relaxed);
        drop(state);
        self.bump();
    }

    /// A deleted pod keeps its cache entry (and its series) for the grace
    /// period: its last requests may still be in flight.
    fn delete_pod(&self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            let mut state = self.write();
            if state.pods.contains_key(uid) {
                state.deleted.push((Instant::now(), Arc::from(uid)));
            }
        }
    }

    /// Forgets pods deleted more than `grace` ago; returns their uids.
    fn expire_deleted(&self, grace: Duration) -> Vec<Arc<str>> {
        let mut state = self.write();
        let now = Instant::now();
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.deleted)
            .into_iter()
            .partition(|(at, _)| now.duration_since(*at) >= grace);
        state.deleted = kept;
        let mut uids = Vec::with_capacity(gone.len());
        for (_, uid) in gone {
            if let Some(old) = state.pods.remove(&uid) {
                for ip in &old.ips {
                    state.pod_ips.remove(ip);
                }
            }
            uids.push(uid);
        }
        self.stats
            .pods
            .objects
            .store(state.pods.len() as u64, Ordering::Relaxed);
        uids
    }

    /// A complete list ended: pods missing from it were deleted while the
    /// watch was down; they go after their grace period like any other.
    fn retain_pods(&self, listed: &Listed) {
        let mut state = self.write();
        let now = Instant::now();
        let missing: Vec<Arc<str>> = state
            .pods
            .keys()
            .filter(|uid| !listed.uids.contains(&***uid))
            .cloned()
            .collect();
        for uid in missing {
            if !state.deleted.iter().any(|(_, d)| *d == uid) {
                state.deleted.push((now, uid));
            }
        }
    }

    fn apply_service(&self, service: &Service) {
        let Some((key, peer)) = named(&service.metadata, service.metadata.name.as_deref()) else {
            return;
        };
        let ips = service
            .spec
            .iter()
            .flat_map(|s| s.cluster_ips.iter().flatten().chain(s.cluster_ip.as_ref()))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let mut state = self.write();
        state.services.replace(key, ips, peer);
        self.stats.services.set_objects(state.services.len());
    }

    fn delete_service(&self, service: &Service) {
        if let Some((key, _)) = named(&service.metadata, service.metadata.name.as_deref()) {
            let mut state = self.write();
            state.services.remove(&key);
            self.stats.services.set_objects(state.services.len());
        }
    }

    fn retain_services(&self, listed: &Listed) {
        let mut state = self.write();
        state.services.retain(|key| listed.has_name(key));
        self.stats.services.set_objects(state.services.len());
    }

    fn apply_slice(&self, slice: &EndpointSlice) {
        let meta = &slice.metadata;
        let service = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        let Some((key, peer)) = named(meta, service.map(String::as_str)) else {
            return;
        };
        // Only pod endpoints: a selector-less Service may point anywhere.
        let ips = slice
            .endpoints
            .iter()
            .filter(|e| e.target_ref.as_ref().and_then(|t| t.kind.as_deref()) == Some("Pod"))
            .flat_map(|e| e.addresses.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let mut state = self.write();
        state.slices.replace(key, ips, peer);
        self.stats.endpointslices.set_objects(state.slices.len());
    }

    fn delete_slice(&self, slice: &EndpointSlice) {
        if let Some(key) = slice_key(&slice.metadata) {
            let mut state = self.write();
            state.slices.remove(&key);
            self.stats.endpointslices.set_objects(state.slices.len());
        }
    }

    fn retain_slices(&self, listed: &Listed) {
        let mut state = self.write();
        state.slices.retain(|key| listed.has_name(key));
        self.stats.endpointslices.set_objects(state.slices.len());
    }

    /// Records a controller's top owner and updates the pods it controls.
    fn set_owner(&self, controller: &Owner, namespace: &Arc<str>, top: Owner) {
        {
            let key = (
                controller.kind.clone(),
                namespace.clone(),
                controller.name.clone(),
            );
            let mut state = self.write();
            state.owners.insert(key, top.clone());
            self.stats.owners.set_objects(state.owners.len());
        }
        self.assign_owner(controller, namespace, &top);
    }

    /// The owner lookup failed: keep the best guess (not cached, so the
    /// next pod of this controller asks again) and stop waiting.
    fn owner_unknown(&self, controller: &Owner, namespace: &Arc<str>) {
        self.assign_owner(controller, namespace, &guess_top_owner(controller));
    }

    /// Gives the pods of `controller` their top-level owner.
    fn assign_owner(&self, controller: &Owner, namespace: &Arc<str>, top: &Owner) {
        let pods: Vec<Arc<PodInfo>> = self
            .read()
            .pods
            .values()
            .filter(|p| p.namespace == *namespace && p.controller.as_ref() == Some(controller))
            .cloned()
            .collect();
        for pod in pods {
            let mut info = (*pod).clone();
            info.owner = Some(top.clone());
            info.owner_pending = false;
            self.store_pod(info);
        }
    }
}

/// Without the API: a ReplicaSet named `<deployment>-<hash>` (the
/// Deployment controller's naming) is taken to belong to `<deployment>`.
fn guess_top_owner(controller: &Owner) -> Owner {
    if &*controller.kind == "ReplicaSet" {
        if let Some((deployment, hash)) = controller.name.rsplit_once('-') {
            if !deployment.is_empty() && (6..=10).contains(&hash.len()) {
                return Owner {
                    kind: Arc::from("Deployment"),
                    name: Arc::from(deployment),
                };
            }
        }
    }
    controller.clone()
}

/// The controller of a ReplicaSet or Job, from its metadata.
fn controller_of(meta: &ObjectMeta) -> Option<Owner> {
    let refs = meta.owner_references.as_ref()?;
    refs.iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| refs.first())
        .map(|o| Owner {
            kind: Arc::from(o.kind.as_str()),
            name: Arc::from(o.name.as_str()),
        })
}

/// Starts the pod, Service and EndpointSlice watchers, the owner lookups
/// and the expiry of deleted pods on the current runtime.
pub fn spawn_watchers(
    client: Client,
    cluster: Arc<Cluster>,
    grace: Duration,
    gone: std::sync::mpsc::Sender<Arc<str>>,
) {
    let fields = format!("spec.nodeName={}", cluster.node);
    tokio::spawn(reflect::<Pod>(
        Api::all(client.clone()),
        Some(fields),
        cluster.clone(),
    ));
    tokio::spawn(reflect::<Service>(
        Api::all(client.clone()),
        None,
        cluster.clone(),
    ));
    tokio::spawn(reflect::<EndpointSlice>(
        Api::all(client.clone()),
        None,
        cluster.clone(),
    ));
    let queue = cluster
        .owner_queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(mut queue) = queue {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            while let Some((controller, namespace)) = queue.recv().await {
                resolve_owner(&client, &cluster, &controller, &namespace).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for uid in cluster.expire_deleted(grace) {
                if gone.send(uid).is_err() {
                    return;
                }
            }
        }
    });
}

/// Looks up a ReplicaSet's or Job's own controller (metadata only).
async fn resolve_owner(
    client: &Client,
    cluster: &Cluster,
    controller: &Owner,
    namespace: &Arc<str>,
) {
    let key = (
        controller.kind.clone(),
        namespace.clone(),
        controller.name.clone(),
    );
    // Bound first: a guard in the `if let` would live through `set_owner`,
    // whose write lock would then wait for it for ever.
    let cached = cluster.read().owners.get(&key).cloned();
    if let Some(top) = cached {
        cluster.set_owner(controller, namespace, top);
        return;
    }
    let meta = match &*controller.kind {
        "ReplicaSet" => Api::<ReplicaSet>::namespaced(client.clone(), namespace)
            .get_metadata_opt(&controller.name)
            .await
            .map(|m| m.map(|m| m.metadata)),
        "Job" => Api::<Job>::namespaced(client.clone(), namespace)
            .get_metadata_opt(&controller.name)
            .await
            .map(|m| m.map(|m| m.metadata)),
        _ => Ok(None),
    };
    match meta {
        Ok(meta) => {
            // A missing object or one without a controller is the top itself.
            let top = meta
                .as_ref()
                .and_then(controller_of)
                .unwrap_or_else(|| controller.clone());
            cluster.set_owner(controller, namespace, top);
        }
        Err(error) => {
            cluster.stats.owners.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, kind = %controller.kind, "owner lookup failed");
            cluster.owner_unknown(controller, namespace);
        }
    }
}

/// A kind the cluster cache keeps, and where its changes go.
trait Cached: Resource + Clone + DeserializeOwned + Debug + Send + 'static {
    /// The `resource` label value and log field.
    const RESOURCE: &'static str;
    fn stats(cluster: &Cluster) -> &ResourceStats;
    fn apply(cluster: &Cluster, object: &Self);
    fn delete(cluster: &Cluster, object: &Self);
    /// A complete list ended: drop what it did not name.
    fn retain(cluster: &Cluster, listed: &Listed);
    /// Notified when a list is wanted now (pods: a process's pod is
    /// missing).
    fn relist(_cluster: &Cluster) -> Option<&tokio::sync::Notify> {
        None
    }
}

impl Cached for Pod {
    const RESOURCE: &'static str = "pods";
    fn stats(cluster: &Cluster) -> &ResourceStats {
        &cluster.stats.pods
    }
    fn apply(cluster: &Cluster, pod: &Self) {
        cluster.apply_pod(pod);
    }
    fn delete(cluster: &Cluster, pod: &Self) {
        cluster.delete_pod(pod);
    }
    fn retain(cluster: &Cluster, listed: &Listed) {
        cluster.retain_pods(listed);
    }
    fn relist(cluster: &Cluster) -> Option<&tokio::sync::Notify> {
        Some(&cluster.relist)
    }
}

impl Cached for Service {
    const RESOURCE: &'static str = "services";
    fn stats(cluster: &Cluster) -> &ResourceStats {
        &cluster.stats.services
    }
    fn apply(cluster: &Cluster, service: &Self) {
        cluster.apply_service(service);
    }
    fn delete(cluster: &Cluster, service: &Self) {
        cluster.delete_service(service);
    }
    fn retain(cluster: &Cluster, listed: &Listed) {
        cluster.retain_services(listed);
    }
}

impl Cached for EndpointSlice {
    const RESOURCE: &'static str = "endpointslices";
    fn stats(cluster: &Cluster) -> &ResourceStats {
        &cluster.stats.endpointslices
    }
    fn apply(cluster: &Cluster, slice: &Self) {
        cluster.apply_slice(slice);
    }
    fn delete(cluster: &Cluster, slice: &Self) {
        cluster.delete_slice(slice);
    }
    fn retain(cluster: &Cluster, listed: &Listed) {
        cluster.retain_slices(listed);
    }
}

/// A change to one watched kind, for the cache.
enum Change<K> {
    Apply(K),
    Delete(K),
    /// A complete list ended: these objects exist, any other is gone. The
    /// list's objects came as `Apply`s page by page, so a large cluster's
    /// list is never held in memory whole.
    Listed(Listed),
}

/// (namespace, name) and uid of every object of a complete list.
#[derive(Debug, Default)]
pub struct Listed {
    names: HashSet<(String, String)>,
    uids: HashSet<String>,
}

impl Listed {
    fn add(&mut self, meta: &ObjectMeta) {
        if let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) {
            self.names.insert((ns.clone(), name.clone()));
        }
        if let Some(uid) = &meta.uid {
            self.uids.insert(uid.clone());
        }
    }

    fn has_name(&self, (namespace, name): &ObjectKey) -> bool {
        self.names
            .contains(&(namespace.to_string(), name.to_string()))
    }
}

const LIST_PAGE: u32 = 500;
const WATCH_TIMEOUT_S: u32 = 290;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Lists, then watches from the list's resourceVersion, for ever: resumes
/// the watch when the server ends it cleanly or a watch request fails;
/// re-lists after a broken stream, 410 Gone, or when `relist` is notified;
/// backs off exponentially while the API server fails.
async fn reflect<K: Cached>(api: Api<K>, fields: Option<String>, cluster: Arc<Cluster>) {
    let resource = K::RESOURCE;
    let fields = fields.as_deref();
    let stats = K::stats(&cluster);
    let relist = K::relist(&cluster);
    let mut on_change = |change: Change<K>| match change {
        Change::Apply(object) => K::apply(&cluster, &object),
        Change::Delete(object) => K::delete(&cluster, &object),
        Change::Listed(listed) => K::retain(&cluster, &listed),
    };
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    let never = tokio::sync::Notify::new();
    let relist = relist.unwrap_or(&never);
    loop {
        if !first {
            stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let version = match list_all(&api, fields, &mut on_change).await {
            Ok((listed, version)) => {
                on_change(Change::Listed(listed));
                stats.listed.store(true, Ordering::Relaxed);
                version
            }
            Err(error) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.up.store(0, Ordering::Relaxed);
                // Once per outage at warn: the errors counter has the rest.
                if backoff == BACKOFF_MIN {
                    tracing::warn!(
                        %error,
                        resource,
                        "Kubernetes list failed; retrying with backoff while cached metadata keeps \
                         serving. Check that the API server in the kubeconfig (or the in-cluster \
                         service) is reachable from this node and that the tracer's ClusterRole \
                         grants list and watch on this resource (manifests/base/clusterrole.yaml)"
                    );
                } else {
                    tracing::debug!(%error, resource, "Kubernetes list failed again");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        stats.up.store(1, Ordering::Relaxed);
        backoff = BACKOFF_MIN;
        let mut version = version;
        // Watch until the list must be redone.
        loop {
            let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_S);
            if let Some(fields) = fields {
                params = params.fields(fields);
            }
            let stream = tokio::select! {
                stream = api.watch(&params, &version) => stream,
                () = relist.notified() => break,
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    stats.up.store(0, Ordering::Relaxed);
                    tracing::debug!(%error, resource, "Kubernetes watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    stats.restarts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            stats.up.store(1, Ordering::Relaxed);
            backoff = BACKOFF_MIN;
            let mut stream = std::pin::pin!(stream);
            let mut gone = false;
            let mut failed = false;
            loop {
                let event = tokio::select! {
                    event = stream.try_next() => event,
                    () = relist.notified() => { gone = true; break; }
                };
                match event {
                    Ok(Some(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                        if let Some(v) = obj.meta().resource_version.clone() {
                            version = v;
                        }
                        on_change(Change::Apply(obj));
                    }
                    Ok(Some(WatchEvent::Deleted(obj))) => {
                        if let Some(v) = obj.meta().resource_version.clone() {
                            version = v;
                        }
                        on_change(Change::Delete(obj));
                    }
                    Ok(Some(WatchEvent::Bookmark(bookmark))) => {
                        version = bookmark.metadata.resource_version;
                    }
                    Ok(Some(WatchEvent::Error(status))) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        gone = status.code == 410;
                        failed = !gone;
                        break;
                    }
                    // The server ended the watch (timeoutSeconds): resume.
                    Ok(None) => break,
                    Err(error) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%error, resource, "Kubernetes watch stream broke; resuming");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                // A stream that broke may have lost events in between: list
                // again (as client-go's reflector does), after a pause.
                stats.up.store(0, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            if gone || failed {
                break;
            }
        }
    }
}

/// Lists every object page by page, applying each page as it arrives;
/// returns what was listed and the list's resourceVersion.
async fn list_all<K>(
    api: &Api<K>,
    fields: Option<&str>,
    on_change: &mut impl FnMut(Change<K>),
) -> Result<(Listed, String), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut params = ListParams::default().limit(LIST_PAGE);
    if let Some(fields) = fields {
        params = params.fields(fields);
    }
    let mut listed = Listed::default();
    loop {
        let page = api.list(&params).await?;
        for item in page.items {
            listed.add(item.meta());
            on_change(Change::Apply(item));
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => {
                let version = page.metadata.resource_version.unwrap_or_default();
                return Ok((listed, version));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;

    fn owner(kind: &str, name: &str) -> Owner {
        Owner {
            kind: Arc::from(kind),
            name: Arc::from(name),
        }
    }

    #[test]
    fn guesses_deployment_from_replicaset_name() {
        assert_eq!(
            guess_top_owner(&owner("ReplicaSet", "web-7d9f8b6c5d")),
            owner("Deployment", "web")
        );
        assert_eq!(
            guess_top_owner(&owner("ReplicaSet", "plain")),
            owner("ReplicaSet", "plain")
        );
        assert_eq!(
            guess_top_owner(&owner("StatefulSet", "db-12345678")),
            owner("StatefulSet", "db-12345678")
        );
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a valid Pod")
    }

    /// A pod of node-a; `extra` is merged into its metadata.
    fn pod_with(name: &str, ip: &str, metadata: serde_json::Value) -> Pod {
        let mut meta = serde_json::json!({
            "name": name,
            "namespace": "shop",
            "uid": format!("uid-{name}"),
        });
        if let (Some(m), Some(extra)) = (meta.as_object_mut(), metadata.as_object()) {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
        pod(serde_json::json!({
            "metadata": meta,
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
            "status": {
                "podIP": ip,
                "hostIP": "10.0.0.1",
                "containerStatuses": [{
                    "name": "app", "image": "x", "imageID": "", "ready": true,
                    "restartCount": 0,
                    "containerID": "containerd://abc"
                }]
            }
        }))
    }

    fn cluster() -> Cluster {
        Cluster::new(Arc::from("node-a"), Arc::new(KubeStats::default()))
    }

    fn stored(c: &Cluster, name: &str) -> Arc<PodInfo> {
        c.read()
            .pods
            .get(format!("uid-{name}").as_str())
            .cloned()
            .expect("stored")
    }

    #[test]
    fn service_name_precedence() {
        let c = cluster();
        c.apply_pod(&pod_with(
            "annotated",
            "10.1.0.1",
            serde_json::json!({
                "annotations": {
                    SERVICE_NAME_ANNOTATION: "checkout",
                    SERVICE_NAMESPACE_ANNOTATION: "payments"
                },
                "labels": {APP_NAME_LABEL: "not-this"}
            }),
        ));
        c.apply_pod(&pod_with(
            "labelled",
            "10.1.0.2",
            serde_json::json!({"labels": {APP_NAME_LABEL: "cart"}}),
        ));
        c.apply_pod(&pod_with(
            "owned",
            "10.1.0.3",
            serde_json::json!({"ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                "uid": "s", "controller": true
            }]}),
        ));
        c.apply_pod(&pod_with("bare", "10.1.0.4", serde_json::json!({})));
        let annotated = stored(&c, "annotated");
        assert_eq!(&*annotated.service_name, "checkout");
        assert_eq!(&*annotated.service_namespace, "payments");
        assert_eq!(&*stored(&c, "labelled").service_name, "cart");
        assert_eq!(&*stored(&c, "labelled").service_namespace, "shop");
        let owned = stored(&c, "owned");
        assert_eq!(&*owned.service_name, "db");
        assert_eq!(owned.owner, Some(owner("StatefulSet", "db")));
        assert_eq!(&*stored(&c, "bare").service_name, "bare");
        // The container is found by id, and a single container by default.
        let id = owned.identity(Some("abc"));
        assert_eq!(id.container.as_deref(), Some("app"));
        assert_eq!(owned.identity(None).container.as_deref(), Some("app"));
    }

    #[test]
    fn replicaset_owner_waits_for_its_deployment() {
        let c = cluster();
        let rs = serde_json::json!({"ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5f6d7c8b9",
            "uid": "r", "controller": true
        }]});
        c.apply_pod(&pod_with("web-5f6d7c8b9-abcde", "10.1.0.5", rs.clone()));
        let pending = stored(&c, "web-5f6d7c8b9-abcde");
        assert!(pending.owner_pending);
        let ns: Arc<str> = Arc::from("shop");
        c.set_owner(
            &owner("ReplicaSet", "web-5f6d7c8b9"),
            &ns,
            owner("Deployment", "web"),
        );
        let done = stored(&c, "web-5f6d7c8b9-abcde");
        assert!(!done.owner_pending);
        assert_eq!(done.owner, Some(owner("Deployment", "web")));
        assert_eq!(&*done.service_name, "web");
        // A second pod of the same ReplicaSet uses the cached owner at once.
        c.apply_pod(&pod_with("web-5f6d7c8b9-fghij", "10.1.0.6", rs));
        let second = stored(&c, "web-5f6d7c8b9-fghij");
        assert!(!second.owner_pending);
        assert_eq!(&*second.service_name, "web");
        // A failed lookup falls back to the Deployment controller's naming.
        let failed = serde_json::json!({"ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-6b7c8d9f5d",
            "uid": "q", "controller": true
        }]});
        c.apply_pod(&pod_with("api-6b7c8d9f5d-zzzzz", "10.1.0.7", failed));
        c.owner_unknown(&owner("ReplicaSet", "api-6b7c8d9f5d"), &ns);
        let guessed = stored(&c, "api-6b7c8d9f5d-zzzzz");
        assert_eq!(guessed.owner, Some(owner("Deployment", "api")));
        assert_eq!(&*guessed.service_name, "api");
    }

    #[test]
    fn peers_by_cluster_ip_endpoint_and_pod_never_the_node() {
        let c = cluster();
        c.apply_pod(&pod_with(
            "cart-0",
            "10.1.0.9",
            serde_json::json!({"labels": {APP_NAME_LABEL: "cart"}}),
        ));
        let mut host = pod_with("agent", "10.0.0.1", serde_json::json!({}));
        if let Some(spec) = host.spec.as_mut() {
            spec.host_network = Some(true);
        }
        c.apply_pod(&host);
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "front", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}
        }))
        .expect("Service");
        c.apply_service(&service);
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-x1", "namespace": "data",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.2.0.7"], "targetRef": {"kind": "Pod", "name": "db-0"}},
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "hostnet"}},
                {"addresses": ["192.0.2.1"]}
            ]
        }))
        .expect("EndpointSlice");
        c.apply_slice(&slice);
        let name = |ip: &str| {
            c.peer(ip.parse().expect("ip"))
                .map(|p| format!("{}/{}", p.namespace, p.name))
        };
        assert_eq!(name("10.96.0.10").as_deref(), Some("shop/front"));
        assert_eq!(name("10.2.0.7").as_deref(), Some("data/db"));
        assert_eq!(name("10.1.0.9").as_deref(), Some("shop/cart"));
        assert_eq!(name("::ffff:10.1.0.9").as_deref(), Some("shop/cart"));
        // The node's address (host-network pods), and non-pod endpoints.
        assert_eq!(name("10.0.0.1"), None);
        assert_eq!(name("192.0.2.1"), None);
        c.delete_service(&service);
        assert_eq!(name("10.96.0.10"), None);
        c.retain_slices(&Listed::default());
        assert_eq!(name("10.2.0.7"), None);
    }

    #[test]
    fn deleted_and_unlisted_pods_go_after_the_grace_period() {
        let c = cluster();
        let a = pod_with("a", "10.1.1.1", serde_json::json!({}));
        let b = pod_with("b", "10.1.1.2", serde_json::json!({}));
        c.apply_pod(&a);
        c.apply_pod(&b);
        c.delete_pod(&a);
        // Within the grace period the pod and its address stay.
        assert!(c.expire_deleted(Duration::from_secs(60)).is_empty());
        assert!(c.peer("10.1.1.1".parse().expect("ip")).is_some());
        let gone = c.expire_deleted(Duration::ZERO);
        assert_eq!(gone, vec![Arc::<str>::from("uid-a")]);
        assert!(c.peer("10.1.1.1".parse().expect("ip")).is_none());
        // A re-list without b: b was deleted while the watch was down.
        c.retain_pods(&Listed::default());
        assert_eq!(
            c.expire_deleted(Duration::ZERO),
            vec![Arc::<str>::from("uid-b")]
        );
        assert_eq!(c.stats.pods.objects.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unknown_pod_is_waited_for_then_counted_unresolved() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let c = Arc::new(cluster());
        runtime.block_on(async {
            let missing = c
                .wait_for_pod("nope", None, Duration::from_millis(50), &Notify::new())
                .await;
            assert!(missing.is_none());
            assert_eq!(c.stats.unresolved_pods.load(Ordering::Relaxed), 1);
            // A pod that arrives while a resolution waits is found.
            let waiter = {
                let c = c.clone();
                tokio::spawn(async move {
                    c.wait_for_pod(
                        "uid-late",
                        Some("abc"),
                        Duration::from_secs(5),
                        &Notify::new(),
                    )
                    .await
                })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.apply_pod(&pod_with("late", "10.1.2.1", serde_json::json!({})));
            let found = waiter.await.expect("task");
            assert_eq!(found.map(|p| p.name.clone()), Some(Arc::from("late")));
            // Hurried, a wait for a pod nobody knows ends at once.
            let hurry = Notify::new();
            hurry.notify_one();
            let started = std::time::Instant::now();
            let hurried = c
                .wait_for_pod("still-unknown", None, Duration::from_secs(30), &hurry)
                .await;
            assert!(hurried.is_none());
            assert!(started.elapsed() < Duration::from_secs(5));
        });
    }

    #[test]
    fn a_cached_owner_lookup_returns() {
        // The second pod of a ReplicaSet finds its owner cached; that path
        // once held a read guard into `set_owner`'s write lock.
        let c = Arc::new(cluster());
        let rs = serde_json::json!({"ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5f6d7c8b9",
            "uid": "r", "controller": true
        }]});
        let ns: Arc<str> = Arc::from("shop");
        let controller = owner("ReplicaSet", "web-5f6d7c8b9");
        c.set_owner(&controller, &ns, owner("Deployment", "web"));
        c.apply_pod(&pod_with("web-5f6d7c8b9-b", "10.1.3.1", rs));
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = c.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let client = Client::try_from(config).expect("client");
                resolve_owner(&client, &worker, &controller, &ns).await;
            });
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "resolve_owner hung on a cached owner"
        );
        assert_eq!(&*stored(&c, "web-5f6d7c8b9-b").service_name, "web");
    }

    #[test]
    fn a_complete_list_drops_what_it_did_not_list() {
        let c = cluster();
        let service = |name: &str, ip: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop", "uid": format!("s-{name}")},
                "spec": {"clusterIP": ip}
            }))
            .expect("Service")
        };
        let (kept, gone) = (service("kept", "10.96.1.1"), service("gone", "10.96.1.2"));
        c.apply_service(&kept);
        c.apply_service(&gone);
        let mut listed = Listed::default();
        listed.add(&kept.metadata);
        c.retain_services(&listed);
        assert!(c.peer("10.96.1.1".parse().expect("ip")).is_some());
        assert!(c.peer("10.96.1.2".parse().expect("ip")).is_none());
        assert_eq!(c.stats.services.objects.load(Ordering::Relaxed), 1);
        // Pods are kept by uid: a listed pod stays, an unlisted one is deleted.
        let (a, b) = (
            pod_with("a", "10.1.4.1", serde_json::json!({})),
            pod_with("b", "10.1.4.2", serde_json::json!({})),
        );
        c.apply_pod(&a);
        c.apply_pod(&b);
        let mut listed = Listed::default();
        listed.add(&a.metadata);
        c.retain_pods(&listed);
        assert_eq!(
            c.expire_deleted(Duration::ZERO),
            vec![Arc::<str>::from("uid-b")]
        );
    }
}
