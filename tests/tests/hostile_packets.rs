//! Bad packets against the packet path (`--source packets` on loopback):
//!
//! - frames injected through an AF_PACKET socket: IP and TCP headers cut
//!   short or claiming impossible lengths, IPv4 fragments, IPv6 packets with
//!   a fragment header or more extension headers than the filter walks,
//!   segments whose TCP checksum is wrong, RSTs of flows that never opened,
//!   junk payload for a tuple nobody opened, and a SYN flood: each is
//!   counted under its own cause, exactly, and none makes a series;
//! - real connections whose packets carry IPv4 options, an IPv6 destination
//!   options header, or that a slow reader stalls behind a zero window (the
//!   server probes it): counted exactly against nginx's access log.

use std::io::{BufReader, Write};
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

use tracer_e2e::net::{get_request, read_response};
use tracer_e2e::{privileged, Nginx, Peer, TestDir, Tracer, Want};

/// One frame to inject: its EtherType and network-layer bytes.
struct Frame {
    ethertype: u16,
    bytes: Vec<u8>,
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PSH_ACK: u8 = 0x18;
const RST: u8 = 0x04;
const SYN: u8 = 0x02;

/// Sends `frames` out of loopback, which hands each back as received: the
/// tracer's filter sees it arrive, as it would from a wire.
fn inject(frames: &[Frame]) {
    // SAFETY: plain socket calls on a descriptor owned here.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let ifindex = libc::if_nametoindex(c"lo".as_ptr());
        assert!(ifindex > 0, "no lo");
        for frame in frames {
            let mut to: libc::sockaddr_ll = zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = frame.ethertype.to_be();
            to.sll_ifindex = ifindex as i32;
            to.sll_halen = 6;
            let sent = libc::sendto(
                fd,
                frame.bytes.as_ptr().cast(),
                frame.bytes.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                sent,
                frame.bytes.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        libc::close(fd);
    }
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    !(sum as u16)
}

/// A TCP segment between two addresses (4 or 16 bytes each), its checksum
/// right unless `corrupt`.
#[expect(clippy::too_many_arguments, reason = "one per header field")]
fn tcp(
    src: &[u8],
    dst: &[u8],
    ports: (u16, u16),
    seq: u32,
    flags: u8,
    words: u8,
    payload: &[u8],
    corrupt: bool,
) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[0..2].copy_from_slice(&ports.0.to_be_bytes());
    segment[2..4].copy_from_slice(&ports.1.to_be_bytes());
    segment[4..8].copy_from_slice(&seq.to_be_bytes());
    segment[8..12].copy_from_slice(&1u32.to_be_bytes());
    segment[12] = words << 4;
    segment[13] = flags;
    segment[14..16].copy_from_slice(&65535u16.to_be_bytes());
    segment.extend_from_slice(payload);
    // The pseudo-header sums the same whether its length is 16 or 32 bits.
    let mut pseudo = [src, dst].concat();
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&segment);
    let check = checksum(&pseudo) ^ if corrupt { 0x0101 } else { 0 };
    segment[16..18].copy_from_slice(&check.to_be_bytes());
    segment
}

