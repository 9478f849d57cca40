//! Which local processes hold a flow's ends, since a packet names none. A
//! server end is local when the kernel saw a local socket accept the
//! connection (`SERVED`); its process is the one holding the listening
//! socket, from the listeners of every network namespace on the node
//! (procfs), which also tell, for a flow first seen mid-stream, which end
//! listens (and so is the server). A client end: the kernel notes which
//! process connected each client socket (`CLIENTS`). Both are read through
//! `SocketNotes`; connections opened before the tracer started are matched
//! by inode once, at start.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
    time::{Duration, Instant},
};

use tracer_common::{ClientOwner, SockAddr, SocketEnds, AF_INET, AF_INET6};

use super::decode::as_on_the_wire;
use crate::{
    metadata::procfs::{netns_inode, parse_row, socket_fds, ExistingConn, TCP_LISTEN},
    protocols::Side,
};

/// Answers the flow table's questions about local sockets.
pub trait Owners {
    /// The process (tgid) listening on the flow's server end, if known.
    fn owner(&mut self, server: &SockAddr) -> Option<u32>;
    /// Whether a local socket listens on `addr` (its address and port, or
    /// any address on its port).
    fn listening(&mut self, addr: &SockAddr) -> bool;
    /// Whether a local socket accepted the connection from `client` to
    /// `server` (so its server end is here). A remote server, or a
    /// Service's virtual address, on a port that some local socket listens
    /// on is not.
    fn serves(&mut self, server: &SockAddr, client: &SockAddr) -> bool;
    /// The process that connected the local socket from `client` to
    /// `server`, if a local process did.
    fn client(&mut self, client: &SockAddr, server: &SockAddr) -> Option<ClientOwner>;
}

/// The kernel's notes of the node's own connections (`CLIENTS`, `SERVED`).
pub trait SocketNotes {
    /// The process that connected the client socket with these ends (its
    /// own first), if the kernel noted it (and has not aged it out).
    fn client(&self, ends: &SocketEnds) -> Option<ClientOwner>;
    /// Whether a local socket accepted the connection with these ends
    /// (its own, the server's, first).
    fn served(&self, ends: &SocketEnds) -> bool;
}

/// Fixed answers, for tests and replays: listeners and their processes
/// (tgid 0: listening, process unknown; an address of all zeros listens on
/// every address of its port), and client sockets' ends (client first) and
/// their processes.
#[derive(Debug, Default, Clone)]
pub struct FixedOwners {
    listeners: Vec<(SockAddr, u32)>,
    clients: HashMap<SocketEnds, u32>,
}

impl FixedOwners {
    /// Listeners only.
    pub fn listening(listeners: Vec<(SockAddr, u32)>) -> Self {
        Self {
            listeners,
            clients: HashMap::new(),
        }
    }

    /// Also: `tgid` connected the socket from `client` to `server`.
    pub fn with_client(mut self, client: &SockAddr, server: &SockAddr, tgid: u32) -> Self {
        self.clients.insert(SocketEnds::new(client, server), tgid);
        self
    }

    fn find(&self, addr: &SockAddr) -> Option<u32> {
        self.listeners
            .iter()
            .find(|(l, _)| l.port == addr.port && (l.addr == addr.addr || l.addr == [0; 16]))
            .map(|(_, tgid)| *tgid)
    }
}

impl Owners for FixedOwners {
    fn owner(&mut self, server: &SockAddr) -> Option<u32> {
        self.find(server).filter(|&tgid| tgid != 0)
    }

    fn listening(&mut self, addr: &SockAddr) -> bool {
        self.find(addr).is_some()
    }

    /// A listener on the server's very address (not a wildcard one).
    fn serves(&mut self, server: &SockAddr, _client: &SockAddr) -> bool {
        self.listeners
            .iter()
            .any(|(l, _)| l.port == server.port && l.addr == server.addr)
    }

    fn client(&mut self, client: &SockAddr, server: &SockAddr) -> Option<ClientOwner> {
        self.clients
            .get(&SocketEnds::new(client, server))
            .map(|&tgid| ClientOwner {
                tgid,
                comm: [0; 16],
            })
    }
}

/// Scans a second at most (a few saved up): a lookup that misses rescans,
/// so a listener that opened just before its first connection is found at
/// once. A scan reads each namespace's TCP tables; only a listener not seen
/// before costs the walk of every process's descriptors.
const SCANS_PER_SECOND: f64 = 20.0;
const SCAN_BURST: u32 = 5;

