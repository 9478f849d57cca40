//! The metadata stage: who a traced process is. It turns a process id into a
//! typed [`Identity`] (executable, container, pod, workload) once per
//! process, on its own thread, so the event loop never reads /proc, parses a
//! cgroup or waits for the Kubernetes API.
//!
//! Input: process ids from `conntrack` (through [`Identities::slot`]) and,
//! when Kubernetes is configured, the pods, Services and EndpointSlices that
//! `kubernetes` watches. Output: filled [`Slot`]s that connections carry and
//! the records take their labels from; peer lookups ([`Identities::peer`]);
//! and the uids of deleted pods (after their grace period), whose series the
//! metrics stage drops.

pub mod cgroup;
pub mod kubernetes;
pub mod procfs;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use rustc_hash::FxBuildHasher;

pub use kubernetes::{KubeOptions, KubeStats};

/// Host paths the tracer reads (the DaemonSet must mount them); a test
/// checks the manifests against this list.
pub const HOST_PATHS: &[&str] = &[
    // /proc/PID/{exe,cgroup,fd,net/tcp*,ns/net}: names, cgroups, old connections.
    "/proc",
    // The syscall and sock tracepoints' ids (tracefs).
    "/sys/kernel/tracing",
    // BTF of the running kernel: the loader checks struct layouts against it.
    "/sys/kernel/btf/vmlinux",
];

/// Who a traced process is. Built once per process; connections share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Executable file name (`nginx`), or the task name when /proc had none.
    pub exe: Arc<str>,
    /// OpenTelemetry `service.name`: from the pod when there is one (see
    /// `kubernetes::service_name`), else the executable (or its override).
    pub service_name: Arc<str>,
    /// 64-hex container id from the cgroup, when in a container.
    pub container_id: Option<Arc<str>>,
    /// The pod, when the process runs in one the API server knows.
    pub pod: Option<Arc<PodIdentity>>,
    /// Resolved with less than it could have: its pod was not known in time,
    /// or the metadata stage was too busy to look. Resolved again, for new
    /// connections, after [`RETRY_PARTIAL`].
    pub partial: bool,
}

/// The Kubernetes side of an identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodIdentity {
    pub uid: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub node: Arc<str>,
    /// The container of the pod the process runs in, when known.
    pub container: Option<Arc<str>>,
    /// The top-level controller (a Deployment rather than its ReplicaSet).
    pub owner: Option<Owner>,
    /// OpenTelemetry `service.namespace`: the annotation, else the namespace.
    pub service_namespace: Arc<str>,
}

/// A pod's top-level owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`,
    /// `ReplicaSet` (without a Deployment) or any other controller kind.
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

/// The callee of a client connection, when its address is a Service's
/// ClusterIP or a pod's IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerService {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

/// A process's identity, filled by the metadata thread. Connections hold it
/// from their first event; records wait for it to be filled.
pub type Slot = Arc<SlotCell>;

/// The cell behind a [`Slot`].
#[derive(Debug, Default)]
pub struct SlotCell {
    identity: OnceLock<Arc<Identity>>,
    /// Raised when many records wait for this identity: the resolver stops
    /// waiting for the pod and answers with what it knows, so memory stays
    /// bounded and nothing is dropped.
    hurry: tokio::sync::Notify,
}

impl SlotCell {
    pub fn get(&self) -> Option<&Arc<Identity>> {
        self.identity.get()
    }

    /// Fills the cell; the first identity wins.
    pub fn set(&self, identity: Arc<Identity>) -> Result<(), Arc<Identity>> {
        self.identity.set(identity)
    }

    /// Asks the resolver to answer now.
    pub fn hurry(&self) {
        self.hurry.notify_one();
    }
}

/// The executable name of a process that died before anything named it.
const UNKNOWN: &str = "unknown";

/// How long a partial identity is used before a new connection of the
/// process looks it up again.
pub const RETRY_PARTIAL: Duration = Duration::from_secs(30);

/// Processes whose slots are cached at once; past it the cache restarts.
const MAX_CACHED_PROCESSES: usize = 65536;

/// Requests waiting for the metadata thread; past it a process is named by
/// its task name at once (counted).
const MAX_QUEUED_REQUESTS: usize = 4096;

