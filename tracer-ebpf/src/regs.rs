//! Syscall arguments read from the task's saved user registers. At syscall
//! exit the registers still hold the arguments (the kernel writes only the
//! return value into `ax`), so exit hooks need no enter hook to remember them.
//! x86-64 only: other architectures save their arguments elsewhere.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_probe_read_kernel,
    generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
};

// Offsets in `struct pt_regs` (arch/x86/include/asm/ptrace.h), a stable ABI.
// dx, si, di and orig_ax sit next to each other: one read fetches all four.
const DX_SI_DI_ORIG_AX: usize = 96;
const R10: usize = 56;

/// The calling task, unless it is the tracer itself, with its syscall's
/// arguments: the common start of every hook.
pub struct Caller {
    pub pid_tgid: u64,
    pub tgid: u32,
    pub args: SyscallArgs,
}

impl Caller {
    #[inline(always)]
    pub fn current() -> Option<Self> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if tgid == crate::self_tgid() {
            return None;
        }
        Some(Self {
            pid_tgid,
            tgid,
            args: SyscallArgs::current()?,
        })
    }
}

/// The current task's saved user registers: the syscall's first three
/// arguments and number, read once.
pub struct SyscallArgs {
    regs: usize,
    /// rdx, rsi, rdi, orig_ax.
    head: [u64; 4],
}

impl SyscallArgs {
    #[inline(always)]
    pub fn current() -> Option<Self> {
        // SAFETY: both helpers take no pointer from us; the result is only
        // ever dereferenced through bpf_probe_read_kernel.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize;
        if regs == 0 {
            return None;
        }
        // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
        let head =
            unsafe { bpf_probe_read_kernel((regs + DX_SI_DI_ORIG_AX) as *const [u64; 4]) }.ok()?;
        Some(Self { regs, head })
    }

    /// First, second and third syscall arguments (rdi, rsi, rdx).
    #[inline(always)]
    pub fn arg0(&self) -> u64 {
        self.head[2]
    }
    #[inline(always)]
    pub fn arg1(&self) -> u64 {
        self.head[1]
    }
    #[inline(always)]
    pub fn arg2(&self) -> u64 {
        self.head[0]
    }
    /// Fourth syscall argument (r10 in the syscall ABI).
    #[inline(always)]
    pub fn arg3(&self) -> Option<u64> {
        // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
        unsafe { bpf_probe_read_kernel((self.regs + R10) as *const u64) }.ok()
    }
    /// The syscall number the task entered with.
    #[inline(always)]
    pub fn syscall_nr(&self) -> u64 {
        self.head[3]
    }
}
