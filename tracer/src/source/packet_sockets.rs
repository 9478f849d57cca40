//! The packet path's sockets: AF_PACKET sockets, one per interface, that
//! exist only to run the socket filter on every packet. The filter sends
//! what it keeps through the event rings and returns 0, so nothing ever
//! queues on the sockets themselves.
//!
//! One socket per interface rather than one for all: the kernel clones
//! every outgoing packet for a socket bound to all interfaces before its
//! filter runs, and on loopback every segment is both sent and received.
//! Loopback's own socket ignores outgoing packets (`PACKET_IGNORE_OUTGOING`),
//! so its copies are never made; the incoming copy carries every segment.
//! Without `--interfaces` the set follows the interfaces as they come and
//! go (pods' veths): a thread listens to rtnetlink's link notifications and
//! opens or closes sockets to match.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

/// The loopback device's index in every network namespace (the filter in
/// `tracer-ebpf/src/packets.rs` knows it by the same number).
const LOOPBACK_INDEX: u32 = 1;

/// A network interface of the tracer's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

impl Interface {
    /// The interface called `name`, if there is one.
    pub fn by_name(name: &str) -> Option<Interface> {
        let c_name = std::ffi::CString::new(name).ok()?;
        // SAFETY: a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        (index != 0).then(|| Interface {
            name: name.to_string(),
            index,
        })
    }

    /// The names of every interface here, sorted.
    pub fn names() -> Vec<String> {
        let mut names: Vec<String> = Interface::present()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.name)
            .collect();
        names.sort();
        names
    }

    /// Every interface of the tracer's network namespace now. Asked of
    /// the kernel (`if_nameindex` dumps the links over rtnetlink), not read
    /// from `/sys/class/net`, which shows the namespace sysfs was mounted
    /// in.
    pub fn present() -> io::Result<Vec<Interface>> {
        // SAFETY: no arguments; the result is checked for NULL.
        let list = unsafe { libc::if_nameindex() };
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut interfaces = Vec::new();
        let mut at = list;
        // SAFETY: `if_nameindex` returns an array ended by an entry whose
        // index is 0 and name NULL; every name before it is a valid C
        // string, and the array lives until `if_freenameindex`, called once
        // after the last read.
        unsafe {
            while (*at).if_index != 0 && !(*at).if_name.is_null() {
                interfaces.push(Interface {
                    name: CStr::from_ptr((*at).if_name).to_string_lossy().into_owned(),
                    index: (*at).if_index,
                });
                at = at.add(1);
            }
            libc::if_freenameindex(list);
        }
        Ok(interfaces)
    }

    fn is_loopback(&self) -> bool {
        self.index == LOOPBACK_INDEX
    }
}

/// Why a socket could not be opened: the step that failed and its error.
#[derive(Debug)]
pub struct OpenError {
    step: &'static str,
    error: io::Error,
}

impl OpenError {
    /// The interface went away before the socket was bound to it: nothing
    /// to capture, not a failure.
    fn interface_gone(&self) -> bool {
        self.step == "bind" && self.error.raw_os_error() == Some(libc::ENODEV)
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            "socket" => write!(f, "socket(AF_PACKET): {} (needs CAP_NET_RAW)", self.error),
            step => write!(f, "{step}: {}", self.error),
        }
    }
}

/// Whether a failed `PACKET_IGNORE_OUTGOING` was logged already: a kernel
/// without it fails the same way on every loopback socket.
static IGNORE_OUTGOING_LOGGED: AtomicBool = AtomicBool::new(false);

/// One AF_PACKET socket with the filter attached.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PacketSocket {
    /// Opens a socket, runs `attach` on it, then binds it to `interface`
    /// for every protocol. Binding last means no packet reaches the socket
    /// before the filter does. Loopback's socket ignores outgoing packets
    /// first: each comes back in as received, and the kernel then does not
    /// clone it on the way out only for the filter to drop it.
    pub fn open(
        interface: &Interface,
        attach: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
    ) -> Result<PacketSocket, OpenError> {
        let failed = |step| move |error| OpenError { step, error };
        // SOCK_DGRAM: the filter sees each packet from its network header,
        // whatever the link layer. Protocol 0: nothing arrives until bind.
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(failed("socket")(io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if interface.is_loopback() {
            if let Err(error) = set_int(
                fd.as_fd(),
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                1,
            ) {
                // Linux before 4.20: the filter drops loopback's outgoing
                // copies itself, at the cost of the clones.
                if !IGNORE_OUTGOING_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::debug!(
                        %error,
                        "PACKET_IGNORE_OUTGOING unavailable: loopback's outgoing copies are dropped by the filter"
                    );
                }
            }
        }
        attach(fd.as_fd()).map_err(failed("setsockopt(SO_ATTACH_BPF)"))?;
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = interface.index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(failed("bind")(io::Error::last_os_error()));
        }
        Ok(PacketSocket { fd })
    }

    /// Whether the kernel skips outgoing packets for this socket.
    pub fn ignores_outgoing(&self) -> io::Result<bool> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value != 0)
    }

    /// The interface index the socket is bound to now. The kernel unbinds
    /// it (-1) when its interface is deleted or moves to another network
    /// namespace, and never binds it again: its index may then be another
    /// interface's.
    fn bound_index(&self) -> Option<i32> {
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are valid for writes of the size given.
        let rc = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(addr.sll_ifindex)
    }

    /// Whether the socket still captures `index`.
    fn bound_to(&self, index: u32) -> bool {
        self.bound_index() == i32::try_from(index).ok()
    }
}