/// What the metadata thread is asked to do.
struct Request {
    tgid: u32,
    comm: Arc<str>,
    slot: Slot,
}

/// The pipeline's handle on the metadata stage.
pub struct Identities {
    /// Each process's slot, and when its resolution started.
    cache: HashMap<u32, (Slot, Instant), FxBuildHasher>,
    resolver: ResolverHandle,
    /// Requests turned away because the queue was full.
    pub queue_full: u64,
    /// [`RETRY_PARTIAL`], shorter in tests.
    retry_partial: Duration,
}

enum ResolverHandle {
    /// Resolves on the caller's thread: replays and tests, no Kubernetes.
    Inline(Resolver),
    /// Sends to the metadata thread.
    Background {
        requests: tokio::sync::mpsc::Sender<Request>,
        cluster: Option<Arc<kubernetes::Cluster>>,
        overrides: Arc<HashMap<String, String>>,
    },
}

impl Identities {
    /// Resolves on the calling thread from /proc alone (no Kubernetes): for
    /// replays and tests.
    pub fn inline(overrides: HashMap<String, String>) -> Self {
        Self {
            cache: HashMap::default(),
            resolver: ResolverHandle::Inline(Resolver {
                overrides: Arc::new(overrides),
                cluster: None,
            }),
            queue_full: 0,
            retry_partial: RETRY_PARTIAL,
        }
    }

    /// The identity slot of a process, created (and its resolution started)
    /// on first sight. `comm` is the task name the kernel saw, used when
    /// /proc no longer has the process.
    pub fn slot(&mut self, tgid: u32, comm: &[u8; 16]) -> Slot {
        if let Some((slot, since)) = self.cache.get(&tgid) {
            // A process first seen without a name (adopted mid-stream after
            // it died) is named again once an event carries its task name;
            // a partial identity is looked up again after a while.
            let again = slot.get().is_some_and(|id| {
                (&*id.exe == UNKNOWN && comm[0] != 0)
                    || (id.partial && since.elapsed() >= self.retry_partial)
            });
            if !again {
                return slot.clone();
            }
        }
        let slot = Slot::default();
        let comm = task_name(comm);
        match &self.resolver {
            ResolverHandle::Inline(resolver) => {
                let _ = slot.set(Arc::new(resolver.resolve_now(tgid, &comm)));
            }
            ResolverHandle::Background {
                requests,
                overrides,
                ..
            } => {
                let request = Request {
                    tgid,
                    comm: comm.clone(),
                    slot: slot.clone(),
                };
                if requests.try_send(request).is_err() {
                    self.queue_full += 1;
                    let mut identity = fallback_identity(&comm, overrides);
                    identity.partial = true;
                    let _ = slot.set(Arc::new(identity));
                }
            }
        }
        if self.cache.len() >= MAX_CACHED_PROCESSES {
            self.cache.clear();
        }
        self.cache.insert(tgid, (slot.clone(), Instant::now()));
        slot
    }

    /// The process exited: a reused pid is another program.
    pub fn forget(&mut self, tgid: u32) {
        self.cache.remove(&tgid);
    }

    /// The Service or pod behind a remote address, if the cluster knows it.
    /// An in-memory lookup: no network call.
    pub fn peer(&self, ip: IpAddr) -> Option<Arc<PeerService>> {
        match &self.resolver {
            ResolverHandle::Background {
                cluster: Some(cluster),
                ..
            } => cluster.peer(ip),
            _ => None,
        }
    }
}

/// An identity made from the task name alone.
fn fallback_identity(comm: &Arc<str>, overrides: &HashMap<String, String>) -> Identity {
    let exe: Arc<str> = if comm.is_empty() {
        Arc::from(UNKNOWN)
    } else {
        comm.clone()
    };
    Identity {
        service_name: overrides
            .get(&*exe)
            .map_or_else(|| exe.clone(), |s| Arc::from(s.as_str())),
        exe,
        container_id: None,
        pod: None,
        partial: false,
    }
}

fn task_name(comm: &[u8; 16]) -> Arc<str> {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    Arc::from(String::from_utf8_lossy(&comm[..end]).as_ref())
}

/// Turns a process into an identity: /proc, its cgroup, then the pod.
#[derive(Clone)]
struct Resolver {
    overrides: Arc<HashMap<String, String>>,
    cluster: Option<Arc<kubernetes::Cluster>>,
}

