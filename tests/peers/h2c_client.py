#!/usr/bin/python3
"""An HTTP/2 client that reaches its server through `Upgrade: h2c` (RFC 7540
section 3.2), for tests/tests/h2c.rs, built on python3-h2 (hyper-h2).

Usage: h2c_client.py PORT PATH [PATH...]

Sends the first PATH as an HTTP/1.1 request asking for the upgrade; after
the server's 101 that request is answered on stream 1, and every further
PATH goes out as a new stream on the same connection, all in flight at
once. Prints `PATH STATUS` for every answered request.
"""

import socket
import sys

import h2.config
import h2.connection
import h2.events


def main():
    port, paths = int(sys.argv[1]), sys.argv[2:]
    sock = socket.create_connection(("127.0.0.1", port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    # Already the header's value: base64url of the SETTINGS payload.
    settings = conn.initiate_upgrade_connection()
    sock.sendall(
        b"GET " + paths[0].encode() + b" HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\n"
        b"HTTP2-Settings: " + settings + b"\r\n\r\n"
    )
    buffered = b""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("connection closed before the 101")
        buffered += chunk
    head, rest = buffered.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        sys.exit("no upgrade: " + head.split(b"\r\n")[0].decode())
    # The preface and every further request in one write: Apache ends an
    # upgraded session that is idle once stream 1 is answered.
    path_of = {1: paths[0]}
    for path in paths[1:]:
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "127.0.0.1")],
            end_stream=True,
        )
        path_of[stream] = path
    sock.sendall(conn.data_to_send())
    status, done = {}, set()
    data = rest
    while len(done) < len(path_of):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status[event.stream_id] = dict(event.headers)[b":status"].decode()
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                done.add(event.stream_id)
        sock.sendall(conn.data_to_send())
        if len(done) < len(path_of):
            data = sock.recv(65536)
            if not data:
                sys.exit("connection closed with streams open")
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()
    for stream, path in sorted(path_of.items()):
        print(path, status[stream])


if __name__ == "__main__":
    main()
