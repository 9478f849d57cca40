//! Workload of `tests/bypass.rs`: a single-threaded, blocking HTTP/1.1
//! keep-alive server whose message BODIES move through the syscalls that
//! bypass read(2)/write(2), so the suite can check that the tracer keeps its
//! stream positions exact whatever moved the bytes.
//!
//! ```text
//! bypass_server --port P --body-via MODE --request-body-via MODE2 --body-size N --log PATH
//! ```
//!
//! Every request is answered `200 OK` with `Content-Length: N` and N bytes of
//! `tracer_e2e::noise(N, N)` (so a client can check them), except
//! `/barrier/...`, answered `204` without a body (the harness's barrier).
//! Heads always go out with one plain `write` and come in through plain
//! `read`s; the response body goes out via MODE:
//! - `write`: plain write(2), the control;
//! - `splice`: from a memfd through a pipe into the socket, splice(2) twice;
//! - `sendfile`: sendfile(2) from the memfd;
//! - `pwritev2`: pwritev2(2) with offset -1 (the socket has no file position);
//! - `sendmmsg`: sendmmsg(2), the body split into several messages;
//! - `io_uring`: IORING_OP_SEND, submitted with io_uring_enter(2).
//!
//! A request body (`Content-Length`) is consumed via MODE2: `read` (the
//! control), `splice` (socket → pipe, the pipe drained with read(2)),
//! `preadv2` (offset -1), `recvmmsg` or `io_uring` (IORING_OP_RECV).
//!
//! `copy_file_range` is not a mode: it refuses sockets (EINVAL), which the
//! server checks at startup on its listening socket.
//!
//! Ground truth: one line per response in `--log`, in the access-log format
//! the suite shares with nginx (`tests/src/accesslog.rs`), written after the
//! response went out.

use std::fs::File;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use io_uring::{opcode, types, IoUring};

/// Bytes per `read` of a request head: at most this much of a request body
/// comes in with its head, the rest is left to the mode under test.
const HEAD_READ: usize = 1024;
/// Largest chunk moved per syscall on the request side (and a pipe's default
/// capacity, so a splice into the pipe never waits for a drain).
const CHUNK: usize = 64 << 10;
/// Messages per sendmmsg/recvmmsg call.
const MESSAGES: usize = 4;

#[derive(Clone, Copy, Debug)]
enum BodyVia {
    Write,
    Splice,
    Sendfile,
    Pwritev2,
    Sendmmsg,
    IoUring,
}

#[derive(Clone, Copy, Debug)]
enum RequestBodyVia {
    Read,
    Splice,
    Preadv2,
    Recvmmsg,
    IoUring,
}

struct Args {
    port: u16,
    /// Accept with no address buffer (`accept(fd, NULL, NULL)`), as libuv
    /// and Node.js do, instead of std's `accept4` with one.
    accept_without_address: bool,
    body_via: BodyVia,
    request_body_via: RequestBodyVia,
    body_size: usize,
    log: String,
}