/// `setsockopt` of one `int`.
fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The loaded socket filter, held by a descriptor of its own so that
/// sockets opened later can be attached without the `Ebpf` object.
#[derive(Debug)]
pub struct Filter(OwnedFd);

impl Filter {
    /// `program`: a descriptor of a loaded `BPF_PROG_TYPE_SOCKET_FILTER`.
    pub fn new(program: OwnedFd) -> Self {
        Self(program)
    }

    /// Attaches the filter to `socket` (`SO_ATTACH_BPF`).
    pub fn attach(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        set_int(
            socket,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_BPF,
            self.0.as_raw_fd(),
        )
    }
}

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
            tracing::warn!(%error, "the packet path stops following interfaces");
            following = false;
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

    fn iface(name: &str, index: u32) -> Interface {
        Interface {
            name: name.into(),
            index,
        }
    }

    #[test]
    fn loopback_is_found_by_name_and_unknown_names_are_not() {
        let lo = Interface::by_name("lo").expect("every namespace has lo");
        assert_eq!(lo.index, 1);
        assert!(Interface::names().contains(&"lo".to_string()));
        assert!(Interface::present().unwrap().contains(&lo));
        assert_eq!(Interface::by_name("no-such-if0"), None);
    }

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

    /// A socket on `interface` without a filter, or None (with a note)
    /// where this process may not open AF_PACKET sockets.
    fn unfiltered_socket(interface: &Interface) -> Option<PacketSocket> {
        match PacketSocket::open(interface, |_| Ok(())) {
            Ok(socket) => Some(socket),
            Err(e) if e.step == "socket" => {
                eprintln!("skipped: no AF_PACKET sockets here ({e})");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn loopback_socket_ignores_outgoing_packets_and_others_do_not() {
        let lo = Interface::by_name("lo").expect("every namespace has lo");
        let Some(socket) = unfiltered_socket(&lo) else {
            return;
        };
        assert!(socket.ignores_outgoing().unwrap());
        assert!(socket.bound_to(lo.index));
        assert!(!socket.bound_to(lo.index + 1));
        let other = Interface::present()
            .unwrap()
            .into_iter()
            .find(|i| !i.is_loopback());
        if let Some(other) = other {
            let socket = unfiltered_socket(&other).expect("lo's opened");
            assert!(!socket.ignores_outgoing().unwrap(), "{other:?}");
            assert!(socket.bound_to(other.index));
        }
    }

    #[test]
    fn a_socket_on_an_interface_gone_is_not_a_failure() {
        // No interface has this index: bind says ENODEV.
        let gone = iface("gone0", 999_999);
        match PacketSocket::open(&gone, |_| Ok(())) {
            Err(e) if e.step == "socket" => eprintln!("skipped: no AF_PACKET sockets here ({e})"),
            Err(e) => assert!(e.interface_gone(), "{e}"),
            Ok(_) => panic!("bound to an interface that does not exist"),
        }
    }

    #[test]
    fn a_failed_attach_is_an_error_of_its_own_step() {
        let lo = Interface::by_name("lo").expect("every namespace has lo");
        let refused = PacketSocket::open(&lo, |_| Err(io::Error::from_raw_os_error(libc::EINVAL)));
        match refused {
            Err(e) if e.step == "socket" => eprintln!("skipped: no AF_PACKET sockets here ({e})"),
            Err(e) => {
                assert!(!e.interface_gone());
                assert!(
                    e.to_string().starts_with("setsockopt(SO_ATTACH_BPF): "),
                    "{e}"
                );
            }
            Ok(_) => panic!("opened despite a failed attach"),
        }
    }
}