impl Resolver {
    /// Everything /proc says, without waiting for the API server.
    fn resolve_now(&self, tgid: u32, comm: &Arc<str>) -> Identity {
        self.read_process(tgid, comm).0
    }

    /// The identity /proc gives, and the cgroup it read.
    fn read_process(&self, tgid: u32, comm: &Arc<str>) -> (Identity, cgroup::CgroupIdentity) {
        let mut identity = match procfs::exe_name(tgid) {
            Some(exe) if !exe.is_empty() => fallback_identity(&Arc::from(exe), &self.overrides),
            _ => fallback_identity(comm, &self.overrides),
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{tgid}/cgroup"))
            .map(|text| cgroup::parse(&text))
            .unwrap_or_default();
        identity.container_id = cgroup.container_id.as_deref().map(Arc::from);
        (identity, cgroup)
    }

    /// Fills in the pod, waiting for the API server at most `wait` (or
    /// until `hurry`).
    async fn resolve(
        &self,
        tgid: u32,
        comm: &Arc<str>,
        wait: Duration,
        hurry: &tokio::sync::Notify,
    ) -> Identity {
        let (mut identity, cgroup) = self.read_process(tgid, comm);
        let (Some(cluster), Some(uid)) = (&self.cluster, cgroup.pod_uid) else {
            return identity;
        };
        match cluster
            .wait_for_pod(&uid, identity.container_id.as_deref(), wait, hurry)
            .await
        {
            Some(pod) => {
                identity.service_name = pod.service_name.clone();
                identity.pod = Some(pod.identity(identity.container_id.as_deref()));
            }
            None => identity.partial = true,
        }
        identity
    }
}

/// How long a new process's records wait for its pod to appear in the API
/// before they are published with the process's own labels (counted in
/// `tracer_kubernetes_errors_total{resource="pods"}`).
pub const POD_WAIT: Duration = Duration::from_secs(10);

/// The running metadata stage: its thread, and what it reports.
pub struct Stage {
    pub identities: Identities,
    /// Watch and cache counters, for `tracer_kubernetes_*`.
    pub kube_stats: Option<Arc<KubeStats>>,
    /// Uids of pods deleted longer than the grace period ago.
    pub gone_pods: std::sync::mpsc::Receiver<Arc<str>>,
}

impl Stage {
    /// True once every Kubernetes cache has been listed once, or when there
    /// is no Kubernetes: `/readyz` waits for it.
    pub fn synced(&self) -> bool {
        self.kube_stats.as_ref().is_none_or(|s| s.synced())
    }
}

/// Starts the metadata thread: the resolver, and the Kubernetes watchers
/// when `kube` is configured. Fails only on bad configuration; an
/// unreachable API server is retried in the background.
pub async fn start(
    overrides: HashMap<String, String>,
    kube: &KubeOptions,
) -> Result<Stage, kubernetes::KubeError> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (requests, incoming) = tokio::sync::mpsc::channel::<Request>(MAX_QUEUED_REQUESTS);
    let (gone_tx, gone_pods) = std::sync::mpsc::channel();
    let overrides = Arc::new(overrides);
    let thread_overrides = overrides.clone();
    let kube = kube.clone();
    // The thread owns its own runtime: the API client and the resolutions
    // never compete with the event loop for its thread.
    std::thread::Builder::new()
        .name("tracer-metadata".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(kubernetes::KubeError::Runtime(error)));
                    return;
                }
            };
            runtime.block_on(serve(kube, thread_overrides, incoming, gone_tx, ready_tx));
        })
        .map_err(kubernetes::KubeError::Runtime)?;
    let started = ready_rx.await.map_err(|_| {
        kubernetes::KubeError::Runtime(std::io::Error::other("the metadata thread ended"))
    })??;
    Ok(Stage {
        identities: Identities {
            cache: HashMap::default(),
            resolver: ResolverHandle::Background {
                requests,
                cluster: started.clone(),
                overrides,
            },
            queue_full: 0,
            retry_partial: RETRY_PARTIAL,
        },
        kube_stats: started.map(|c| c.stats()),
        gone_pods,
    })
}

