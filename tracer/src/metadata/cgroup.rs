//! The container and pod a process belongs to, read from its cgroup.
//!
//! The metadata stage reads `/proc/PID/cgroup` once per process and hands the
//! text to [`parse`]; this module turns it into a [`CgroupIdentity`]: the
//! 64-hex container id, the runtime the path names, the Kubernetes pod UID
//! and the pod's QoS class. It is pure string work: no I/O, no allocation but
//! the strings of the result, and no panic on any input, because the text
//! comes from whatever the host's runtimes and kubelet happened to write.
//!
//! The file has one `hierarchy-id:controllers:path` line per hierarchy:
//! cgroup v1 has one line per controller, cgroup v2 the single line
//! `0::/path`, and the hybrid layout both. Paths may be relative to the
//! reader's cgroup namespace (`/../../kubepods-…`), and a dead cgroup's v2
//! path ends in ` (deleted)`.
//!
//! Layouts it knows (`<uid_>` is the pod UID with underscores, `<id>` 64 hex):
//!
//! * kubelet systemd driver: `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/`
//!   then `cri-containerd-<id>.scope` (containerd), `crio-<id>.scope` or the
//!   conmon's `crio-conmon-<id>.scope` (CRI-O), `docker-<id>.scope`
//!   (dockershim, cri-dockerd);
//! * containerd's colon form, when the kubelet asks for systemd paths but runc
//!   uses cgroupfs: `/system.slice/containerd.service/kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>`;
//! * kubelet cgroupfs driver: `/kubepods[/<qos>]/pod<uid>/<id>`, or
//!   `…/crio-<id>` for CRI-O (a bare id does not say which runtime);
//! * kind and k3d, whose nodes are Docker containers: the node's
//!   `/docker/<node-id>/` or `/system.slice/docker-<node-id>.scope/` in front
//!   of either layout above, and kind's own `kubelet.slice/kubelet-kubepods…`
//!   root; the pod's container is the innermost id;
//! * containers outside Kubernetes: `/docker/<id>`, `/system.slice/docker-<id>.scope`,
//!   nerdctl's `nerdctl-<id>.scope`, Podman's `libpod-<id>.scope` (and its
//!   `libpod-conmon-<id>.scope`, which is not the container);
//! * anything else (`/system.slice/ssh.service`, `/user.slice/…`, `/`) names
//!   neither a container nor a pod.

/// Container runtime named by the cgroup path, when the path says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A container id with no runtime name next to it (cgroupfs layouts,
    /// Podman).
    Unknown,
}

/// What a process's cgroup says about it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupIdentity {
    /// The cgroup path the identity was read from, as the file wrote it (the
    /// v2 `0::` path when it names a container or pod, else the first v1 path
    /// that does; when none does, the v2 path, else the preferred v1 one).
    pub path: String,
    /// 64 lowercase hex characters (containerd, CRI-O, Docker all use 64-hex ids).
    pub container_id: Option<String>,
    /// None when no container id.
    pub runtime: Option<Runtime>,
    /// The pod UID with dashes, as Kubernetes prints it (`8d7a...-...`),
    /// lowercase. The systemd driver writes it with underscores
    /// (`pod8d7a_..._...slice`): converted back to dashes.
    pub pod_uid: Option<String>,
    /// Kubernetes QoS class from the path when present: "guaranteed" (no
    /// besteffort/burstable segment under kubepods), "burstable",
    /// "besteffort". Only set with a pod UID.
    pub qos: Option<&'static str>,
}

/// Parses the whole /proc/PID/cgroup text.
///
/// The identity comes from the `0::` line if it names a container or pod,
/// else from the first v1 line that does, preferring the memory, cpu,cpuacct,
/// pids and name=systemd hierarchies in that order. Lines without two colons
/// are skipped.
pub fn parse(proc_cgroup: &str) -> CgroupIdentity {
    let mut best: Option<(LineRank, &str, Findings<'_>)> = None;
    for line in proc_cgroup.lines() {
        // The path may itself hold colons: only the first two separate fields.
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let findings = scan(path);
        let rank = LineRank::new(hierarchy, controllers, &findings);
        // Strictly better only, so the first of equally good lines wins.
        if best
            .as_ref()
            .is_none_or(|(best_rank, ..)| rank < *best_rank)
        {
            best = Some((rank, path, findings));
        }
    }
    match best {
        Some((_, path, findings)) => findings.into_identity(path),
        None => CgroupIdentity::default(),
    }
}

/// Parses one cgroup path (the part after the second ':').
pub fn parse_path(path: &str) -> CgroupIdentity {
    scan(path).into_identity(path)
}

const GUARANTEED: &str = "guaranteed";
const BURSTABLE: &str = "burstable";
const BESTEFFORT: &str = "besteffort";

const CONTAINER_ID_LEN: usize = 64;
/// `8-4-4-4-12` hex digits.
const POD_UID_LEN: usize = 36;
const POD_UID_SEPARATOR_OFFSETS: [usize; 4] = [8, 13, 18, 23];

/// What cgroup v2 appends to the path of a cgroup that was removed while a
/// zombie still sat in it.
const DELETED_SUFFIX: &str = " (deleted)";

/// Scope-name prefixes that put the container itself in the cgroup, and the
/// runtime each names. nerdctl is containerd's own CLI.
const CONTAINER_PREFIXES: [(&str, Runtime); 5] = [
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("docker-", Runtime::Docker),
    ("nerdctl-", Runtime::Containerd),
    ("libpod-", Runtime::Unknown),
];

/// Scope-name prefixes of the monitor process that CRI-O and Podman run next
/// to each container: its id is the container's, but it is not in it, so the
/// process belongs to whatever encloses the scope (the pod, if any).
const CONMON_PREFIXES: [&str; 2] = ["crio-conmon-", "libpod-conmon-"];

/// How good a /proc/PID/cgroup line is as the source of the identity;
/// smaller is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct LineRank {
    tier: u8,
    controller_preference: u8,
}

