//! What /proc tells us: a process's executable name (its default service
//! name), and the TCP connections that were already open when the tracer
//! started, found by matching socket inodes under /proc/PID/fd against each
//! network namespace's /proc/PID/net/tcp{,6} tables.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

use tracer_common::{SockAddr, Tuple, AF_INET, AF_INET6};

use crate::protocols::Side;

/// The executable's file name, e.g. "nginx" for /usr/sbin/nginx.
pub fn exe_name(tgid: u32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{tgid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy();
    // A replaced binary reads "nginx (deleted)".
    Some(name.trim_end_matches(" (deleted)").to_string())
}

/// An established TCP connection found in /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingConn {
    pub tgid: u32,
    pub fd: u32,
    pub tuple: Tuple,
    pub side: Side,
}

/// One row of /proc/net/tcp{,6}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketRow {
    pub(crate) tuple: Tuple,
    pub(crate) state: u8,
    pub(crate) inode: u64,
}

const TCP_ESTABLISHED: u8 = 0x01;
pub(crate) const TCP_LISTEN: u8 = 0x0A;

/// Every established TCP connection of every process but `skip_tgid`.
/// A connection is the server side when its local port is one its network
/// namespace listens on.
pub fn existing_connections(skip_tgid: u32) -> Vec<ExistingConn> {
    // Per network namespace: socket inode → row, and listening ports.
    let mut namespaces: HashMap<u64, (HashMap<u64, SocketRow>, HashSet<u16>)> = HashMap::new();
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(tgid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if tgid == skip_tgid {
            continue;
        }
        let sockets = socket_fds(tgid);
        if sockets.is_empty() {
            continue;
        }
        let Some(netns) = netns_inode(tgid) else {
            continue;
        };
        let (rows, listening) = namespaces
            .entry(netns)
            .or_insert_with(|| read_tables(Path::new(&format!("/proc/{tgid}/net"))));
        for (fd, inode) in sockets {
            let Some(row) = rows.get(&inode) else {
                continue;
            };
            if row.state != TCP_ESTABLISHED {
                continue;
            }
            let side = if listening.contains(&row.tuple.local.port) {
                Side::Server
            } else {
                Side::Client
            };
            found.push(ExistingConn {
                tgid,
                fd,
                tuple: row.tuple,
                side,
            });
        }
    }
    found
}

/// (fd, socket inode) of every socket the process holds.
pub(crate) fn socket_fds(tgid: u32) -> Vec<(u32, u64)> {
    let Ok(fds) = fs::read_dir(format!("/proc/{tgid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let num = fd.file_name().to_str()?.parse::<u32>().ok()?;
            let target = fs::read_link(fd.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((num, inode))
        })
        .collect()
}

/// The inode of `tgid`'s network namespace (32 bits in the kernel); 0,
/// which no namespace has, when the process is gone.
pub(crate) fn netns_of(tgid: u32) -> u32 {
    netns_inode(tgid)
        .and_then(|inode| u32::try_from(inode).ok())
        .unwrap_or(0)
}

pub(crate) fn netns_inode(tgid: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{tgid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn read_tables(net_dir: &Path) -> (HashMap<u64, SocketRow>, HashSet<u16>) {
    let mut rows = HashMap::new();
    let mut listening = HashSet::new();
    for (file, family) in [("tcp", AF_INET), ("tcp6", AF_INET6)] {
        let Ok(text) = fs::read_to_string(net_dir.join(file)) else {
            continue;
        };
        for row in text.lines().skip(1).filter_map(|l| parse_row(l, family)) {
            if row.state == TCP_LISTEN {
                listening.insert(row.tuple.local.port);
            }
            rows.insert(row.inode, row);
        }
    }
    (rows, listening)
}

/// Parses "  0: 0100007F:1F90 0100007F:A2B4 01 ... inode ..." .
pub(crate) fn parse_row(line: &str, family: u16) -> Option<SocketRow> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_addr(fields.next()?, family)?;
    let remote = parse_addr(fields.next()?, family)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    // tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    let inode = fields.nth(5)?.parse().ok()?;
    Some(SocketRow {
        tuple: Tuple { local, remote },
        state,
        inode,
    })
}

/// "0100007F:1F90": the address as the kernel's u32 words, each printed as
/// a number in host byte order, the port as big hex.
fn parse_addr(field: &str, family: u16) -> Option<SockAddr> {
    let (addr_hex, port_hex) = field.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let words = match (family, addr_hex.len()) {
        (AF_INET, 8) => 1,
        (AF_INET6, 32) => 4,
        _ => return None,
    };
    let mut addr = [0u8; 16];
    for word in 0..words {
        let hex = addr_hex.get(word * 8..word * 8 + 8)?;
        let value = u32::from_str_radix(hex, 16).ok()?;
        addr[word * 4..word * 4 + 4].copy_from_slice(&value.to_ne_bytes());
    }
    Some(SockAddr { addr, port, family })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_rows() {
        let line = "   1: 0100007F:1F90 0100007F:D3A4 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";
        let row = parse_row(line, AF_INET).unwrap();
        assert_eq!(row.state, TCP_ESTABLISHED);
        assert_eq!(row.inode, 123456);
        assert_eq!(&row.tuple.local.addr[..4], &[127, 0, 0, 1]);
        assert_eq!(row.tuple.local.port, 8080);
        assert_eq!(row.tuple.remote.port, 0xD3A4);
    }

    #[test]
    fn parses_ipv6_loopback() {
        let line = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0";
        let row = parse_row(line, AF_INET6).unwrap();
        assert_eq!(row.state, TCP_LISTEN);
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        assert_eq!(row.tuple.local.addr, loopback);
    }

    #[test]
    fn rejects_garbage_rows() {
        assert_eq!(parse_row("sl local_address rem_address", AF_INET), None);
        assert_eq!(parse_row("0: zz:1 00:2 01", AF_INET), None);
    }

    #[test]
    fn finds_its_own_listening_and_connected_sockets() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let me = std::process::id();
        let mine: Vec<_> = existing_connections(0)
            .into_iter()
            .filter(|c| c.tgid == me)
            .collect();
        assert!(mine
            .iter()
            .any(|c| c.side == Side::Server && c.tuple.local.port == port));
        assert!(mine
            .iter()
            .any(|c| c.side == Side::Client && c.tuple.remote.port == port));
    }
}
