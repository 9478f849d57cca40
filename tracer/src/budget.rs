//! One memory budget: `--memory-mib`, else the memory limit of the tracer's
//! own memory cgroup (which since Linux 5.11 also pays for BPF maps), else
//! 512 MiB. It sizes the ring buffers and the kernel's and the daemon's
//! connection tables, and tells when the tracer is short of memory, so that
//! payload capture is shed before anything that makes metrics.

use std::path::{Path, PathBuf};

/// What the daemon needs whatever the traffic: binary, runtime, metric
/// series, the Kubernetes cache of a mid-sized cluster (docs/benchmarks.md:
/// 21 MiB idle without rings, +21 MiB with 10,000 Services).
pub const FIXED_BYTES: u64 = 48 << 20;
/// One traced connection end: the kernel's socket table entry (about 200
/// bytes, preallocated; with the packet path, about 200 more for the
/// `CLIENTS`, `SERVED` and `COVERED` entries sized alike) and the daemon's
/// state (about 900 bytes idle, up to about 3 KiB with parser memos and
/// held chunks).
pub const PER_CONNECTION_BYTES: u64 = 4 << 10;
/// Without a flag or a cgroup limit: the DaemonSet's limit.
pub const DEFAULT_BYTES: u64 = 512 << 20;
/// Usage at which payload is shed, in per cent of the budget...
const SHED_AT_PERCENT: u64 = 90;
/// ...and below which it is captured in full again.
const RESUME_AT_PERCENT: u64 = 80;

const MIB: u64 = 1 << 20;
const MIN_RING_BYTES: u64 = MIB;
const MAX_RING_BYTES: u64 = 64 * MIB;
const MIN_CONNECTIONS: u64 = 16;
const MAX_CONNECTIONS: u64 = 4 << 20;

/// Where the budget came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    /// The memory cgroup whose limit it is (v2 `memory.max`, or v1
    /// `memory.limit_in_bytes`).
    Cgroup(PathBuf),
    Default,
}

/// The budget and what it sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: Source,
    /// All ring buffers together; a power of two.
    pub ring_bytes: u64,
    /// Connection ends traced at once, in the kernel and in the daemon; a
    /// power of two.
    pub max_connections: u64,
}

/// A budget too small for the tracer to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} is {} MiB; the tracer needs at least {} MiB ({} MiB for itself, \
     1 MiB of ring buffers, {MIN_CONNECTIONS} connections): {fix}",
    .bytes / MIB, minimum() / MIB + 1, FIXED_BYTES / MIB
)]
pub struct TooSmall {
    pub bytes: u64,
    pub what: String,
    pub fix: &'static str,
}

const fn minimum() -> u64 {
    FIXED_BYTES + MIN_RING_BYTES + MIN_CONNECTIONS * PER_CONNECTION_BYTES
}

fn power_of_two_floor(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        1 << (63 - n.leading_zeros())
    }
}

impl Budget {
    /// Splits `bytes`: a 64th for the rings (8 MiB of 512), what is left
    /// after the fixed part for connections.
    pub fn plan(bytes: u64, source: Source) -> Result<Self, TooSmall> {
        if bytes < minimum() {
            let (what, fix) = match &source {
                Source::Cgroup(path) => (
                    format!("the memory limit of cgroup {}", path.display()),
                    "raise the container's memory limit",
                ),
                _ => ("--memory-mib".to_string(), "raise --memory-mib"),
            };
            return Err(TooSmall { bytes, what, fix });
        }
        let ring_bytes = power_of_two_floor(bytes / 64).clamp(MIN_RING_BYTES, MAX_RING_BYTES);
        let left = bytes - FIXED_BYTES - ring_bytes;
        let max_connections =
            power_of_two_floor(left / PER_CONNECTION_BYTES).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
        Ok(Self {
            bytes,
            source,
            ring_bytes,
            max_connections,
        })
    }

    /// The budget of this process: `flag_mib` if given, else its cgroup's
    /// limit, else [`DEFAULT_BYTES`].
    pub fn resolve(flag_mib: Option<u32>) -> Result<Self, TooSmall> {
        if let Some(mib) = flag_mib {
            return Self::plan(u64::from(mib) * MIB, Source::Flag);
        }
        match cgroup_limit() {
            Some((limit, dir)) => Self::plan(limit, Source::Cgroup(dir)),
            None => Self::plan(DEFAULT_BYTES, Source::Default),
        }
    }

    /// Memory in use against this budget: the cgroup's usage (what its
    /// limit is enforced on) when the budget is the cgroup's limit, else
    /// this process's resident set.
    pub fn used(&self) -> Option<u64> {
        match &self.source {
            Source::Cgroup(_) => cgroup_usage(),
            _ => resident_bytes(),
        }
    }
}

