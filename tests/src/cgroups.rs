//! Kubelet-style cgroups for real processes, so the tracer can map a traced
//! process to a pod the way it does on a node: from the pod UID and container
//! ID in the process's cgroup path.
//!
//! The paths are those kubelet and containerd create in the cgroup v2
//! hierarchy (the one `bpf_get_current_cgroup_id` reports): with the systemd
//! driver `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`,
//! with the cgroupfs driver `kubepods/<qos>/pod<uid>/<id>` (a Guaranteed pod
//! has no QoS level in either). On a hybrid host (v1 controllers, v2 at
//! `/sys/fs/cgroup/unified`, like the test machine) they go under
//! `/sys/fs/cgroup/unified`; on a pure v2 host under `/sys/fs/cgroup`.
//!
//! Creating cgroups needs root. A [`PodCgroup`] removes what it created on
//! drop, after moving any process still inside back to the root cgroup.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::process::{Guard, TestDir};

/// A pod's QoS class, which names a level of kubelet's cgroup tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The level's name in cgroup paths (`burstable`), `None` for Guaranteed,
    /// whose pods sit directly under `kubepods`.
    pub fn level(self) -> Option<&'static str> {
        match self {
            Self::Guaranteed => None,
            Self::Burstable => Some("burstable"),
            Self::BestEffort => Some("besteffort"),
        }
    }

    /// The pod's `status.qosClass`.
    pub fn class(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// The root of the cgroup v2 hierarchy: `/sys/fs/cgroup/unified` on a hybrid
/// host, `/sys/fs/cgroup` on a pure v2 one.
pub fn unified_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").is_file() {
        hybrid.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// One container's cgroup, created (with its pod and QoS parents) for the
/// lifetime of the value.
#[derive(Debug)]
pub struct PodCgroup {
    root: PathBuf,
    /// The container's directory under `root`.
    path: PathBuf,
    /// The path as `/proc/PID/cgroup` shows it (`/kubepods.slice/...`).
    relative: String,
    /// The directories this value created, outermost first.
    created: Vec<PathBuf>,
}

impl PodCgroup {
    /// The systemd cgroup driver's layout (kubelet's default, with containerd).
    pub fn systemd(pod_uid: &str, container_id: &str, qos: Qos) -> Self {
        // systemd unit names cannot hold '-' inside a component, so kubelet
        // writes the UID with underscores.
        let uid = pod_uid.replace('-', "_");
        let mut components = vec!["kubepods.slice".to_string()];
        let pod_slice = match qos.level() {
            Some(level) => {
                components.push(format!("kubepods-{level}.slice"));
                format!("kubepods-{level}-pod{uid}.slice")
            }
            None => format!("kubepods-pod{uid}.slice"),
        };
        components.push(pod_slice);
        components.push(format!("cri-containerd-{}.scope", bare_id(container_id)));
        Self::create(&components)
    }

    /// The cgroupfs cgroup driver's layout.
    pub fn cgroupfs(pod_uid: &str, container_id: &str, qos: Qos) -> Self {
        let mut components = vec!["kubepods".to_string()];
        if let Some(level) = qos.level() {
            components.push(level.to_string());
        }
        components.push(format!("pod{pod_uid}"));
        components.push(bare_id(container_id).to_string());
        Self::create(&components)
    }

    fn create(components: &[String]) -> Self {
        let root = unified_root();
        let mut path = root.clone();
        let mut created = Vec::new();
        for component in components {
            path.push(component);
            match fs::create_dir(&path) {
                Ok(()) => created.push(path.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!(
                    "cannot create cgroup {} (creating cgroups needs root): {e}",
                    path.display()
                ),
            }
        }
        let relative = format!("/{}", components.join("/"));
        Self {
            root,
            path,
            relative,
            created,
        }
    }

    /// The container cgroup's directory (`/sys/fs/cgroup/unified/kubepods...`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as the `0::` line of `/proc/PID/cgroup` shows it.
    pub fn cgroup_path(&self) -> &str {
        &self.relative
    }

    /// The cgroup ID, what `bpf_get_current_cgroup_id()` returns for a member
    /// (the directory's inode number in cgroupfs).
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path.display()))
            .ino()
    }

    /// Moves `pid` (all its threads) into the cgroup and checks it arrived.
    pub fn add(&self, pid: u32) {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", procs.display()));
        let now = cgroup_of(pid);
        assert_eq!(
            now.as_deref(),
            Some(self.relative.as_str()),
            "process {pid} is not in {} after writing {}",
            self.relative,
            procs.display()
        );
    }

    /// Spawns `cmd` with the child already inside the cgroup when it execs:
    /// it moves itself between fork and exec, so the program never runs
    /// (and the tracer never sees it) outside the pod.
    pub fn spawn_in(&self, cmd: &mut Command) -> Child {
        self.prepare(cmd);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} in {}: {e}", self.relative))
    }

    /// [`Self::spawn_in`], as a [`Guard`] (output in the test directory,
    /// stopped on drop).
    pub fn spawn_guard(&self, name: &str, cmd: &mut Command, dir: &TestDir) -> Guard {
        self.prepare(cmd);
        Guard::spawn(name, cmd, dir)
    }

    fn prepare(&self, cmd: &mut Command) {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())
            .expect("a cgroup path has no NUL byte");
        // SAFETY: the closure runs in the forked child before exec and only
        // calls open(2), write(2) and close(2), which are async-signal-safe;
        // the path was allocated before the fork. Opening in the child (not
        // before the fork) keeps the Command safe to spawn again.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if written == 1 {
                    Ok(())
                } else {
                    Err(err)
                }
            });
        }
    }

    /// The pids inside the cgroup now.
    pub fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // A cgroup with members cannot be removed: move stragglers out first.
        let root_procs = self.root.join("cgroup.procs");
        for pid in self.procs() {
            let _ = fs::write(&root_procs, pid.to_string());
        }
        // Innermost first; a parent another PodCgroup still uses stays.
        for dir in self.created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The `0::` (cgroup v2) path of a process, from `/proc/PID/cgroup`.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// A container ID without its runtime prefix (`containerd://`).
fn bare_id(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random 64-hex-digit container ID, like containerd's.
pub fn random_container_id() -> String {
    hex(&random_bytes::<32>())
}

/// A random version-4 UUID, like a pod's `metadata.uid`.
pub fn random_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
