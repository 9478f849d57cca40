//! Network helpers: free ports, a minimal HTTP/1.1 client on
//! `std::net::TcpStream` (enough to write exact bytes — pipelined requests,
//! junk — and read responses framed by Content-Length, chunked encoding or
//! end of stream), and curl invocations that report per-transfer results.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

/// Timeout on every socket operation of the test's own HTTP client.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A port free on both 127.0.0.1 and [::1] (nginx listens on both) at the
/// time of the call. Tests run one at a time, so the window before the peer
/// binds it is harmless.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = v4.local_addr().expect("local_addr").port();
        if TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and [::1] after 100 tries");
}

/// Connects with the suite's I/O timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set_write_timeout");
    stream.set_nodelay(true).expect("set_nodelay");
    stream
}

/// True once something accepts TCP connections on `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// One HTTP response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET <path>` on a fresh connection with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> Response {
    let mut stream = connect(addr);
    let request = format!("GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, false).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// A keep-alive `GET` request's bytes.
pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: e2e\r\n\r\n")
}

/// Reads one response. `head_request` says the request was HEAD (no body).
pub fn read_response<R: BufRead>(reader: &mut R, head_request: bool) -> io::Result<Response> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(bad("connection closed inside the headers".into()));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {h:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(response);
    }
    if response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_hex = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| bad(format!("bad chunk size line {size_line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = response.body.len();
            response.body.resize(start + size, 0);
            reader.read_exact(&mut response.body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        response.body.resize(len, 0);
        reader.read_exact(&mut response.body)?;
    } else {
        reader.read_to_end(&mut response.body)?;
    }
    Ok(response)
}

/// What curl reported for one transfer (`-w '%{http_code} %{num_connects}
/// %{time_pretransfer} %{time_total}'`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurlTransfer {
    pub status: u16,
    /// New connections this transfer opened (0 when it reused one).
    pub connects: u32,
    /// Seconds from just before curl sent the request to the end of the
    /// response, by curl's own clock (`time_total - time_pretransfer`).
    pub exchange_s: f64,
}

/// Runs curl once over `urls` (in order, one transfer each, reusing the
/// connection where it can), with `extra` options before the URLs, bodies
/// discarded. Panics if curl fails; returns one entry per transfer.
pub fn curl(extra: &[&str], urls: &[String]) -> Vec<CurlTransfer> {
    let mut cmd = Command::new(crate::require_tool("curl"));
    cmd.args([
        "-sS",
        "--max-time",
        "60",
        "-w",
        "%{http_code} %{num_connects} %{time_pretransfer} %{time_total}\\n",
    ])
    .args(extra);
    for url in urls {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    assert!(
        out.status.success(),
        "curl {extra:?} {urls:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let transfers: Vec<CurlTransfer> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let status = f.next().and_then(|s| s.parse().ok());
            let connects = f.next().and_then(|s| s.parse().ok());
            let pretransfer: Option<f64> = f.next().and_then(|s| s.parse().ok());
            let total: Option<f64> = f.next().and_then(|s| s.parse().ok());
            match (status, connects, pretransfer, total) {
                (Some(status), Some(connects), Some(pretransfer), Some(total)) => CurlTransfer {
                    status,
                    connects,
                    exchange_s: total - pretransfer,
                },
                _ => panic!("unexpected curl -w output line {l:?}"),
            }
        })
        .collect();
    assert_eq!(
        transfers.len(),
        urls.len(),
        "curl reported {} transfers for {} URLs",
        transfers.len(),
        urls.len()
    );
    transfers
}

/// `http://<addr><path>`, with IPv6 addresses bracketed.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}