/// An IPv4 packet with `options` (a multiple of 4 bytes) and fragment
/// field `fragment`.
fn ipv4(src: [u8; 4], dst: [u8; 4], options: &[u8], fragment: u16, l4: &[u8]) -> Frame {
    let header_len = 20 + options.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x40 | (header_len / 4) as u8;
    p[2..4].copy_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
    p[6..8].copy_from_slice(&fragment.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(options);
    let check = checksum(&p);
    p[10..12].copy_from_slice(&check.to_be_bytes());
    p.extend_from_slice(l4);
    Frame {
        ethertype: ETH_P_IP,
        bytes: p,
    }
}

/// An IPv6 packet with extension headers of the types in `extensions`
/// (8 bytes each) before `l4`.
fn ipv6(src: [u8; 16], dst: [u8; 16], extensions: &[u8], l4: &[u8]) -> Frame {
    let mut chain = Vec::new();
    for (i, _) in extensions.iter().enumerate() {
        let next = extensions.get(i + 1).copied().unwrap_or(6);
        // Destination options (PadN) or a fragment header: 8 bytes either way.
        chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
    p[6] = extensions.first().copied().unwrap_or(6);
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p.extend_from_slice(&chain);
    p.extend_from_slice(l4);
    Frame {
        ethertype: ETH_P_IPV6,
        bytes: p,
    }
}

const LOCAL: [u8; 4] = [127, 0, 0, 1];
const LOCAL6: [u8; 16] = {
    let mut a = [0u8; 16];
    a[15] = 1;
    a
};

/// Frames the kernel side must count as `packet_malformed`, one each.
fn malformed(port: u16) -> Vec<Frame> {
    let fine = tcp(&LOCAL, &LOCAL, (40_001, port), 1, PSH_ACK, 5, b"x", false);
    let mut ip_cut = ipv4(LOCAL, LOCAL, &[], 0, &fine);
    ip_cut.bytes.truncate(12);
    let mut bad_ihl = ipv4(LOCAL, LOCAL, &[], 0, &fine);
    bad_ihl.bytes[0] = 0x44;
    let v6 = |ext: &[u8]| {
        let l4 = tcp(&LOCAL6, &LOCAL6, (40_002, port), 1, PSH_ACK, 5, b"x", false);
        ipv6(LOCAL6, LOCAL6, ext, &l4)
    };
    vec![
        ip_cut,
        bad_ihl,
        // The TCP header cut after 12 bytes.
        ipv4(LOCAL, LOCAL, &[], 0, &fine[..12]),
        // Data offset 4 words, less than a header.
        ipv4(
            LOCAL,
            LOCAL,
            &[],
            0,
            &tcp(&LOCAL, &LOCAL, (40_001, port), 1, PSH_ACK, 4, b"x", false),
        ),
        // Data offset 15 words, beyond the packet.
        ipv4(
            LOCAL,
            LOCAL,
            &[],
            0,
            &tcp(&LOCAL, &LOCAL, (40_001, port), 1, PSH_ACK, 15, b"", false),
        ),
        // A first fragment (more fragments) and a later one.
        ipv4(LOCAL, LOCAL, &[], 0x2000, &fine),
        ipv4(LOCAL, LOCAL, &[], 0x0010, &fine),
        // Five destination options headers (the filter walks four), and a
        // fragment header.
        v6(&[60, 60, 60, 60, 60]),
        v6(&[44]),
    ]
}

/// A connected descriptor made into a stream, with the suite's timeouts.
fn stream_of(fd: i32) -> TcpStream {
    // SAFETY: a connected TCP socket this function now owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let timeout = Some(Duration::from_secs(20));
    stream.set_read_timeout(timeout).expect("timeout");
    stream.set_write_timeout(timeout).expect("timeout");
    stream
}

/// A TCP connection to `addr` with `setup` applied to its socket before it
/// connects.
fn connect_with(addr: SocketAddr, setup: impl Fn(i32)) -> TcpStream {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls; the sockaddr structs are fully written.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        setup(fd);
        let rc = match addr {
            SocketAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                libc::connect(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            }
            SocketAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                libc::connect(
                    fd,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        };
        assert_eq!(rc, 0, "connect {addr}: {}", std::io::Error::last_os_error());
        stream_of(fd)
    }
}

/// Sets a socket option from `value`'s bytes, or panics naming it.
fn set_option(fd: i32, level: i32, name: i32, value: &[u8], what: &str) {
    // SAFETY: `value` spans its length.
    let rc =
        unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as u32) };
    assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
}

/// `count` keep-alive GETs of `path` on `stream`, each answered 200.
fn get_on(stream: TcpStream, path: &str, count: usize) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    for _ in 0..count {
        writer
            .write_all(get_request(path).as_bytes())
            .expect("write");
        let response = read_response(&mut reader, false).expect("response");
        assert_eq!(response.status, 200, "{path}");
    }
}

/// The TcpExt counter `name` of /proc/net/netstat.
fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name}"))
}

fn drops(kind: &str, cause: &str, count: u64) -> Want {
    Want::metric(&format!("tracer_{kind}_drops_total"))
        .label("cause", cause)
        .is(count)
}

