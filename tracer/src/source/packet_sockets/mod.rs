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
//! opens or closes sockets to match (`follow`).

mod follow;

use std::{
    ffi::CStr,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
};

pub use follow::{InterfaceCounts, PacketSockets, SetupError};

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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn iface(name: &str, index: u32) -> Interface {
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

    /// Without the privilege to open AF_PACKET sockets: a note, or under
    /// `CI=true` a failure.
    fn skipped(e: &OpenError) {
        let why = format!("no AF_PACKET sockets here ({e}): run as root");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
    }

    /// A socket on `interface` without a filter, or None (with a note)
    /// where this process may not open AF_PACKET sockets.
    fn unfiltered_socket(interface: &Interface) -> Option<PacketSocket> {
        match PacketSocket::open(interface, |_| Ok(())) {
            Ok(socket) => Some(socket),
            Err(e) if e.step == "socket" => {
                skipped(&e);
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
            Err(e) if e.step == "socket" => skipped(&e),
            Err(e) => assert!(e.interface_gone(), "{e}"),
            Ok(_) => panic!("bound to an interface that does not exist"),
        }
    }

    #[test]
    fn a_failed_attach_is_an_error_of_its_own_step() {
        let lo = Interface::by_name("lo").expect("every namespace has lo");
        let refused = PacketSocket::open(&lo, |_| Err(io::Error::from_raw_os_error(libc::EINVAL)));
        match refused {
            Err(e) if e.step == "socket" => skipped(&e),
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
