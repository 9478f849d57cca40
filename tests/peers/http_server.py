"""Python peer of the end-to-end suite: a real threaded HTTP/1.1 server.

Serves, on 127.0.0.1:--port, with keep-alive (protocol_version HTTP/1.1):
  GET  /barrier/...  204, no body (the harness's "everything before is processed" marker)
  GET  /slow...      sleeps 100 ms, then 200 "slow\\n" (latency histogram test)
  GET  /hang?s=N     sleeps N seconds (default 3), then 200 "late\n" (timeout tests)
  GET  /status/CODE  answers status CODE (200-599) with body "status CODE\n", none
                     for 204 and 304 (error storms); any other CODE is a 400
  GET  /chunked...   200 with Transfer-Encoding: chunked, CHUNKS chunks of varied
                     sizes (about 1.1 MiB), each chunk one write (chunked test)
  POST anything      reads the Content-Length body, 200 "received N\\n" (upload test)
  GET  anything else 200 "ok\\n"

Writes one access-log line per answered request to --log, in the format the
harness shares with nginx (tests/src/accesslog.rs):
  METHOD STATUS URI CONNECTION CONNECTION_REQUESTS OK -
"""

import argparse
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Sizes cycle through values below, at and above the tracer's default 4096-byte
# capture, so chunk headers land both inside and beyond captured bytes.
CHUNK_SIZES = [1, 100, 1000, 4000, 5000, 8192, 2000, 3000, 16, 4096, 12000]
CHUNKS = 400

_connections = itertools.count(1)
_log_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    log_file = None

    def setup(self):
        super().setup()
        self.connection_id = next(_connections)
        self.requests_on_connection = 0

    def log_request(self, code="-", size="-"):
        self.requests_on_connection += 1
        method = getattr(self, "command", None) or "-"
        uri = getattr(self, "path", None) or "-"
        line = f"{method} {int(code)} {uri} {self.connection_id} {self.requests_on_connection} OK -\n"
        with _log_lock:
            self.log_file.write(line)
            self.log_file.flush()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # no per-request stderr noise; the access log is the record

    def _reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/barrier/"):
            self.send_response(204)
            self.end_headers()
        elif self.path.startswith("/slow"):
            time.sleep(0.1)
            self._reply(200, b"slow\n")
        elif self.path.startswith("/hang"):
            seconds = 3.0
            if "?s=" in self.path:
                seconds = float(self.path.split("?s=", 1)[1])
            time.sleep(seconds)
            try:
                self._reply(200, b"late\n")
            except OSError:
                pass  # the client gave up and closed
        elif self.path.startswith("/status/"):
            self._status(self.path[len("/status/") :].split("?", 1)[0].split("/", 1)[0])
        elif self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(CHUNKS):
                size = CHUNK_SIZES[i % len(CHUNK_SIZES)]
                data = bytes([97 + i % 26]) * size
                self.wfile.write(b"%x\r\n%s\r\n" % (size, data))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._reply(200, b"ok\n")

    def _status(self, text):
        try:
            code = int(text)
        except ValueError:
            code = 0
        if not 200 <= code <= 599:
            self._reply(400, b"bad status code\n")
        elif code in (204, 304):
            self.send_response(code)
            self.end_headers()
        else:
            self._reply(code, b"status %d\n" % code)

    def do_POST(self):
        remaining = int(self.headers.get("Content-Length", "0"))
        received = 0
        while remaining > 0:
            block = self.rfile.read(min(remaining, 1 << 16))
            if not block:
                break
            received += len(block)
            remaining -= len(block)
        self._reply(200, b"received %d\n" % received)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    args = parser.parse_args()
    Handler.log_file = open(args.log, "a", encoding="utf-8")
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    print(f"listening on {args.bind}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
