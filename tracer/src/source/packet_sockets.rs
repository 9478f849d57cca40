//! The packet path's sockets: AF_PACKET sockets, one per chosen interface
//! (or one for all), that exist only to run the socket filter on every
//! packet. The filter sends what it keeps through the event rings and
//! returns 0, so nothing ever queues on the sockets themselves.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

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
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

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
    /// (all when None) for every protocol. Binding last means no packet
    /// reaches the socket before the filter does.
    pub fn open(
        interface: Option<&Interface>,
        attach: impl FnOnce(BorrowedFd<'_>) -> Result<(), String>,
    ) -> Result<PacketSocket, String> {
        // SOCK_DGRAM: the filter sees each packet from its network header,
        // whatever the link layer. Protocol 0: nothing arrives until bind.
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!(
                "socket(AF_PACKET): {} (needs CAP_NET_RAW)",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        attach(fd.as_fd())?;
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = interface.map_or(0, |i| i.index as i32);
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(format!("bind: {}", io::Error::last_os_error()));
        }
        Ok(PacketSocket { fd })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_by_name_and_unknown_names_are_not() {
        let lo = Interface::by_name("lo").expect("every namespace has lo");
        assert_eq!(lo.index, 1);
        assert!(Interface::names().contains(&"lo".to_string()));
        assert_eq!(Interface::by_name("no-such-if0"), None);
    }
}