impl LineRank {
    fn new(hierarchy: &str, controllers: &str, findings: &Findings<'_>) -> Self {
        let unified = hierarchy == "0" && controllers.is_empty();
        let tier = match (findings.names_something(), unified) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        };
        let controller_preference = if unified {
            0
        } else {
            controller_preference(controllers)
        };
        Self {
            tier,
            controller_preference,
        }
    }
}

/// Every runtime and cgroup driver moves a container into these v1
/// hierarchies; others (rdma, cpuset, net_cls on some hosts) are often left
/// at the parent's or the root cgroup.
fn controller_preference(controllers: &str) -> u8 {
    controllers
        .split(',')
        .map(|controller| match controller {
            "memory" => 0,
            // CentOS 7 prints "cpuacct,cpu", later kernels "cpu,cpuacct".
            "cpu" | "cpuacct" => 1,
            "pids" => 2,
            "name=systemd" => 3,
            _ => 4,
        })
        .min()
        .unwrap_or(4)
}

/// What one path names, borrowed from it so that ranking the lines of a file
/// allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
struct Findings<'a> {
    container: Option<ContainerRef<'a>>,
    pod: Option<PodRef<'a>>,
}

#[derive(Debug, Clone, Copy)]
struct ContainerRef<'a> {
    id: &'a str,
    runtime: Runtime,
}

#[derive(Debug, Clone, Copy)]
struct PodRef<'a> {
    /// Validated shape, dashes or underscores as the path wrote them.
    uid: &'a str,
    qos: Option<&'static str>,
}

impl Findings<'_> {
    fn names_something(&self) -> bool {
        self.container.is_some() || self.pod.is_some()
    }

    fn into_identity(self, path: &str) -> CgroupIdentity {
        CgroupIdentity {
            path: path.to_owned(),
            container_id: self.container.map(|container| container.id.to_owned()),
            runtime: self.container.map(|container| container.runtime),
            pod_uid: self.pod.map(|pod| pod.uid.replace('_', "-")),
            qos: self.pod.and_then(|pod| pod.qos),
        }
    }
}

/// One path segment's meaning.
enum Segment<'a> {
    Pod(PodRef<'a>),
    Container(ContainerRef<'a>),
    Other,
}

/// Walks the path from the root down, so the innermost container and pod win:
/// with kind and k3d the outer id is the Kubernetes node's own container.
fn scan(path: &str) -> Findings<'_> {
    let path = path.strip_suffix(DELETED_SUFFIX).unwrap_or(path);
    let mut findings = Findings::default();
    let mut parent = "";
    // `:` separates containerd's colon form `<pod>.slice:cri-containerd:<id>`
    // into what would otherwise be three segments. The `..` that lead paths
    // relative to the reader's cgroup namespace stay: they name nothing, and
    // a pod right below one has an unknown parent, hence an unknown QoS.
    let segments = path.split(['/', ':']).filter(|segment| !segment.is_empty());
    for segment in segments {
        match classify(segment, parent) {
            Segment::Pod(pod) => {
                findings.pod = Some(pod);
                // An id above the pod belongs to something enclosing the whole
                // node (a kind or k3d node container), not to this pod.
                findings.container = None;
            }
            Segment::Container(container) => findings.container = Some(container),
            Segment::Other => {}
        }
        parent = segment;
    }
    findings
}

fn classify<'a>(segment: &'a str, parent: &str) -> Segment<'a> {
    if let Some(pod) = cgroupfs_pod(segment, parent).or_else(|| systemd_pod(segment)) {
        return Segment::Pod(pod);
    }
    let stem = segment.strip_suffix(".scope").unwrap_or(segment);
    if is_container_id(stem) {
        return Segment::Container(ContainerRef {
            id: stem,
            runtime: runtime_named_by_parent(parent),
        });
    }
    if CONMON_PREFIXES
        .iter()
        .any(|prefix| stem.strip_prefix(prefix).is_some_and(is_container_id))
    {
        return Segment::Other;
    }
    CONTAINER_PREFIXES
        .iter()
        .find_map(|&(prefix, runtime)| {
            let id = stem.strip_prefix(prefix).filter(|id| is_container_id(id))?;
            Some(Segment::Container(ContainerRef { id, runtime }))
        })
        .unwrap_or(Segment::Other)
}

