//! The packet path's notes of the node's own connections: which process
//! connected each client socket (`CLIENTS`; a packet names no process), and
//! which connections a local socket accepted (`SERVED`). The daemon looks a
//! flow's ends up here when the flow's first payload arrives. Fed by the
//! same `inet_sock_set_state` changes as the socket table (`conn.rs`), also
//! when only the packet path runs.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use tracer_common::{ClientOwner, SocketEnds};

use crate::{
    conn::{comm, StateChange, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_RECV, TCP_SYN_SENT},
    maps::{CLIENTS, CLIENT_CONNECTING, SERVED},
};

/// A client socket's process, taken inside `connect` (`SYN_SENT`, whatever
/// made the call: a syscall, io_uring) and filed under the socket's ends
/// once they are all known (`ESTABLISHED`); an accepted socket's ends, once
/// it is established.
pub fn note_client(change: &StateChange) {
    match (change.oldstate, change.newstate) {
        (_, TCP_SYN_SENT) => {
            let owner = ClientOwner {
                tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                comm: comm(),
            };
            let _ = CLIENT_CONNECTING.insert(&change.sk, &owner, 0);
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            // SAFETY: plain map lookup; the value is copied out at once.
            let Some(owner) = (unsafe { CLIENT_CONNECTING.get(&change.sk) }).copied() else {
                return;
            };
            let _ = CLIENT_CONNECTING.remove(&change.sk);
            let ends = SocketEnds::new(&change.tuple.local, &change.tuple.remote);
            let _ = CLIENTS.insert(&ends, &owner, 0);
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let _ = CLIENT_CONNECTING.remove(&change.sk);
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            let ends = SocketEnds::new(&change.tuple.local, &change.tuple.remote);
            let _ = SERVED.insert(&ends, &1, 0);
        }
        _ => {}
    }
}