/// The metadata thread: connects (when configured), reports back, then
/// starts the watchers and resolves identities until the pipeline is gone.
async fn serve(
    kube: KubeOptions,
    overrides: Arc<HashMap<String, String>>,
    mut incoming: tokio::sync::mpsc::Receiver<Request>,
    gone: std::sync::mpsc::Sender<Arc<str>>,
    ready: tokio::sync::oneshot::Sender<
        Result<Option<Arc<kubernetes::Cluster>>, kubernetes::KubeError>,
    >,
) {
    let cluster = match kubernetes::connect(&kube).await {
        Ok(Some((client, node))) => {
            let cluster = Arc::new(kubernetes::Cluster::new(
                node,
                Arc::new(KubeStats::default()),
            ));
            kubernetes::spawn_watchers(client, cluster.clone(), kube.pod_grace, gone);
            Some(cluster)
        }
        Ok(None) => None,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    if ready.send(Ok(cluster.clone())).is_err() {
        return;
    }
    let resolver = Resolver { overrides, cluster };
    while let Some(request) = incoming.recv().await {
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let identity = resolver
                .resolve(request.tgid, &request.comm, POD_WAIT, &request.slot.hurry)
                .await;
            // Once per process, not per event.
            tracing::debug!(
                pid = request.tgid,
                service = %identity.service_name,
                pod = %identity.pod.as_ref().map_or(String::new(), |p| format!("{}/{}", p.namespace, p.name)),
                partial = identity.partial,
                "process identified"
            );
            let _ = request.slot.set(Arc::new(identity));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_resolves_own_process_by_executable() {
        let mut ids = Identities::inline(HashMap::new());
        let slot = ids.slot(std::process::id(), &[0; 16]);
        let identity = slot.get().expect("inline resolution is immediate");
        let exe = std::env::current_exe().expect("current_exe");
        let name = exe.file_name().expect("file name").to_string_lossy();
        assert_eq!(&*identity.exe, &*name);
        assert_eq!(identity.service_name, identity.exe);
        assert!(identity.pod.is_none());
        // Cached: the same slot comes back.
        assert!(Arc::ptr_eq(&slot, &ids.slot(std::process::id(), &[0; 16])));
    }

    #[test]
    fn gone_process_falls_back_to_task_name_and_overrides() {
        let mut overrides = HashMap::new();
        overrides.insert("worker".to_string(), "billing".to_string());
        let mut ids = Identities::inline(overrides);
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"worker");
        // Pid 0 never has a /proc entry.
        let slot = ids.slot(0, &comm);
        let identity = slot.get().expect("filled");
        assert_eq!(&*identity.exe, "worker");
        assert_eq!(&*identity.service_name, "billing");
        let unnamed = ids.slot(u32::MAX, &[0; 16]);
        assert_eq!(&*unnamed.get().expect("filled").exe, "unknown");
    }

    #[test]
    fn partial_identities_are_looked_up_again_and_a_full_queue_is_counted() {
        let (requests, mut incoming) = tokio::sync::mpsc::channel::<Request>(1);
        let mut ids = Identities {
            cache: HashMap::default(),
            resolver: ResolverHandle::Background {
                requests,
                cluster: None,
                overrides: Arc::new(HashMap::new()),
            },
            queue_full: 0,
            retry_partial: Duration::ZERO,
        };
        let comm = *b"server\0\0\0\0\0\0\0\0\0\0";
        let first = ids.slot(7, &comm);
        assert!(first.get().is_none(), "resolved on the metadata thread");
        // The queue holds one request: the next process is named at once.
        let busy = ids.slot(8, &comm);
        assert_eq!(ids.queue_full, 1);
        let named = busy.get().expect("named at once");
        assert!(named.partial);
        assert_eq!(&*named.service_name, "server");
        let request = incoming.try_recv().expect("queued");
        assert_eq!(request.tgid, 7);
        let mut partial = fallback_identity(&request.comm, &HashMap::new());
        partial.partial = true;
        let _ = request.slot.set(Arc::new(partial));
        // Partial: the next connection asks again; a complete one would not.
        let again = ids.slot(7, &comm);
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(incoming.try_recv().expect("asked again").tgid, 7);
        let _ = again.set(Arc::new(fallback_identity(&request.comm, &HashMap::new())));
        assert!(Arc::ptr_eq(&again, &ids.slot(7, &comm)));
    }
}