/// cgroupfs driver: `pod<uid>`, under its QoS directory (none for guaranteed
/// pods, which sit right under `kubepods`).
fn cgroupfs_pod<'a>(segment: &'a str, parent: &str) -> Option<PodRef<'a>> {
    let uid = segment.strip_prefix("pod").filter(|uid| is_pod_uid(uid))?;
    let qos = match parent {
        "burstable" => Some(BURSTABLE),
        "besteffort" => Some(BESTEFFORT),
        "kubepods" => Some(GUARANTEED),
        // The path starts below kubepods (cgroup namespace): unknown.
        _ => None,
    };
    Some(PodRef { uid, qos })
}

/// systemd driver: `kubepods[-<qos>]-pod<uid_>.slice`, with kind's `kubelet-`
/// in front. The QoS is in the name, so it survives namespace-relative paths.
fn systemd_pod(segment: &str) -> Option<PodRef<'_>> {
    let stem = segment.strip_suffix(".slice")?;
    let uid_start = stem.len().checked_sub(POD_UID_LEN)?;
    // `get` rather than indexing: the cut may fall inside a multi-byte char.
    let uid = stem.get(uid_start..)?;
    let owner = stem.get(..uid_start)?.strip_suffix("pod")?;
    if !is_pod_uid(uid) {
        return None;
    }
    let qos = if owner.ends_with("kubepods-burstable-") {
        BURSTABLE
    } else if owner.ends_with("kubepods-besteffort-") {
        BESTEFFORT
    } else if owner.ends_with("kubepods-") {
        GUARANTEED
    } else {
        return None;
    };
    Some(PodRef {
        uid,
        qos: Some(qos),
    })
}

/// A bare id says its runtime only through the directory above it: Docker's
/// cgroupfs parent `/docker`, or the middle of containerd's colon form.
fn runtime_named_by_parent(parent: &str) -> Runtime {
    match parent {
        "docker" => Runtime::Docker,
        "cri-containerd" => Runtime::Containerd,
        _ => Runtime::Unknown,
    }
}

/// Runtimes write ids in lowercase; an uppercase one was not written by them
/// and would never match the id the runtime and the API server report.
fn is_lower_hex(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'a'..=b'f')
}

fn is_container_id(candidate: &str) -> bool {
    candidate.len() == CONTAINER_ID_LEN && candidate.bytes().all(is_lower_hex)
}