#[test]
fn bad_packets_are_counted_by_cause_and_make_no_series() {
    if !privileged("bad_packets_are_counted_by_cause_and_make_no_series") {
        return;
    }
    let dir = TestDir::new("pkt-hostile");
    let tracer = Tracer::start(&dir, &["--source", "packets", "--interfaces", "lo"]);
    let nginx = Nginx::start(&dir, "");
    let port = nginx.port();

    let frames = malformed(port);
    let malformed_count = frames.len() as u64;
    inject(&frames);

    // A request for /forged on a tuple nobody opened, its checksum wrong,
    // over IPv4 and IPv6: the kernel drops it, and so does the tracer.
    let forged = get_request("/forged");
    let v4 = tcp(
        &LOCAL,
        &LOCAL,
        (40_010, port),
        7,
        PSH_ACK,
        5,
        forged.as_bytes(),
        true,
    );
    let v6 = tcp(
        &LOCAL6,
        &LOCAL6,
        (40_011, port),
        7,
        PSH_ACK,
        5,
        forged.as_bytes(),
        true,
    );
    inject(&[
        ipv4(LOCAL, LOCAL, &[], 0, &v4),
        ipv6(LOCAL6, LOCAL6, &[], &v6),
    ]);

    // Junk for a tuple nobody opened, to a port nobody listens on (IPv4
    // options too): a flow seen mid-stream, then the kernel's RST.
    let junk = tcp(
        &LOCAL,
        &LOCAL,
        (40_020, 9),
        7,
        PSH_ACK,
        5,
        &[0x16; 300],
        false,
    );
    inject(&[ipv4(LOCAL, LOCAL, &[1, 1, 1, 0], 0, &junk)]);

    tracer.barrier(&nginx);
    let before = tracer
        .scrape()
        .count("tracer_user_drops_total", &[("cause", "packet_no_flow")]);
    // RSTs of tuples nobody opened: the kernel answers none of them.
    let rsts: Vec<Frame> = (0..5)
        .map(|i| {
            ipv4(
                LOCAL,
                LOCAL,
                &[],
                0,
                &tcp(&LOCAL, &LOCAL, (40_030 + i, port), 9, RST, 5, b"", false),
            )
        })
        .collect();
    inject(&rsts);

    tracer.barrier(&nginx);
    tracer.expect(&[
        drops("kernel", "packet_malformed", malformed_count),
        drops("user", "packet_bad_checksum", 2),
        drops("user", "packet_no_flow", before + rsts.len() as u64),
        drops("user", "packet_malformed", 0),
        Want::server("nginx", "/forged").is(0),
        Want::metric("http_server_request_duration_seconds_count")
            .label("service_name", "unknown")
            .is(0),
    ]);
    assert!(!nginx.access_log().has_path("/forged"));

    // A SYN flood from 100,000 tuples, past the handshake table's 65,536:
    // the kernel answers each with an RST; afterwards a real request still
    // counts exactly.
    let flood: Vec<Frame> = (0..100_000u32)
        .map(|i| {
            let src = [127, 1, (i >> 8) as u8, i as u8];
            let port_from = 1024 + (i >> 16) as u16;
            ipv4(
                src,
                LOCAL,
                &[],
                0,
                &tcp(&src, &LOCAL, (port_from, 9), i, SYN, 5, b"", false),
            )
        })
        .collect();
    inject(&flood);
    let stream = connect_with(nginx.addr(), |_| {});
    get_on(stream, "/after-flood", 3);
    tracer.barrier(&nginx);
    let served = nginx.access_log().under("/after-flood").count() as u64;
    assert_eq!(served, 3);
    tracer.expect(&[
        Want::server("nginx", "/after-flood").is(served),
        drops("kernel", "packet_malformed", malformed_count),
        drops("user", "packet_malformed", 0),
    ]);
}

#[test]
fn ip_options_extension_headers_and_zero_windows_count_exactly() {
    if !privileged("ip_options_extension_headers_and_zero_windows_count_exactly") {
        return;
    }
    let dir = TestDir::new("pkt-options");
    let tracer = Tracer::start(&dir, &["--source", "packets", "--interfaces", "lo"]);
    let nginx = Nginx::start(&dir, "        location /big/ { sendfile on; }\n");
    dir.write("www/big/file.bin", tracer_e2e::noise(2 << 20, 0x0d15_ea5e));

    // IPv4 options on every packet the client sends: three no-ops and an
    // end of list, so the header is 24 bytes.
    let options = connect_with(nginx.addr(), |fd| {
        set_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            &[1, 1, 1, 0],
            "IP_OPTIONS",
        );
    });
    get_on(options, "/ipv4-options", 7);

    // An IPv6 destination options header (PadN) on every packet the client
    // sends.
    let dstopts = connect_with(nginx.addr_v6(), |fd| {
        set_option(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_DSTOPTS,
            &[0, 0, 1, 4, 0, 0, 0, 0],
            "IPV6_DSTOPTS",
        );
    });
    get_on(dstopts, "/ipv6-dstopts", 5);

    // A reader with a 4 KiB buffer that reads nothing for two seconds while
    // nginx sends 2 MiB: its window closes and nginx probes it.
    let probes = tcp_ext("TCPWinProbe");
    let slow = connect_with(nginx.addr(), |fd| {
        set_option(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &4096i32.to_ne_bytes(),
            "SO_RCVBUF",
        );
    });
    let mut writer = slow.try_clone().expect("clone");
    writer
        .write_all(get_request("/big/file.bin").as_bytes())
        .expect("write");
    std::thread::sleep(Duration::from_secs(2));
    let response = read_response(&mut BufReader::new(slow), false).expect("response");
    assert_eq!(response.body.len(), 2 << 20);
    assert!(
        tcp_ext("TCPWinProbe") > probes,
        "the window never closed: no zero-window probe was sent"
    );

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let count = |path: &str| log.under(path).count() as u64;
    let body: u64 = log.under("/big/").filter_map(|e| e.body_bytes_sent).sum();
    assert_eq!(
        (
            count("/ipv4-options"),
            count("/ipv6-dstopts"),
            count("/big/")
        ),
        (7, 5, 1)
    );
    tracer.expect(&[
        Want::server("nginx", "/ipv4-options").status(200).is(7),
        Want::server("nginx", "/ipv6-dstopts").status(200).is(5),
        Want::server("nginx", "/big/file.bin").status(200).is(1),
        Want::metric("http_server_response_body_size_bytes_sum")
            .label("http_route", "/big/file.bin")
            .is(body),
        drops("kernel", "packet_malformed", 0),
        drops("user", "packet_bad_checksum", 0),
        Want::metric("tracer_parser_resyncs_total")
            .label("protocol", "http1")
            .is(0),
    ]);
}
