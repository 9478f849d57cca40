//! Syscall arguments read from the task's saved user registers. At syscall
//! exit the registers still hold the arguments (the kernel writes only the
//! return value into `ax`), so exit hooks need no enter hook to remember them.
//! x86-64 only: other architectures save their arguments elsewhere.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid,
    generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
};

// Indices of 8-byte words in `struct pt_regs`
// (arch/x86/include/asm/ptrace.h), a stable ABI. `bpf_task_pt_regs` returns a
// BTF-typed pointer, so the verifier checks each read against the kernel's
// own layout at load time and lets it be a plain load, not a helper call.
const R10: usize = 7;
const DX: usize = 12;
const SI: usize = 13;
const DI: usize = 14;
const ORIG_AX: usize = 15;

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

/// The current task's saved user registers: the syscall's arguments and
/// number.
pub struct SyscallArgs {
    regs: *const u64,
}

impl SyscallArgs {
    #[inline(always)]
    pub fn current() -> Option<Self> {
        // SAFETY: both helpers take no pointer from us.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
        (!regs.is_null()).then_some(Self { regs })
    }

    #[inline(always)]
    fn word(&self, index: usize) -> u64 {
        // SAFETY: `regs` is a non-null BTF-typed `struct pt_regs *` and
        // `index` one of the constants above: the verifier checks the load.
        unsafe { core::ptr::read_volatile(self.regs.add(index)) }
    }

    /// First, second, third and fourth syscall arguments (rdi, rsi, rdx, r10).
    #[inline(always)]
    pub fn arg0(&self) -> u64 {
        self.word(DI)
    }
    #[inline(always)]
    pub fn arg1(&self) -> u64 {
        self.word(SI)
    }
    #[inline(always)]
    pub fn arg2(&self) -> u64 {
        self.word(DX)
    }
    #[inline(always)]
    pub fn arg3(&self) -> u64 {
        self.word(R10)
    }
    /// The syscall number the task entered with.
    #[inline(always)]
    pub fn syscall_nr(&self) -> u64 {
        self.word(ORIG_AX)
    }
}
