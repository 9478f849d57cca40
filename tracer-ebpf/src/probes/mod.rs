//! Attach points: thin wrappers that decode their context and call the shared
//! logic in `conn` and `capture`.

mod process;
mod sock_state;
mod syscalls_kprobe;
mod syscalls_tp;