fn parse_args() -> Result<Args, String> {
    let mut port = None;
    let mut body_via = BodyVia::Write;
    let mut request_body_via = RequestBodyVia::Read;
    let mut body_size = 0;
    let mut log = None;
    let mut accept_without_address = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = Some(value.parse().map_err(|e| format!("--port: {e}"))?),
            "--body-size" => body_size = value.parse().map_err(|e| format!("--body-size: {e}"))?,
            "--log" => log = Some(value),
            "--accept" => {
                accept_without_address = match value.as_str() {
                    "std" => false,
                    "without-address" => true,
                    other => return Err(format!("unknown --accept {other}")),
                }
            }
            "--body-via" => {
                body_via = match value.as_str() {
                    "write" => BodyVia::Write,
                    "splice" => BodyVia::Splice,
                    "sendfile" => BodyVia::Sendfile,
                    "pwritev2" => BodyVia::Pwritev2,
                    "sendmmsg" => BodyVia::Sendmmsg,
                    "io_uring" => BodyVia::IoUring,
                    other => return Err(format!("unknown --body-via {other}")),
                }
            }
            "--request-body-via" => {
                request_body_via = match value.as_str() {
                    "read" => RequestBodyVia::Read,
                    "splice" => RequestBodyVia::Splice,
                    "preadv2" => RequestBodyVia::Preadv2,
                    "recvmmsg" => RequestBodyVia::Recvmmsg,
                    "io_uring" => RequestBodyVia::IoUring,
                    other => return Err(format!("unknown --request-body-via {other}")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        port: port.ok_or("--port is required")?,
        accept_without_address,
        body_via,
        request_body_via,
        body_size,
        log: log.ok_or("--log is required")?,
    })
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("bypass_server: {e}");
        std::process::exit(2);
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:{}: {e}", args.port));
    let mut server = Server::new(&args).unwrap_or_else(|e| panic!("setting up: {e}"));
    server.check_copy_file_range_refuses(listener.as_raw_fd());
    println!(
        "listening on 127.0.0.1:{}, body via {:?}, request body via {:?}",
        args.port, args.body_via, args.request_body_via
    );
    // std's accept is accept4(2) (with SOCK_CLOEXEC), where the tracer
    // registers a server's connections.
    for connection in 1u64.. {
        let accepted = if args.accept_without_address {
            accept_without_address(&listener)
        } else {
            listener.accept().map(|(stream, _)| stream)
        };
        match accepted {
            Ok(stream) => {
                if let Err(e) = server.serve(stream.as_raw_fd(), connection) {
                    eprintln!("connection {connection}: {e}");
                }
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// `accept(fd, NULL, NULL)`: the kernel writes no peer address.
fn accept_without_address(listener: &TcpListener) -> io::Result<TcpStream> {
    // SAFETY: a listening socket's fd; NULL address and length pointers
    // are allowed.
    let fd = unsafe { libc::accept(listener.as_raw_fd(), ptr::null_mut(), ptr::null_mut()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

/// One parsed request head.
struct Request {
    method: String,
    uri: String,
    content_length: usize,
    close: bool,
}

struct Server {
    body_via: BodyVia,
    request_body_via: RequestBodyVia,
    body: Vec<u8>,
    /// The body again, in a memfd: the source of splice and sendfile.
    body_file: File,
    /// (read end, write end), empty between calls.
    pipe: (OwnedFd, OwnedFd),
    ring: IoUring,
    /// Where request bodies land; their bytes are not looked at.
    scratch: Vec<u8>,
    log: File,
}

impl Server {
    fn new(args: &Args) -> io::Result<Self> {
        let body = tracer_e2e::noise(args.body_size, args.body_size as u64);
        // SAFETY: a NUL-terminated name and valid flags.
        let memfd =
            cvt(unsafe { libc::memfd_create(c"body".as_ptr(), libc::MFD_CLOEXEC) } as isize)?;
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let mut body_file = unsafe { File::from_raw_fd(memfd as RawFd) };
        body_file.write_all(&body)?;
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as isize)?;
        // SAFETY: pipe2 returned two new descriptors that nothing else owns.
        let pipe = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let log = File::options().create(true).append(true).open(&args.log)?;
        Ok(Self {
            body_via: args.body_via,
            request_body_via: args.request_body_via,
            body,
            body_file,
            pipe,
            ring: IoUring::new(8)?,
            scratch: vec![0; CHUNK],
            log,
        })
    }

    /// copy_file_range(2) into a socket must fail with EINVAL (the kernel
    /// copies between regular files only); if a kernel ever accepts it, it
    /// becomes a way around the tracer's hooks and this workload must grow a
    /// mode for it.
    fn check_copy_file_range_refuses(&self, socket: RawFd) {
        let mut offset: libc::loff_t = 0;
        // SAFETY: valid descriptors and offset pointer; a null out-offset is allowed.
        let ret = unsafe {
            libc::copy_file_range(
                self.body_file.as_raw_fd(),
                &mut offset,
                socket,
                ptr::null_mut(),
                1,
                0,
            )
        };
        let err = io::Error::last_os_error();
        assert!(
            ret == -1 && err.raw_os_error() == Some(libc::EINVAL),
            "copy_file_range into a socket returned {ret} ({err}), not EINVAL: \
             it can move socket bytes and needs a mode here"
        );
    }

    /// Serves one connection until the client closes it (or asks to).
    fn serve(&mut self, socket: RawFd, connection: u64) -> io::Result<()> {
        let mut pending = Vec::new();
        let mut served = 0u64;
        loop {
            let Some(request) = read_head(socket, &mut pending)? else {
                return Ok(());
            };
            // The body: first what came in with the head, then the mode's.
            let already_read = request.content_length.min(pending.len());
            pending.drain(..already_read);
            self.consume_request_body(socket, request.content_length - already_read)?;

            let (status, body_len) = if request.uri.starts_with("/barrier/") {
                (204, 0)
            } else {
                (200, self.body.len())
            };
            let reason = if status == 200 { "OK" } else { "No Content" };
            let head = if status == 204 {
                format!("HTTP/1.1 {status} {reason}\r\n\r\n")
            } else {
                format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {body_len}\r\n\r\n"
                )
            };
            move_all(head.len(), |done, left| {
                // SAFETY: the pointer and length stay inside `head`.
                cvt(unsafe { libc::write(socket, head[done..].as_ptr().cast(), left) })
            })?;
            if body_len > 0 {
                self.send_body(socket)?;
            }
            served += 1;
            // One write per line: a reader never sees half of one.
            let line = format!(
                "{} {status} {} {connection} {served} OK {}\n",
                request.method,
                request.uri,
                head.len() + body_len
            );
            self.log.write_all(line.as_bytes())?;
            if request.close {
                return Ok(());
            }
        }
    }

    fn send_body(&mut self, socket: RawFd) -> io::Result<()> {
        let body = &self.body;
        let file = self.body_file.as_raw_fd();
        let (pipe_out, pipe_in) = (self.pipe.0.as_raw_fd(), self.pipe.1.as_raw_fd());
        let ring = &mut self.ring;
        match self.body_via {
            BodyVia::Write => move_all(body.len(), |done, left| {
                // SAFETY: the pointer and length stay inside `body`.
                cvt(unsafe { libc::write(socket, body[done..].as_ptr().cast(), left) })
            }),
            BodyVia::Splice => move_all(body.len(), |done, left| {
                let mut offset = done as libc::loff_t;
                // SAFETY: valid descriptors; the in-offset is ours, the pipe has none.
                let in_pipe = cvt(unsafe {
                    libc::splice(file, &mut offset, pipe_in, ptr::null_mut(), left, 0)
                })?;
                // Everything into the socket, so the pipe is empty again.
                move_all(in_pipe, |_, rest| {
                    // SAFETY: valid descriptors; neither a pipe nor a socket has an offset.
                    cvt(unsafe {
                        libc::splice(pipe_out, ptr::null_mut(), socket, ptr::null_mut(), rest, 0)
                    })
                })?;
                Ok(in_pipe)
            }),
            BodyVia::Sendfile => move_all(body.len(), |done, left| {
                let mut offset = done as libc::off_t;
                // SAFETY: valid descriptors and offset pointer.
                cvt(unsafe { libc::sendfile(socket, file, &mut offset, left) })
            }),
            BodyVia::Pwritev2 => move_all(body.len(), |done, left| {
                let iov = libc::iovec {
                    iov_base: body[done..].as_ptr() as *mut _,
                    iov_len: left,
                };
                // SAFETY: one iovec inside `body`; offset -1 means "no offset".
                cvt(unsafe { libc::pwritev2(socket, &iov, 1, -1, 0) })
            }),
            BodyVia::Sendmmsg => move_all(body.len(), |done, left| {
                let mut iovs = split(&body[done..], left).map(|(ptr, len)| libc::iovec {
                    iov_base: ptr as *mut _,
                    iov_len: len,
                });
                let count = non_empty(&iovs);
                let mut messages = iovs.each_mut().map(one_iov_message);
                // SAFETY: `count` headers, each with one iovec inside `body`.
                let sent = cvt(
                    unsafe { libc::sendmmsg(socket, messages.as_mut_ptr(), count, 0) } as isize,
                )?;
                // A message sent in part and then the next one would reorder
                // the stream: a blocking socket never does it, check anyway.
                let mut moved = 0;
                for (i, (message, iov)) in messages.iter().zip(&iovs).take(sent).enumerate() {
                    moved += message.msg_len as usize;
                    if message.msg_len as usize != iov.iov_len && i + 1 < sent {
                        return Err(io::Error::other("sendmmsg sent a message in part"));
                    }
                }
                Ok(moved)
            }),
            BodyVia::IoUring => move_all(body.len(), |done, left| {
                let len = u32::try_from(left).unwrap_or(u32::MAX);
                let send = opcode::Send::new(types::Fd(socket), body[done..].as_ptr(), len);
                ring_one(ring, &send.build())
            }),
        }
    }

    fn consume_request_body(&mut self, socket: RawFd, len: usize) -> io::Result<()> {
        let scratch = &mut self.scratch;
        let (pipe_out, pipe_in) = (self.pipe.0.as_raw_fd(), self.pipe.1.as_raw_fd());
        let ring = &mut self.ring;
        match self.request_body_via {
            RequestBodyVia::Read => move_all(len, |_, left| {
                // SAFETY: at most `scratch.len()` bytes into `scratch`.
                cvt(unsafe { libc::read(socket, scratch.as_mut_ptr().cast(), left.min(CHUNK)) })
            }),
            RequestBodyVia::Splice => move_all(len, |_, left| {
                // Never more than the body: the next request stays in the socket.
                // SAFETY: valid descriptors; neither a socket nor a pipe has an offset.
                let in_pipe = cvt(unsafe {
                    libc::splice(
                        socket,
                        ptr::null_mut(),
                        pipe_in,
                        ptr::null_mut(),
                        left.min(CHUNK),
                        0,
                    )
                })?;
                move_all(in_pipe, |_, rest| {
                    // SAFETY: at most `scratch.len()` bytes into `scratch`.
                    cvt(unsafe {
                        libc::read(pipe_out, scratch.as_mut_ptr().cast(), rest.min(CHUNK))
                    })
                })?;
                Ok(in_pipe)
            }),
            RequestBodyVia::Preadv2 => move_all(len, |_, left| {
                let iov = libc::iovec {
                    iov_base: scratch.as_mut_ptr().cast(),
                    iov_len: left.min(CHUNK),
                };
                // SAFETY: one iovec inside `scratch`; offset -1 means "no offset".
                cvt(unsafe { libc::preadv2(socket, &iov, 1, -1, 0) })
            }),
            RequestBodyVia::Recvmmsg => move_all(len, |_, left| {
                let mut iovs = split(scratch, left.min(CHUNK)).map(|(ptr, len)| libc::iovec {
                    iov_base: ptr as *mut _,
                    iov_len: len,
                });
                let count = non_empty(&iovs);
                let mut messages = iovs.each_mut().map(one_iov_message);
                // Waits for the first message only; the others take what is
                // already there. Bytes fill the messages in stream order.
                // SAFETY: `count` headers, each with one iovec inside `scratch`.
                let received = cvt(unsafe {
                    libc::recvmmsg(
                        socket,
                        messages.as_mut_ptr(),
                        count,
                        libc::MSG_WAITFORONE,
                        ptr::null_mut(),
                    )
                } as isize)?;
                Ok(messages[..received]
                    .iter()
                    .map(|m| m.msg_len as usize)
                    .sum())
            }),
            RequestBodyVia::IoUring => move_all(len, |_, left| {
                let len = left.min(CHUNK) as u32;
                let recv = opcode::Recv::new(types::Fd(socket), scratch.as_mut_ptr(), len);
                ring_one(ring, &recv.build())
            }),
        }
    }
}

/// Reads (plain `read`, [`HEAD_READ`] bytes at a time) until `pending` holds
/// a whole head, takes it out and parses it. None at a clean end of stream.
fn read_head(socket: RawFd, pending: &mut Vec<u8>) -> io::Result<Option<Request>> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            return parse_head(&String::from_utf8_lossy(&head)).map(Some);
        }
        let mut buf = [0u8; HEAD_READ];
        // SAFETY: at most HEAD_READ bytes into `buf`.
        let n = cvt(unsafe { libc::read(socket, buf.as_mut_ptr().cast(), HEAD_READ) })?;
        if n == 0 {
            return if pending.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed inside a request head",
                ))
            };
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn parse_head(head: &str) -> io::Result<Request> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().ok_or_else(|| bad("no method"))?;
    let uri = request_line.next().ok_or_else(|| bad("no request URI"))?;
    let mut request = Request {
        method: method.to_string(),
        uri: uri.to_string(),
        content_length: 0,
        close: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            request.content_length = value.parse().map_err(|_| bad("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            request.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(request)
}

/// Calls `step(done, left)` until `total` bytes moved; `step` returns how
/// many it moved, and moving none is an error (the peer went away).
fn move_all(
    total: usize,
    mut step: impl FnMut(usize, usize) -> io::Result<usize>,
) -> io::Result<()> {
    let mut done = 0;
    while done < total {
        match step(done, total - done)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("no progress after {done} of {total} bytes"),
                ))
            }
            n => done += n,
        }
    }
    Ok(())
}

/// The first `len` bytes of `buf` cut into [`MESSAGES`] (pointer, length)
/// pieces (the last ones empty when `len` is small).
fn split(buf: &[u8], len: usize) -> [(*const u8, usize); MESSAGES] {
    let piece = len.div_ceil(MESSAGES);
    std::array::from_fn(|i| {
        let start = (i * piece).min(len);
        let end = ((i + 1) * piece).min(len);
        (buf[start..].as_ptr(), end - start)
    })
}

/// How many of `iovs` have bytes ([`split`] puts the empty ones last).
fn non_empty(iovs: &[libc::iovec]) -> u32 {
    iovs.iter().filter(|iov| iov.iov_len > 0).count() as u32
}

/// An `mmsghdr` with one iovec and no address or control data.
fn one_iov_message(iov: &mut libc::iovec) -> libc::mmsghdr {
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
    message.msg_hdr.msg_iov = iov;
    message.msg_hdr.msg_iovlen = 1;
    message
}

/// Submits one entry with io_uring_enter(2), waits for its completion and
/// returns its result.
fn ring_one(ring: &mut IoUring, entry: &io_uring::squeue::Entry) -> io::Result<usize> {
    // SAFETY: the buffer the entry points at outlives the wait below.
    unsafe { ring.submission().push(entry) }
        .map_err(|_| io::Error::other("the submission queue is full"))?;
    ring.submit_and_wait(1)?;
    let completion = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion after the wait"))?;
    let result = completion.result();
    usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result))
}

/// A syscall's return value, or the errno it left.
fn cvt(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}