/// An address without a listener is not looked for again this soon.
const MISS_REMEMBERED: Duration = Duration::from_secs(1);
const MAX_MISSES: usize = 4096;

/// Most listening addresses remembered (a node has far fewer).
const MAX_LISTENERS: usize = 65_536;

/// Listener key: address bytes and port (the family follows from the
/// address: IPv4 uses 4 bytes, the rest zero).
type Listener = ([u8; 16], u16, u16);

/// The listeners of every network namespace, from /proc, and the client
/// sockets the kernel saw connect.
#[derive(Default)]
pub struct ProcOwners {
    /// (address, port, family) → tgid (0: the holder was not found).
    exact: HashMap<Listener, u32>,
    /// Port → tgid of a listener on 0.0.0.0 / on `::` (which takes IPv4
    /// too).
    any4: HashMap<u16, u32>,
    any6: HashMap<u16, u32>,
    /// Listening socket inode → holder, kept across scans: the walk of
    /// every process's descriptors runs only when a new listener appears.
    holders: HashMap<u64, u32>,
    /// Addresses no scan found a listener for, and when.
    missed: HashMap<Listener, Instant>,
    scan_tokens: f64,
    scanned: Option<Instant>,
    /// Scans made (for tests and metrics).
    pub scans: u64,
    /// The kernel's notes (none in tests and replays).
    notes: Option<Box<dyn SocketNotes + Send>>,
    /// Connections open before start-up, by their local end first: their
    /// process and side.
    existing: HashMap<SocketEnds, (u32, Side)>,
}

/// Most connections open at start-up remembered.
const MAX_EXISTING: usize = 65_536;

impl ProcOwners {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also tells which connections are the node's own: from the kernel's
    /// notes, and from the connections found open at start-up
    /// (`existing`), which the kernel never saw open.
    pub fn with_notes(
        mut self,
        notes: Box<dyn SocketNotes + Send>,
        existing: &[ExistingConn],
    ) -> Self {
        self.notes = Some(notes);
        self.existing = existing
            .iter()
            .take(MAX_EXISTING)
            .map(|c| {
                let ends = SocketEnds::new(&c.tuple.local, &c.tuple.remote);
                (ends, (c.tgid, c.side))
            })
            .collect();
        self
    }