/// Whether payload capture is being shed, with hysteresis: on at 90% of
/// the budget, off again below 80%.
#[derive(Debug, Default)]
pub struct Pressure {
    shedding: bool,
}

impl Pressure {
    /// Updates with the memory `used` of `budget`; true while shedding.
    pub fn update(&mut self, used: u64, budget: u64) -> bool {
        let percent = used.saturating_mul(100) / budget.max(1);
        if percent >= SHED_AT_PERCENT {
            self.shedding = true;
        } else if percent < RESUME_AT_PERCENT {
            self.shedding = false;
        }
        self.shedding
    }
}

/// This process's memory cgroup and the files holding its limit and usage:
/// `memory.max` and `memory.current` under cgroup v2, `memory.limit_in_bytes`
/// and `memory.usage_in_bytes` under the v1 memory controller.
fn own_memory_cgroup() -> Option<(PathBuf, &'static str, &'static str)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(path);
            if dir.join("memory.limit_in_bytes").is_file() {
                return Some((dir, "memory.limit_in_bytes", "memory.usage_in_bytes"));
            }
        }
        if controllers.is_empty() {
            let dir = Path::new("/sys/fs/cgroup").join(path);
            if dir.join("memory.max").is_file() {
                return Some((dir, "memory.max", "memory.current"));
            }
        }
    }
    None
}

/// The memory limit of this process's cgroup, if it has one.
fn cgroup_limit() -> Option<(u64, PathBuf)> {
    let (dir, limit, _) = own_memory_cgroup()?;
    // v2 writes "max" when unlimited, v1 a number near 2^63.
    let bytes = read_number(&dir.join(limit)).filter(|&b| b < 1 << 62)?;
    Some((bytes, dir))
}

/// What this process's memory cgroup has in use.
fn cgroup_usage() -> Option<u64> {
    let (dir, _, usage) = own_memory_cgroup()?;
    read_number(&dir.join(usage))
}

/// A file holding one number (`max` and anything else: `None`).
fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_keeps_the_former_defaults() {
        let b = Budget::plan(DEFAULT_BYTES, Source::Default).unwrap();
        assert_eq!(b.ring_bytes, 8 * MIB);
        assert_eq!(b.max_connections, 65536);
    }

    #[test]
    fn rings_and_connections_grow_with_the_budget_and_stay_inside_it() {
        for mib in [50, 64, 128, 256, 1024, 4096, 65536] {
            let b = Budget::plan(mib * MIB, Source::Flag).unwrap();
            assert!(b.ring_bytes.is_power_of_two() && b.max_connections.is_power_of_two());
            let planned = FIXED_BYTES + b.ring_bytes + b.max_connections * PER_CONNECTION_BYTES;
            assert!(planned <= b.bytes, "{mib} MiB: {b:?} plans {planned}");
        }
        let small = Budget::plan(64 * MIB, Source::Flag).unwrap();
        assert_eq!((small.ring_bytes, small.max_connections), (MIB, 2048));
        let large = Budget::plan(4096 * MIB, Source::Flag).unwrap();
        assert_eq!(
            (large.ring_bytes, large.max_connections),
            (64 * MIB, 524288)
        );
    }

    #[test]
    fn a_budget_below_the_minimum_names_its_source_and_fix() {
        let e = Budget::plan(32 * MIB, Source::Flag).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--memory-mib is 32 MiB; the tracer needs at least 50 MiB (48 MiB for itself, \
             1 MiB of ring buffers, 16 connections): raise --memory-mib"
        );
        let e = Budget::plan(40 * MIB, Source::Cgroup("/sys/fs/cgroup/pod".into())).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("the memory limit of cgroup /sys/fs/cgroup/pod is 40 MiB"));
        assert!(e
            .to_string()
            .ends_with("raise the container's memory limit"));
        assert!(Budget::plan(50 * MIB, Source::Flag).is_ok());
    }

    #[test]
    fn pressure_turns_on_at_90_and_off_below_80_percent() {
        let mut p = Pressure::default();
        assert!(!p.update(89, 100));
        assert!(p.update(90, 100));
        assert!(p.update(85, 100), "stays on between the thresholds");
        assert!(p.update(80, 100));
        assert!(!p.update(79, 100));
        assert!(!p.update(85, 100), "stays off between the thresholds");
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let b = Budget::plan(DEFAULT_BYTES, Source::Default).unwrap();
        let used = b.used().unwrap();
        assert!(used > MIB && used < DEFAULT_BYTES, "{used}");
    }
}