/// `8-4-4-4-12` lowercase hex, all separators dashes (cgroupfs) or all
/// underscores (systemd).
fn is_pod_uid(candidate: &str) -> bool {
    let bytes = candidate.as_bytes();
    if bytes.len() != POD_UID_LEN {
        return false;
    }
    let separator = bytes[POD_UID_SEPARATOR_OFFSETS[0]];
    if separator != b'-' && separator != b'_' {
        return false;
    }
    bytes.iter().enumerate().all(|(offset, &byte)| {
        if POD_UID_SEPARATOR_OFFSETS.contains(&offset) {
            byte == separator
        } else {
            is_lower_hex(byte)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Runtime::{Containerd, CriO, Docker, Unknown};

    /// Placeholders the table's texts use, so that each row shows its layout
    /// rather than 64 hex digits.
    const ID: &str = "648b712a5c6a52d8c51f8b9520c1fa01edbaf2a95073747a9d5bff3ab8ef1bcd";
    const NODE: &str = "7771124ec21bcf3442cde9e342ad6271c30d0607f5123339ea4a28d2f7d4cdbb";
    const OTHER: &str = "6a9286e171392ff9d3017229f25c0afeb79b825ed03b895d0ad4ef091a45a2ab";
    const UID: &str = "216f49a6-ed5a-4c70-a278-0c8eac4be071";

    fn expand(template: &str) -> String {
        template
            .replace("{id}", ID)
            .replace("{node}", NODE)
            .replace("{other}", OTHER)
            .replace("{uid}", UID)
            .replace("{uid_}", &UID.replace('-', "_"))
            // Hostile variants of the id.
            .replace("{id63}", &ID[1..])
            .replace("{ID}", &ID.to_uppercase())
    }

    struct Row {
        /// `/proc/PID/cgroup` text.
        text: &'static str,
        path: &'static str,
        container: Option<(&'static str, Runtime)>,
        pod: Option<&'static str>,
        qos: Option<&'static str>,
    }

    const fn row(
        text: &'static str,
        path: &'static str,
        container: Option<(&'static str, Runtime)>,
        pod: Option<&'static str>,
        qos: Option<&'static str>,
    ) -> Row {
        Row {
            text,
            path,
            container,
            pod,
            qos,
        }
    }

    const CONTAINERD: Option<(&str, Runtime)> = Some(("{id}", Containerd));
    const CRIO: Option<(&str, Runtime)> = Some(("{id}", CriO));
    const DOCKER: Option<(&str, Runtime)> = Some(("{id}", Docker));
    const BARE_ID: Option<(&str, Runtime)> = Some(("{id}", Unknown));
    const POD: Option<&str> = Some("{uid}");

    const TABLE: &[Row] = &[
        // containerd, systemd driver, cgroup v2, burstable.
        row(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("burstable"),
        ),
        // containerd, systemd driver, cgroup v2, guaranteed (no QoS slice).
        row(
            "0::/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("guaranteed"),
        ),
        // containerd, systemd driver, cgroup v1 (CentOS 7 kernel order), besteffort.
        row(
            "11:hugetlb:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             10:cpuset:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             9:perf_event:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             8:net_prio,net_cls:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             7:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             6:freezer:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             5:blkio:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             4:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             3:cpuacct,cpu:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             2:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("besteffort"),
        ),
        // containerd, systemd driver, hybrid (Ubuntu 20.04): the 0:: line wins.
        row(
            "12:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             11:cpuset:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             10:rdma:/\n\
             9:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             8:hugetlb:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             7:blkio:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             6:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             5:devices:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             4:net_cls,net_prio:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             3:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             2:perf_event:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n\
             0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("burstable"),
        ),
        // containerd, cgroupfs driver, cgroup v1 (GKE COS), burstable: a bare id names no runtime.
        row(
            "12:hugetlb:/kubepods/burstable/pod{uid}/{id}\n\
             11:memory:/kubepods/burstable/pod{uid}/{id}\n\
             10:devices:/kubepods/burstable/pod{uid}/{id}\n\
             9:cpuset:/kubepods/burstable/pod{uid}/{id}\n\
             8:freezer:/kubepods/burstable/pod{uid}/{id}\n\
             7:net_cls,net_prio:/kubepods/burstable/pod{uid}/{id}\n\
             6:blkio:/kubepods/burstable/pod{uid}/{id}\n\
             5:rdma:/\n\
             4:cpu,cpuacct:/kubepods/burstable/pod{uid}/{id}\n\
             3:perf_event:/kubepods/burstable/pod{uid}/{id}\n\
             2:pids:/kubepods/burstable/pod{uid}/{id}\n\
             1:name=systemd:/kubepods/burstable/pod{uid}/{id}\n",
            "/kubepods/burstable/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("burstable"),
        ),
        // containerd, cgroupfs driver, cgroup v2, guaranteed (pod right under kubepods).
        row(
            "0::/kubepods/pod{uid}/{id}\n",
            "/kubepods/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("guaranteed"),
        ),
        // containerd 1.5+, systemd-style cgroupsPath but runc on cgroupfs (colon form), cgroup v1.
        row(
            "12:cpu,cpuacct:/system.slice/containerd.service/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{id}\n\
             11:memory:/system.slice/containerd.service/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{id}\n\
             10:pids:/system.slice/containerd.service/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{id}\n\
             1:name=systemd:/system.slice/containerd.service/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{id}\n",
            "/system.slice/containerd.service/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{id}",
            CONTAINERD,
            POD,
            Some("besteffort"),
        ),
        // containerd colon form, cgroup v2 relative to the reader's cgroup namespace.
        row(
            "0::/../../kubepods-burstable-pod{uid_}.slice:cri-containerd:{id}\n",
            "/../../kubepods-burstable-pod{uid_}.slice:cri-containerd:{id}",
            CONTAINERD,
            POD,
            Some("burstable"),
        ),
        // CRI-O, systemd driver, cgroup v2 (OpenShift 4), besteffort.
        row(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{id}.scope\n",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{id}.scope",
            CRIO,
            POD,
            Some("besteffort"),
        ),
        // CRI-O, systemd driver, cgroup v2: the conmon process is the pod's, not the container's.
        row(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-conmon-{id}.scope\n",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-conmon-{id}.scope",
            None,
            POD,
            Some("besteffort"),
        ),
        // CRI-O, systemd driver, cgroup v1 (RHEL 8), guaranteed.
        row(
            "12:pids:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             11:cpuset:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             10:memory:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             9:hugetlb:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             8:net_cls,net_prio:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             7:perf_event:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             6:rdma:/\n\
             5:cpu,cpuacct:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             4:devices:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             3:freezer:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             2:blkio:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope\n",
            "/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope",
            CRIO,
            POD,
            Some("guaranteed"),
        ),
        // CRI-O, cgroupfs driver, cgroup v1, besteffort.
        row(
            "11:memory:/kubepods/besteffort/pod{uid}/crio-{id}\n\
             10:cpu,cpuacct:/kubepods/besteffort/pod{uid}/crio-{id}\n\
             9:pids:/kubepods/besteffort/pod{uid}/crio-{id}\n\
             1:name=systemd:/kubepods/besteffort/pod{uid}/crio-{id}\n",
            "/kubepods/besteffort/pod{uid}/crio-{id}",
            CRIO,
            POD,
            Some("besteffort"),
        ),
        // CRI-O, cgroupfs driver, cgroup v2, conmon in its own cgroup.
        row(
            "0::/kubepods/besteffort/pod{uid}/crio-conmon-{id}\n",
            "/kubepods/besteffort/pod{uid}/crio-conmon-{id}",
            None,
            POD,
            Some("besteffort"),
        ),
        // CRI-O, cgroupfs driver, cgroup v2, conmon_cgroup = "pod": the pod's own cgroup.
        row(
            "0::/kubepods/burstable/pod{uid}\n",
            "/kubepods/burstable/pod{uid}",
            None,
            POD,
            Some("burstable"),
        ),
        // CRI-O, cgroup v2, read from a cgroup namespace one level down: no pod visible.
        row(
            "0::/../crio-{id}.scope\n",
            "/../crio-{id}.scope",
            CRIO,
            None,
            None,
        ),
        // Docker (dockershim), systemd driver, cgroup v1, burstable.
        row(
            "11:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{id}.scope\n\
             10:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{id}.scope\n\
             9:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{id}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{id}.scope\n",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{id}.scope",
            DOCKER,
            POD,
            Some("burstable"),
        ),
        // Docker (cri-dockerd), systemd driver, cgroup v2, guaranteed.
        row(
            "0::/kubepods.slice/kubepods-pod{uid_}.slice/docker-{id}.scope\n",
            "/kubepods.slice/kubepods-pod{uid_}.slice/docker-{id}.scope",
            DOCKER,
            POD,
            Some("guaranteed"),
        ),
        // Docker (dockershim), cgroupfs driver, cgroup v1: the bare id does not name Docker.
        row(
            "11:memory:/kubepods/besteffort/pod{uid}/{id}\n\
             10:cpu,cpuacct:/kubepods/besteffort/pod{uid}/{id}\n\
             9:pids:/kubepods/besteffort/pod{uid}/{id}\n\
             1:name=systemd:/kubepods/besteffort/pod{uid}/{id}\n",
            "/kubepods/besteffort/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("besteffort"),
        ),
        // Plain Docker, cgroupfs driver, cgroup v1 (CentOS 7, Docker 1.13).
        row(
            "11:hugetlb:/docker/{id}\n\
             10:cpuset:/docker/{id}\n\
             9:perf_event:/docker/{id}\n\
             8:net_prio,net_cls:/docker/{id}\n\
             7:devices:/docker/{id}\n\
             6:freezer:/docker/{id}\n\
             5:blkio:/docker/{id}\n\
             4:memory:/docker/{id}\n\
             3:cpuacct,cpu:/docker/{id}\n\
             2:pids:/docker/{id}\n\
             1:name=systemd:/docker/{id}\n",
            "/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // Plain Docker, hybrid (Ubuntu 18.04): old runc left the unified line at the shim's cgroup.
        row(
            "12:cpuset:/docker/{id}\n\
             11:memory:/docker/{id}\n\
             10:pids:/docker/{id}\n\
             9:cpu,cpuacct:/docker/{id}\n\
             1:name=systemd:/docker/{id}\n\
             0::/system.slice/containerd.service\n",
            "/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // Plain Docker, systemd driver, cgroup v2 with --cgroupns=host (Docker 20.10+).
        row(
            "0::/system.slice/docker-{id}.scope\n",
            "/system.slice/docker-{id}.scope",
            DOCKER,
            None,
            None,
        ),
        // Plain Docker, cgroupfs driver, cgroup v2.
        row("0::/docker/{id}\n", "/docker/{id}", DOCKER, None, None),
        // Plain Docker, systemd inside the container (nested init.scope), cgroup v2.
        row(
            "0::/system.slice/docker-{id}.scope/init.scope\n",
            "/system.slice/docker-{id}.scope/init.scope",
            DOCKER,
            None,
            None,
        ),
        // Docker, cgroup v2, a zombie whose cgroup was removed.
        row(
            "0::/system.slice/docker-{id}.scope (deleted)\n",
            "/system.slice/docker-{id}.scope (deleted)",
            DOCKER,
            None,
            None,
        ),
        // kind, cgroup v1, seen from the host: node container (cgroupfs) around a cgroupfs pod.
        row(
            "12:memory:/docker/{node}/kubepods/burstable/pod{uid}/{id}\n\
             11:cpu,cpuacct:/docker/{node}/kubepods/burstable/pod{uid}/{id}\n\
             10:pids:/docker/{node}/kubepods/burstable/pod{uid}/{id}\n\
             1:name=systemd:/docker/{node}/kubepods/burstable/pod{uid}/{id}\n",
            "/docker/{node}/kubepods/burstable/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("burstable"),
        ),
        // kind, cgroup v1, host Docker on the systemd driver.
        row(
            "11:memory:/system.slice/docker-{node}.scope/kubepods/besteffort/pod{uid}/{id}\n\
             10:cpu,cpuacct:/system.slice/docker-{node}.scope/kubepods/besteffort/pod{uid}/{id}\n\
             1:name=systemd:/system.slice/docker-{node}.scope/kubepods/besteffort/pod{uid}/{id}\n",
            "/system.slice/docker-{node}.scope/kubepods/besteffort/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("besteffort"),
        ),
        // kind, cgroup v2, inside the node's cgroup namespace (kubelet.slice root).
        row(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("besteffort"),
        ),
        // kind, cgroup v2, seen from the host, Docker systemd driver, guaranteed pod.
        row(
            "0::/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("guaranteed"),
        ),
        // kind, cgroup v2, seen from the host, Docker cgroupfs driver.
        row(
            "0::/docker/{node}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/docker/{node}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("burstable"),
        ),
        // kind, cgroup v2, the node's kubelet seen from the host: in the node container, no pod.
        row(
            "0::/system.slice/docker-{node}.scope/system.slice/kubelet.service\n",
            "/system.slice/docker-{node}.scope/system.slice/kubelet.service",
            Some(("{node}", Docker)),
            None,
            None,
        ),
        // k3s, cgroupfs driver (its default), cgroup v1.
        row(
            "11:memory:/kubepods/besteffort/pod{uid}/{id}\n\
             10:cpu,cpuacct:/kubepods/besteffort/pod{uid}/{id}\n\
             9:pids:/kubepods/besteffort/pod{uid}/{id}\n\
             1:name=systemd:/kubepods/besteffort/pod{uid}/{id}\n",
            "/kubepods/besteffort/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("besteffort"),
        ),
        // k3s, systemd driver, cgroup v2.
        row(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("burstable"),
        ),
        // k3d (k3s in Docker), cgroup v1, seen from the host.
        row(
            "11:memory:/docker/{node}/kubepods/besteffort/pod{uid}/{id}\n\
             10:cpu,cpuacct:/docker/{node}/kubepods/besteffort/pod{uid}/{id}\n\
             1:name=systemd:/docker/{node}/kubepods/besteffort/pod{uid}/{id}\n",
            "/docker/{node}/kubepods/besteffort/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("besteffort"),
        ),
        // k3d, cgroup v2, seen from the host, Docker systemd driver, guaranteed pod.
        row(
            "0::/system.slice/docker-{node}.scope/kubepods/pod{uid}/{id}\n",
            "/system.slice/docker-{node}.scope/kubepods/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("guaranteed"),
        ),
        // k3d, cgroup v2, inside the node's cgroup namespace.
        row(
            "0::/kubepods/burstable/pod{uid}/{id}\n",
            "/kubepods/burstable/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("burstable"),
        ),
        // containerd systemd driver, cgroup v2, relative to the reader's cgroup namespace.
        row(
            "0::/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope\n",
            "/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            POD,
            Some("besteffort"),
        ),
        // cgroupfs driver, cgroup v2, relative path that starts below the QoS directory.
        row(
            "0::/../../pod{uid}/{id}\n",
            "/../../pod{uid}/{id}",
            BARE_ID,
            POD,
            None,
        ),
        // cgroupfs driver, cgroup v2, relative path that still shows the QoS directory.
        row(
            "0::/../burstable/pod{uid}/{id}\n",
            "/../burstable/pod{uid}/{id}",
            BARE_ID,
            POD,
            Some("burstable"),
        ),
        // cgroup v2, a process at the root of the reader's own cgroup namespace.
        row("0::/\n", "/", None, None, None),
        // Podman, rootful, cgroup v2 (payload in the scope's `container` child).
        row(
            "0::/machine.slice/libpod-{id}.scope/container\n",
            "/machine.slice/libpod-{id}.scope/container",
            BARE_ID,
            None,
            None,
        ),
        // Podman, rootless, cgroup v2: the conmon next to the container is not in it.
        row(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{id}.scope\n",
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{id}.scope",
            None,
            None,
            None,
        ),
        // nerdctl (containerd), systemd driver, cgroup v2.
        row(
            "0::/system.slice/nerdctl-{id}.scope\n",
            "/system.slice/nerdctl-{id}.scope",
            CONTAINERD,
            None,
            None,
        ),
        // Host service, cgroup v2.
        row(
            "0::/system.slice/ssh.service\n",
            "/system.slice/ssh.service",
            None,
            None,
            None,
        ),
        // Login session, cgroup v2.
        row(
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "/user.slice/user-0.slice/session-1.scope",
            None,
            None,
            None,
        ),
        // systemd itself, cgroup v2.
        row("0::/init.scope\n", "/init.scope", None, None, None),
        // The kubelet, a host service, cgroup v2.
        row(
            "0::/system.slice/kubelet.service\n",
            "/system.slice/kubelet.service",
            None,
            None,
            None,
        ),
        // A QoS slice with no pod in it, cgroup v2.
        row(
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "/kubepods.slice/kubepods-burstable.slice",
            None,
            None,
            None,
        ),
        // Hybrid whose v1 and unified lines name different cgroups: the 0:: line wins.
        row(
            "11:memory:/docker/{other}\n\
             10:cpu,cpuacct:/docker/{other}\n\
             1:name=systemd:/docker/{other}\n\
             0::/docker/{id}\n",
            "/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // Login session, hybrid (Ubuntu 20.04): nothing named, the 0:: path is reported.
        row(
            "12:pids:/user.slice/user-0.slice/session-1.scope\n\
             11:memory:/user.slice\n\
             10:rdma:/\n\
             3:cpu,cpuacct:/user.slice\n\
             1:name=systemd:/user.slice/user-0.slice/session-1.scope\n\
             0::/user.slice/user-0.slice/session-1.scope\n",
            "/user.slice/user-0.slice/session-1.scope",
            None,
            None,
            None,
        ),
        // Host service, cgroup v1 (CentOS 7): nothing named, the memory line is reported.
        row(
            "11:hugetlb:/\n\
             4:memory:/system.slice/sshd.service\n\
             3:cpuacct,cpu:/system.slice/sshd.service\n\
             1:name=systemd:/system.slice/sshd.service\n",
            "/system.slice/sshd.service",
            None,
            None,
            None,
        ),
        // cgroup v1 whose hierarchies disagree: memory beats every other line.
        row(
            "12:net_cls,net_prio:/docker/{other}\n\
             11:pids:/docker/{other}\n\
             10:memory:/docker/{id}\n\
             9:cpu,cpuacct:/docker/{other}\n\
             1:name=systemd:/docker/{other}\n",
            "/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // cgroup v1 with no memory line: cpu,cpuacct beats pids and name=systemd.
        row(
            "12:pids:/docker/{other}\n\
             11:cpu,cpuacct:/docker/{id}\n\
             1:name=systemd:/docker/{other}\n",
            "/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // cgroup v1 with only unpreferred lines and name=systemd: name=systemd wins.
        row(
            "5:devices:/docker/{other}\n\
             1:name=systemd:/docker/{id}\n",
            "/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // cgroup v1 with two equally unpreferred lines that both name a container: the first wins.
        row(
            "8:devices:/docker/{id}\n\
             7:freezer:/docker/{other}\n",
            "/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // kind, cgroup v1, seen from the host: a process in the pod's own cgroup
        // (CRI-O conmon_cgroup = "pod") is the pod's, not the node container's.
        row(
            "11:memory:/docker/{node}/kubepods/burstable/pod{uid}\n\
             10:cpu,cpuacct:/docker/{node}/kubepods/burstable/pod{uid}\n\
             1:name=systemd:/docker/{node}/kubepods/burstable/pod{uid}\n",
            "/docker/{node}/kubepods/burstable/pod{uid}",
            None,
            POD,
            Some("burstable"),
        ),
        // Podman inside a Docker container, cgroup v2, seen from the host: the
        // conmon is in the outer container only.
        row(
            "0::/system.slice/docker-{node}.scope/machine.slice/libpod-conmon-{id}.scope\n",
            "/system.slice/docker-{node}.scope/machine.slice/libpod-conmon-{id}.scope",
            Some(("{node}", Docker)),
            None,
            None,
        ),
        // Hostile: empty input.
        row("", "", None, None, None),
        // Hostile: blank lines only.
        row("\n\n\r\n", "", None, None, None),
        // Hostile: a line without colons, even one holding a container path.
        row("/docker/{id}\n", "", None, None, None),
        // Hostile: one colon only.
        row("0:/docker/{id}\n", "", None, None, None),
        // Hostile: a 63-hex id.
        row("0::/docker/{id63}\n", "/docker/{id63}", None, None, None),
        // Hostile: a 65-hex id.
        row("0::/docker/{id}f\n", "/docker/{id}f", None, None, None),
        // Hostile: an uppercase id.
        row(
            "0::/system.slice/docker-{ID}.scope\n",
            "/system.slice/docker-{ID}.scope",
            None,
            None,
            None,
        ),
        // Hostile: a scope whose "id" is not hex.
        row(
            "0::/system.slice/docker-not-a-container-id.scope\n",
            "/system.slice/docker-not-a-container-id.scope",
            None,
            None,
            None,
        ),
        // Hostile: a pod uid one digit short; the container id is still known.
        row(
            "0::/kubepods/burstable/pod216f49a6-ed5a-4c70-a278-0c8eac4be07/{id}\n",
            "/kubepods/burstable/pod216f49a6-ed5a-4c70-a278-0c8eac4be07/{id}",
            BARE_ID,
            None,
            None,
        ),
        // Hostile: a pod uid mixing dashes and underscores.
        row(
            "0::/kubepods.slice/kubepods-pod216f49a6-ed5a_4c70_a278_0c8eac4be071.slice/cri-containerd-{id}.scope\n",
            "/kubepods.slice/kubepods-pod216f49a6-ed5a_4c70_a278_0c8eac4be071.slice/cri-containerd-{id}.scope",
            CONTAINERD,
            None,
            None,
        ),
        // Hostile: an uppercase pod uid.
        row(
            "0::/kubepods/pod216F49A6-ED5A-4C70-A278-0C8EAC4BE071/{id}\n",
            "/kubepods/pod216F49A6-ED5A-4C70-A278-0C8EAC4BE071/{id}",
            BARE_ID,
            None,
            None,
        ),
        // Hostile: a pod slice whose 36-byte cut falls inside a multi-byte character.
        row(
            "0::/kubepods-podé16f49a6_ed5a_4c70_a278_0c8eac4be071.slice\n",
            "/kubepods-podé16f49a6_ed5a_4c70_a278_0c8eac4be071.slice",
            None,
            None,
            None,
        ),
        // Hostile: `pod` segments with nothing after them.
        row(
            "0::/kubepods/pod/kubepods-pod.slice/pod.slice\n",
            "/kubepods/pod/kubepods-pod.slice/pod.slice",
            None,
            None,
            None,
        ),
        // Hostile: a pod-shaped slice that is not the kubelet's.
        row(
            "0::/system.slice/backup-pod{uid_}.slice\n",
            "/system.slice/backup-pod{uid_}.slice",
            None,
            None,
            None,
        ),
        // Hostile: control characters and replacement characters.
        row(
            "\u{0}\u{1}\u{7f}::\u{fffd}\u{fffd}/\u{0}\n\u{fffd}",
            "\u{fffd}\u{fffd}/\u{0}",
            None,
            None,
            None,
        ),
        // Hostile: colons inside a v1 path are the path's, not field separators.
        row(
            "4:memory:/odd:name/docker/{id}\n",
            "/odd:name/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // Hostile: a `..` between kubepods and the pod hides the QoS directory.
        row(
            "0::/kubepods/../pod{uid}/{id}\n",
            "/kubepods/../pod{uid}/{id}",
            BARE_ID,
            POD,
            None,
        ),
        // Hostile: the 0:: line first, unlike the kernel: a v1 line that names a container still wins.
        row(
            "0::/system.slice/containerd.service\n\
             4:memory:/docker/{id}\n",
            "/docker/{id}",
            DOCKER,
            None,
            None,
        ),
        // Hostile: more `..` than there are segments.
        row("0::/../../../../..\n", "/../../../../..", None, None, None),
        // Hostile: CRLF line ends.
        row("0::/docker/{id}\r\n", "/docker/{id}", DOCKER, None, None),
        // Hostile: a non-numeric hierarchy id; the line's path still counts (as v1).
        row("x:y:/docker/{id}\n", "/docker/{id}", DOCKER, None, None),
    ];

    #[test]
    fn table_of_real_world_cgroup_files() {
        for (index, row) in TABLE.iter().enumerate() {
            let text = expand(row.text);
            let expected = CgroupIdentity {
                path: expand(row.path),
                container_id: row.container.map(|(id, _)| expand(id)),
                runtime: row.container.map(|(_, runtime)| runtime),
                pod_uid: row.pod.map(expand),
                qos: row.qos,
            };
            let identity = parse(&text);
            assert_eq!(identity, expected, "row {index}: {text:?}");
            assert_invariants(&identity, &text);
        }
    }

    #[test]
    fn parse_path_agrees_with_a_single_v2_line() {
        for row in TABLE {
            let text = expand(row.text);
            let mut lines = text.lines();
            let (Some(line), None) = (lines.next(), lines.next()) else {
                continue;
            };
            let Some(path) = line.strip_prefix("0::") else {
                continue;
            };
            assert_eq!(parse_path(path), parse(&text), "{path:?}");
        }
    }

    #[test]
    fn pod_uid_comes_back_with_dashes() {
        let identity = parse_path(&expand(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice",
        ));
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
        assert_eq!(identity.qos, Some("besteffort"));
        assert_eq!(identity.container_id, None);
    }

    /// What must hold for any input.
    fn assert_invariants(identity: &CgroupIdentity, input: &str) {
        assert!(input.contains(&identity.path), "{input:?}");
        assert_eq!(identity.container_id.is_some(), identity.runtime.is_some());
        if let Some(id) = &identity.container_id {
            assert!(is_container_id(id), "{id:?}");
        }
        if let Some(uid) = &identity.pod_uid {
            assert!(is_pod_uid(uid) && !uid.contains('_'), "{uid:?}");
        }
        if identity.qos.is_some() {
            assert!(identity.pod_uid.is_some());
        }
    }

    /// xorshift64: reproducible without a crate.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    /// Pieces of real cgroup files, so that random inputs reach the deep
    /// branches that random bytes alone almost never do.
    const TOKENS: &[&str] = &[
        "0::",
        "12:memory:",
        "3:cpu,cpuacct:",
        "1:name=systemd:",
        ":",
        "/",
        "\n",
        "..",
        "kubepods",
        "kubepods.slice",
        "kubelet-kubepods-",
        "burstable",
        "besteffort",
        "-pod",
        "pod",
        "216f49a6_ed5a_4c70_a278_0c8eac4be071",
        "216f49a6-ed5a-4c70-a278-0c8eac4be071",
        "216f49a6",
        ".slice",
        ".scope",
        "cri-containerd-",
        "crio-",
        "crio-conmon-",
        "docker",
        "docker-",
        "libpod-conmon-",
        "648b712a5c6a52d8c51f8b9520c1fa01edbaf2a95073747a9d5bff3ab8ef1bcd",
        "648b712a5c6a52d8c51f8b9520c1fa01",
        " (deleted)",
        "é",
        "\u{0}",
        "\r",
    ];

    /// Random tokens glued together, with a stray random byte now and then.
    fn token_soup(rng: &mut Xorshift) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..rng.below(40) {
            if rng.below(3) == 0 {
                bytes.push(rng.next() as u8);
            } else {
                bytes.extend_from_slice(TOKENS[rng.below(TOKENS.len())].as_bytes());
            }
        }
        bytes
    }

    /// A table row damaged by a few random edits: close enough to real files
    /// to get past the shape checks, broken enough to probe their edges.
    fn damaged_row(rng: &mut Xorshift) -> Vec<u8> {
        let mut bytes = expand(TABLE[rng.below(TABLE.len())].text).into_bytes();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(4) {
                0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                1 => {
                    let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                    bytes.splice(at..at, token.iter().copied());
                }
                2 => {
                    let end = (at + rng.below(70)).min(bytes.len());
                    bytes.drain(at..end);
                }
                _ => bytes.truncate(at),
            }
        }
        bytes
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
        for round in 0..6000 {
            let bytes = if round % 2 == 0 {
                token_soup(&mut rng)
            } else {
                damaged_row(&mut rng)
            };
            let text = String::from_utf8_lossy(&bytes);
            assert_invariants(&parse(&text), &text);
            assert_invariants(&parse_path(&text), &text);
        }
    }

    #[test]
    fn random_bytes_name_nothing() {
        let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
            let text = String::from_utf8_lossy(&bytes);
            let identity = parse(&text);
            assert_invariants(&identity, &text);
            // 64 random bytes all landing in lowercase hex is beyond chance.
            assert_eq!(identity.container_id, None, "{text:?}");
        }
    }
}