    /// The tgid (0: unknown) of the listener `addr` reaches, rescanning
    /// once if it reaches none and the last scan is old enough.
    fn lookup(&mut self, addr: &SockAddr) -> Option<u32> {
        if let Some(found) = self.find(addr) {
            return Some(found);
        }
        // An address that missed lately is not local (a remote server of
        // forwarded traffic); a new one is worth a scan while the budget
        // lasts: its listener may have opened since the last one.
        let key = (addr.addr, addr.port, addr.family);
        let now = Instant::now();
        if self
            .missed
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < MISS_REMEMBERED)
        {
            return None;
        }
        if !self.scan_budget(now) {
            return None;
        }
        self.rescan();
        let found = self.find(addr);
        if found.is_none() {
            if self.missed.len() >= MAX_MISSES {
                self.missed.clear();
            }
            self.missed.insert(key, now);
        }
        found
    }

    /// Takes one scan from a budget of `SCANS_PER_SECOND`, refilled
    /// continuously, at most `SCAN_BURST` saved up.
    fn scan_budget(&mut self, now: Instant) -> bool {
        let since = self
            .scanned
            .map_or(SCAN_BURST as f64, |at| now.duration_since(at).as_secs_f64());
        self.scan_tokens = (self.scan_tokens + since * SCANS_PER_SECOND).min(SCAN_BURST as f64);
        if self.scan_tokens < 1.0 {
            return false;
        }
        self.scan_tokens -= 1.0;
        true
    }

    fn find(&self, addr: &SockAddr) -> Option<u32> {
        let any = match addr.family {
            AF_INET => self.any4.get(&addr.port).or(self.any6.get(&addr.port)),
            _ => self.any6.get(&addr.port),
        };
        self.find_exact(addr).or(any.copied())
    }

    /// A listener on the address itself, or a wildcard one registered at
    /// an address of its own namespace (`add`).
    fn find_exact(&self, addr: &SockAddr) -> Option<u32> {
        self.exact
            .get(&(addr.addr, addr.port, addr.family))
            .copied()
    }

    fn rescan(&mut self) {
        self.scanned = Some(Instant::now());
        self.scans += 1;
        self.exact.clear();
        self.any4.clear();
        self.any6.clear();
        let pids: Vec<u32> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        // One table read per network namespace.
        let mut namespaces = HashSet::new();
        let mut tables = Vec::new();
        for &pid in &pids {
            if let Some(ns) = netns_inode(pid) {
                if namespaces.insert(ns) {
                    tables.push(read_tables(
                        &Path::new("/proc").join(pid.to_string()).join("net"),
                    ));
                }
            }
        }
        // Socket inode → holder; descriptors are walked only for new ones.
        let listening: HashSet<u64> = tables
            .iter()
            .flat_map(|t| t.listeners.iter().map(|(_, inode)| *inode))
            .collect();
        self.holders.retain(|inode, _| listening.contains(inode));
        let mut new: HashMap<u64, u32> = listening
            .iter()
            .filter(|inode| !self.holders.contains_key(inode))
            .map(|&inode| (inode, 0))
            .collect();
        if !new.is_empty() {
            for &pid in &pids {
                for (_, inode) in socket_fds(pid) {
                    if let Some(tgid) = new.get_mut(&inode) {
                        if *tgid == 0 {
                            *tgid = pid;
                        }
                    }
                }
            }
            self.holders.extend(new);
        }
        let holders = std::mem::take(&mut self.holders);
        for table in &tables {
            self.add(table, &holders);
        }
        self.holders = holders;
    }

    /// Registers one namespace's listeners. A wildcard listener is also
    /// registered on every address the namespace's other sockets use, so
    /// that two namespaces listening on the same port (two pods) are told
    /// apart by address.
    fn add(&mut self, table: &Tables, holders: &HashMap<u64, u32>) {
        for (addr, inode) in &table.listeners {
            if self.exact.len() >= MAX_LISTENERS {
                return;
            }
            let tgid = holders.get(inode).copied().unwrap_or(0);
            if addr.addr != [0; 16] {
                self.exact.insert((addr.addr, addr.port, addr.family), tgid);
                continue;
            }
            let any = if addr.family == AF_INET {
                &mut self.any4
            } else {
                &mut self.any6
            };
            any.entry(addr.port).or_insert(tgid);
            for local in &table.locals {
                let fits = local.family == addr.family || addr.family == AF_INET6;
                if fits && self.exact.len() < MAX_LISTENERS {
                    self.exact
                        .entry((local.addr, addr.port, local.family))
                        .or_insert(tgid);
                }
            }
        }
    }
}

impl Owners for ProcOwners {
    fn owner(&mut self, server: &SockAddr) -> Option<u32> {
        self.lookup(server).filter(|&tgid| tgid != 0)
    }

    fn listening(&mut self, addr: &SockAddr) -> bool {
        self.lookup(addr).is_some()
    }

    /// The kernel saw it accepted, or it was open at start-up; else (the
    /// kernel's note aged out, or is not written yet) a listener known on
    /// the server's very address. No rescan: the notes are the authority,
    /// and a client calling many remote servers must not cost a scan each.
    fn serves(&mut self, server: &SockAddr, client: &SockAddr) -> bool {
        let ends = SocketEnds::new(server, client);
        self.notes.as_ref().is_some_and(|notes| notes.served(&ends))
            || matches!(self.existing.get(&ends), Some((_, Side::Server)))
            || self.find_exact(server).is_some()
    }

    fn client(&mut self, client: &SockAddr, server: &SockAddr) -> Option<ClientOwner> {
        let ends = SocketEnds::new(client, server);
        let noted = self.notes.as_ref().and_then(|notes| notes.client(&ends));
        noted.or_else(|| match self.existing.get(&ends) {
            Some(&(tgid, Side::Client)) => Some(ClientOwner {
                tgid,
                comm: [0; 16],
            }),
            _ => None,
        })
    }
}

/// What one namespace's /proc/net/tcp{,6} say.
#[derive(Debug, Default, PartialEq)]
struct Tables {
    /// Listening addresses and their socket inodes.
    listeners: Vec<(SockAddr, u64)>,
    /// Addresses the namespace's other sockets are bound to.
    locals: Vec<SockAddr>,
}

fn read_tables(net_dir: &Path) -> Tables {
    let mut tables = Tables::default();
    for (file, family) in [("tcp", AF_INET), ("tcp6", AF_INET6)] {
        if let Ok(text) = fs::read_to_string(net_dir.join(file)) {
            parse_table(&text, family, &mut tables);
        }
    }
    tables
}

