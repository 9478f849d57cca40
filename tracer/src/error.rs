//! Start-up errors: each names what is missing and how to fix it, in one line,
//! because an operator reads them in a pod's last log line.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(
        "missing privileges: {0}. Run as root (sudo), or as a privileged container / with \
         these capabilities granted"
    )]
    Privileges(String),
    #[error("kernel BTF unavailable: {0}")]
    Btf(String),
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); mount it \
         with: mount -t tracefs nodev /sys/kernel/tracing"
    )]
    Tracefs(String),
    #[error(
        "this kernel has neither syscall tracepoints (CONFIG_FTRACE_SYSCALLS) nor kprobes \
         (CONFIG_KPROBES): no way to hook socket syscalls"
    )]
    NoAttachMode,
    #[error("--attach {mode} is not possible here: {why}; use --attach auto")]
    ModeUnavailable {
        mode: &'static str,
        why: &'static str,
    },
    #[error("loading the kernel programs failed: {0}")]
    Load(String),
    #[error("attaching {program} to {target} failed: {reason}")]
    Attach {
        program: &'static str,
        target: String,
        reason: String,
    },
}
