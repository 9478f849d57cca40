//! Following the interfaces: the packet path's sockets, either a fixed list
//! (`--interfaces`) or one per interface of the namespace, kept so by a
//! thread that wakes on rtnetlink's link notifications, lists the
//! interfaces again, and opens or closes sockets to match.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use super::{Filter, Interface, OpenError, PacketSocket};

/// What the metrics read of the packet path's sockets.
#[derive(Debug, Default)]
pub struct InterfaceCounts {
    captured: AtomicUsize,
    failures: AtomicU64,
}

impl InterfaceCounts {
    /// Interfaces with a socket now.
    pub fn captured(&self) -> usize {
        self.captured.load(Ordering::Relaxed)
    }

    /// Sockets that could not be opened on interfaces that appeared after
    /// start-up (each retried at the next link notification).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Why the packet path's sockets could not be set up at start-up.
#[derive(Debug)]
pub struct SetupError {
    /// What was being set up, e.g. "an AF_PACKET socket on lo".
    pub target: String,
    pub reason: String,
}

/// The packet path's sockets: closing them (dropping this) detaches the
/// filter. Either a fixed list, or every interface followed by a thread.
pub struct PacketSockets {
    counts: Arc<InterfaceCounts>,
    /// A fixed list's sockets, held to keep them open.
    _fixed: Vec<PacketSocket>,
    /// The follower, which holds the sockets of every interface.
    _follower: Option<Follower>,
}

impl PacketSockets {
    /// No packet path.
    pub fn none() -> Self {
        Self {
            counts: Arc::default(),
            _fixed: Vec::new(),
            _follower: None,
        }
    }