/// Reads one /proc/net/tcp or tcp6 text into `tables`.
fn parse_table(text: &str, family: u16, tables: &mut Tables) {
    for row in text.lines().skip(1).filter_map(|l| parse_row(l, family)) {
        let local = as_on_the_wire(row.tuple.local);
        if row.state == TCP_LISTEN {
            tables.listeners.push((local, row.inode));
        } else if local.addr != [0; 16] && !tables.locals.contains(&local_addr(local)) {
            tables.locals.push(local_addr(local));
        }
    }
}

/// An address without its port.
fn local_addr(addr: SockAddr) -> SockAddr {
    SockAddr { port: 0, ..addr }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::Tuple;

    fn v4(a: [u8; 4], port: u16) -> SockAddr {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&a);
        SockAddr {
            addr,
            port,
            family: AF_INET,
        }
    }

    // As /proc/net/tcp prints them on a little-endian host.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0A01A8C0:1F90 0B01A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000A01A8C0:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
";

    #[cfg(target_endian = "little")]
    #[test]
    fn listeners_are_read_from_tcp_and_tcp6_text() {
        let mut tables = Tables::default();
        parse_table(TCP, AF_INET, &mut tables);
        parse_table(TCP6, AF_INET6, &mut tables);
        let mut doc = [0u8; 16];
        doc[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        doc[15] = 1;
        let v6 = |addr, port| SockAddr {
            addr,
            port,
            family: AF_INET6,
        };
        assert_eq!(
            tables.listeners,
            vec![
                (v4([0, 0, 0, 0], 8080), 1001),
                (v4([127, 0, 0, 1], 6379), 1002),
                (v6([0; 16], 80), 2001),
                (v4([192, 168, 1, 10], 8081), 2002),
                (v6(doc, 443), 2003),
            ]
        );
        assert_eq!(tables.locals, vec![v4([192, 168, 1, 10], 0)]);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn wildcards_match_any_address_and_v6_takes_v4() {
        let mut tables = Tables::default();
        parse_table(TCP, AF_INET, &mut tables);
        parse_table(TCP6, AF_INET6, &mut tables);
        let holders = HashMap::from([(1001, 11), (1002, 12), (2001, 21), (2003, 23)]);
        let mut owners = ProcOwners::new();
        owners.add(&tables, &holders);
        owners.scanned = Some(Instant::now()); // no rescan of the real /proc
        assert_eq!(owners.owner(&v4([10, 0, 0, 1], 8080)), Some(11));
        assert_eq!(owners.owner(&v4([127, 0, 0, 1], 6379)), Some(12));
        assert_eq!(owners.owner(&v4([10, 0, 0, 1], 6379)), None);
        assert_eq!(
            owners.owner(&v4([10, 0, 0, 1], 80)),
            Some(21),
            ":: takes IPv4"
        );
        assert!(owners.listening(&v4([192, 168, 1, 10], 8081)));
        assert_eq!(
            owners.owner(&v4([192, 168, 1, 10], 8081)),
            None,
            "holder unknown"
        );
        assert!(!owners.listening(&v4([192, 168, 1, 11], 8081)));
        assert!(!owners.listening(&v4([10, 0, 0, 1], 443)));
        assert_eq!(owners.scans, 0);
    }

    /// Kernel notes of fixed answers.
    #[derive(Default)]
    struct Noted {
        clients: HashMap<SocketEnds, u32>,
        served: Vec<SocketEnds>,
    }

    impl SocketNotes for Noted {
        fn client(&self, ends: &SocketEnds) -> Option<ClientOwner> {
            self.clients.get(ends).map(|&tgid| ClientOwner {
                tgid,
                comm: *b"noted\0\0\0\0\0\0\0\0\0\0\0",
            })
        }

        fn served(&self, ends: &SocketEnds) -> bool {
            self.served.contains(ends)
        }
    }

    fn conn(tgid: u32, local: SockAddr, remote: SockAddr, side: Side) -> ExistingConn {
        ExistingConn {
            tgid,
            fd: 3,
            tuple: Tuple { local, remote },
            side,
        }
    }

    #[test]
    fn clients_come_from_the_kernel_first_then_from_the_start_up_scan() {
        let server = v4([10, 0, 0, 9], 80);
        let (noted, open_before, accepted) = (
            v4([10, 0, 0, 1], 40001),
            v4([10, 0, 0, 1], 40002),
            v4([10, 0, 0, 1], 40003),
        );
        // The kernel saw 40001 connect; the scan found 40001 (an older
        // socket on the same ends), 40002, and a server socket of ours
        // whose remote end is 40003's.
        let kernel = Noted {
            clients: HashMap::from([(SocketEnds::new(&noted, &server), 7)]),
            ..Noted::default()
        };
        let existing = [
            conn(5, noted, server, Side::Client),
            conn(6, open_before, server, Side::Client),
            conn(8, server, accepted, Side::Server),
        ];
        let mut owners = ProcOwners::new().with_notes(Box::new(kernel), &existing);
        let tgid = |owners: &mut ProcOwners, client| owners.client(client, &server).map(|o| o.tgid);
        assert_eq!(tgid(&mut owners, &noted), Some(7), "the kernel's note wins");
        assert_eq!(owners.client(&noted, &server).unwrap().comm[..5], *b"noted");
        assert_eq!(tgid(&mut owners, &open_before), Some(6));
        assert_eq!(tgid(&mut owners, &accepted), None, "a server socket");
        // Seen from its other end: the server's socket was open.
        assert!(owners.serves(&server, &accepted));
        // An IPv4 peer of a dual-stack socket, as the scan reads it.
        let mapped = |v4: [u8; 4], port| {
            let mut addr = [0u8; 16];
            addr[10..12].copy_from_slice(&[0xff, 0xff]);
            addr[12..].copy_from_slice(&v4);
            SockAddr {
                addr,
                port,
                family: AF_INET6,
            }
        };
        let dual = conn(
            9,
            mapped([10, 0, 0, 1], 40004),
            mapped([10, 0, 0, 9], 80),
            Side::Client,
        );
        let mut owners = ProcOwners::new().with_notes(Box::new(Noted::default()), &[dual]);
        assert_eq!(
            owners
                .client(&v4([10, 0, 0, 1], 40004), &server)
                .map(|o| o.tgid),
            Some(9)
        );
    }

    #[test]
    fn a_server_end_is_local_when_the_kernel_saw_it_accepted() {
        let (server, client) = (v4([10, 0, 0, 9], 8080), v4([10, 0, 0, 1], 40001));
        let kernel = Noted {
            served: vec![SocketEnds::new(&server, &client)],
            ..Noted::default()
        };
        let mut owners = ProcOwners::new().with_notes(Box::new(kernel), &[]);
        owners.scanned = Some(Instant::now()); // no rescan of the real /proc
        owners.scan_tokens = -1e9; // and none later
        assert!(owners.serves(&server, &client));
        assert!(!owners.serves(&server, &v4([10, 0, 0, 1], 40002)));
    }

    #[test]
    fn a_wildcard_listener_is_local_at_its_own_addresses_only() {
        let mut tables = Tables::default();
        parse_table(TCP, AF_INET, &mut tables);
        let holders = HashMap::from([(1001, 11)]);
        let mut owners = ProcOwners::new();
        owners.add(&tables, &holders);
        owners.scanned = Some(Instant::now()); // no rescan of the real /proc
        owners.scan_tokens = -1e9; // and none later
                                   // 0.0.0.0:8080 in a namespace whose sockets use 192.168.1.10.
        let client = v4([192, 168, 1, 11], 40000);
        assert!(owners.listening(&v4([10, 9, 9, 9], 8080)));
        assert!(!owners.serves(&v4([10, 9, 9, 9], 8080), &client));
        assert!(owners.serves(&v4([192, 168, 1, 10], 8080), &client));
    }

    #[test]
    fn finds_its_own_listener_live() {
        use std::net::TcpListener;
        let me = std::process::id();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let any = TcpListener::bind("0.0.0.0:0").unwrap();
        let any_port = any.local_addr().unwrap().port();
        let mut owners = ProcOwners::new();
        assert_eq!(owners.owner(&v4([127, 0, 0, 1], port)), Some(me));
        assert_eq!(owners.owner(&v4([10, 9, 8, 7], any_port)), Some(me));
        let scans = owners.scans;
        assert!(!owners.listening(&v4([10, 9, 8, 7], port)));
        assert_eq!(owners.scans, scans + 1, "a new address that misses rescans");
        assert!(!owners.listening(&v4([10, 9, 8, 7], port)));
        assert_eq!(
            owners.scans,
            scans + 1,
            "an address that missed is not looked for again at once"
        );
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let v6_port = v6.local_addr().unwrap().port();
            let mut loopback = [0; 16];
            loopback[15] = 1;
            let mut owners = ProcOwners::new();
            let addr = SockAddr {
                addr: loopback,
                port: v6_port,
                family: AF_INET6,
            };
            assert_eq!(owners.owner(&addr), Some(me));
        }
    }
}