    /// One socket on each of `interfaces`, for good: the interfaces
    /// `--interfaces` names.
    pub fn fixed(interfaces: &[Interface], filter: &Filter) -> Result<Self, SetupError> {
        let sockets = interfaces
            .iter()
            .map(|interface| {
                PacketSocket::open(interface, |s| filter.attach(s)).map_err(|e| SetupError {
                    target: socket_on(&interface.name),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let counts = InterfaceCounts {
            captured: AtomicUsize::new(sockets.len()),
            failures: AtomicU64::new(0),
        };
        Ok(Self {
            counts: Arc::new(counts),
            _fixed: sockets,
            _follower: None,
        })
    }

    /// One socket on every interface there is, and from now on on every
    /// interface that appears, until dropped. The link notifications are
    /// subscribed to before the interfaces are listed, so none that
    /// appears in between is missed. A socket that cannot be opened now is
    /// an error; one on a later interface is counted.
    pub fn following(filter: Filter) -> Result<Self, SetupError> {
        let notifications = link_notifications().map_err(|e| SetupError {
            target: "rtnetlink link notifications".into(),
            reason: e.to_string(),
        })?;
        let present = Interface::present().map_err(|e| SetupError {
            target: "the list of interfaces (if_nameindex)".into(),
            reason: e.to_string(),
        })?;
        let mut captured = Captured::default();
        if let Some((interface, error)) = captured.reconcile(&present, &filter).into_iter().next() {
            return Err(SetupError {
                target: socket_on(&interface.name),
                reason: error.to_string(),
            });
        }
        let counts = Arc::new(InterfaceCounts {
            captured: AtomicUsize::new(captured.sockets.len()),
            failures: AtomicU64::new(0),
        });
        let wake = eventfd().map_err(|e| SetupError {
            target: "an eventfd to stop the interface follower".into(),
            reason: e.to_string(),
        })?;
        let thread_wake = wake.try_clone().map_err(|e| SetupError {
            target: "an eventfd to stop the interface follower".into(),
            reason: e.to_string(),
        })?;
        let thread_counts = counts.clone();
        let thread = std::thread::Builder::new()
            .name("tracer-interfaces".into())
            .spawn(move || follow(notifications, thread_wake, filter, captured, &thread_counts))
            .map_err(|e| SetupError {
                target: "the interface follower thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            counts,
            _fixed: Vec::new(),
            _follower: Some(Follower {
                wake,
                thread: Some(thread),
            }),
        })
    }

    /// The counts the metrics read, shared with the follower.
    pub fn counts(&self) -> Arc<InterfaceCounts> {
        self.counts.clone()
    }

    /// Interfaces with a socket now.
    pub fn captured(&self) -> usize {
        self.counts.captured()
    }
}

fn socket_on(name: &str) -> String {
    format!("an AF_PACKET socket on {name}")
}

/// The follower thread, stopped and joined on drop (its sockets close
/// with it).
struct Follower {
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one` to an eventfd owned here.
        let written = unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        // Without the wake-up the thread would never return: leave it, as
        // the process is about to end or load again.
        if written == std::mem::size_of::<u64>() as isize {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A netlink socket that receives a message whenever a link of this
/// network namespace is added, removed or changed (`RTMGRP_LINK`).
fn link_notifications() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zero is a valid start (pid 0: the
    // kernel assigns one).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: `addr` is a valid sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads every notification waiting. Their content does not matter: each
/// says the links changed, and the list is read again whole. A full
/// receive queue (ENOBUFS: notifications were lost) says the same.
fn drain(notifications: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                notifications.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            continue;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(()),
            Some(libc::ENOBUFS | libc::EINTR) => continue,
            _ => return Err(error),
        }
    }
}

/// The follower's loop: after every batch of link notifications, one
/// socket per interface present again; returns when `wake` is written.
fn follow(
    notifications: OwnedFd,
    wake: OwnedFd,
    filter: Filter,
    mut captured: Captured,
    counts: &InterfaceCounts,
) {
    let mut following = true;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: notifications.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let watched = if following { 2 } else { 1 };
        // SAFETY: `fds` holds `watched` valid pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), watched, -1) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if following {
                tracing::warn!(%error, "the packet path stops following interfaces");
                following = false;
            }
            // Waits for the stop alone from now on; a poll that keeps
            // failing (out of memory) must not spin.
            std::thread::sleep(std::time::Duration::from_secs(1));
            continue;
        }
        if fds[0].revents != 0 {
            return;
        }
        if !following || fds[1].revents == 0 {
            continue;
        }
        if let Err(error) = drain(notifications.as_fd()) {
            // Sockets already open keep capturing; new interfaces are not
            // seen any more.
            tracing::warn!(%error, "link notifications unreadable: the packet path stops following interfaces");
            following = false;
            continue;
        }
        let present = match Interface::present() {
            Ok(present) => present,
            Err(error) => {
                tracing::debug!(%error, "cannot list the interfaces; next notification retries");
                continue;
            }
        };
        let failed = captured.reconcile(&present, &filter);
        for (interface, error) in &failed {
            tracing::debug!(
                interface = %interface.name,
                index = interface.index,
                %error,
                "packet path: no socket on this interface; retried at the next link change"
            );
        }
        counts
            .failures
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        counts
            .captured
            .store(captured.sockets.len(), Ordering::Relaxed);
    }
}

/// The sockets of the interfaces captured, by interface index.
#[derive(Default)]
struct Captured {
    sockets: BTreeMap<u32, (String, PacketSocket)>,
}

impl Captured {
    /// Opens and closes sockets so that there is one per interface of
    /// `present`. Returns the interfaces whose socket could not be opened
    /// (not those gone before their socket was bound: nothing to capture).
    fn reconcile(&mut self, present: &[Interface], filter: &Filter) -> Vec<(Interface, OpenError)> {
        let held: Vec<(Interface, bool)> = self
            .sockets
            .iter()
            .map(|(&index, (name, socket))| {
                let interface = Interface {
                    name: name.clone(),
                    index,
                };
                (interface, socket.bound_to(index))
            })
            .collect();
        let plan = plan(&held, present);
        for index in plan.close {
            if let Some((name, _socket)) = self.sockets.remove(&index) {
                tracing::debug!(interface = %name, index, "packet path: interface gone, socket closed");
            }
        }
        let mut failed = Vec::new();
        for interface in plan.open {
            match PacketSocket::open(&interface, |s| filter.attach(s)) {
                Ok(socket) => {
                    tracing::debug!(interface = %interface.name, index = interface.index, "packet path: socket opened");
                    self.sockets
                        .insert(interface.index, (interface.name, socket));
                }
                Err(error) if error.interface_gone() => {
                    tracing::debug!(interface = %interface.name, "packet path: interface gone before its socket was bound");
                }
                Err(error) => failed.push((interface, error)),
            }
        }
        // A renamed interface keeps its socket (bound by index): only the
        // name in the logs changes.
        for interface in present {
            if let Some((name, _)) = self.sockets.get_mut(&interface.index) {
                if *name != interface.name {
                    name.clone_from(&interface.name);
                }
            }
        }
        failed
    }
}

/// What turns the sockets held into one per interface present.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Indices whose socket goes.
    close: Vec<u32>,
    /// Interfaces that need a socket.
    open: Vec<Interface>,
}

/// `held`: each socket's interface and whether the socket is still bound
/// to it. A socket goes when its interface is no longer present, or when
/// the kernel unbound it (its interface was deleted or moved away; an
/// interface with the same index present now is another one, which gets
/// a socket of its own). A renamed interface keeps its socket.
fn plan(held: &[(Interface, bool)], present: &[Interface]) -> Plan {
    let live: BTreeMap<u32, bool> = held.iter().map(|(i, bound)| (i.index, *bound)).collect();
    let present_indices: std::collections::BTreeSet<u32> =
        present.iter().map(|i| i.index).collect();
    let close = live
        .iter()
        .filter(|(index, bound)| !**bound || !present_indices.contains(index))
        .map(|(index, _)| *index)
        .collect();
    let open = present
        .iter()
        .filter(|i| live.get(&i.index) != Some(&true))
        .cloned()
        .collect();
    Plan { close, open }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::packet_sockets::tests::iface;

    #[test]
    fn the_plan_opens_new_interfaces_and_closes_gone_ones() {
        let held = [(iface("lo", 1), true), (iface("veth1", 7), true)];
        let present = [iface("lo", 1), iface("eth0", 2), iface("veth2", 9)];
        assert_eq!(
            plan(&held, &present),
            Plan {
                close: vec![7],
                open: vec![iface("eth0", 2), iface("veth2", 9)],
            }
        );
    }

    #[test]
    fn the_plan_changes_nothing_when_the_sockets_match() {
        let held = [(iface("lo", 1), true), (iface("eth0", 2), true)];
        let present = [iface("eth0", 2), iface("lo", 1)];
        assert_eq!(plan(&held, &present), Plan::default());
        assert_eq!(plan(&[], &[]), Plan::default());
    }

    #[test]
    fn the_plan_opens_every_interface_at_start() {
        let present = [iface("lo", 1), iface("eth0", 2)];
        assert_eq!(
            plan(&[], &present),
            Plan {
                close: vec![],
                open: present.to_vec(),
            }
        );
    }

    #[test]
    fn the_plan_replaces_a_socket_the_kernel_unbound() {
        // Index 5 was deleted and its index is in use again (or it came
        // back from another namespace): the old socket captures nothing.
        let held = [(iface("lo", 1), true), (iface("veth-a", 5), false)];
        let present = [iface("lo", 1), iface("veth-b", 5)];
        assert_eq!(
            plan(&held, &present),
            Plan {
                close: vec![5],
                open: vec![iface("veth-b", 5)],
            }
        );
        // Unbound and gone: closed only.
        let present = [iface("lo", 1)];
        assert_eq!(
            plan(&held, &present),
            Plan {
                close: vec![5],
                open: vec![],
            }
        );
    }

    #[test]
    fn the_plan_keeps_a_renamed_interface_socket() {
        let held = [(iface("eth0", 2), true)];
        let present = [iface("uplink", 2)];
        assert_eq!(plan(&held, &present), Plan::default());
    }
}
