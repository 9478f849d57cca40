#!/usr/bin/python3
"""A gRPC peer for the end-to-end suite, on Debian's python3-grpcio, with
raw-bytes generic handlers (no protoc, no generated code).

Server: `grpc_peer.py serve --port P --log FILE` serves `shop.Cart`:
  - `Add` (unary): answers OK with `ok ` and the request, or NOT_FOUND
    (its message naming the rest of the request) when the request's first
    byte is `!`;
  - `List` (server streaming): streams as many messages as the request's
    first byte says, then OK;
  - `Upload` (client streaming): reads every message, answers their count.
  Each finished call is one log line: `METHOD CODE` (CODE as a number).

Client: `grpc_peer.py call --port P --unary N --failing F --streams S
  [--message M] [--metadata KEY=VALUE ...]` makes N unary calls (F of them
  failing) with M as the request (`x` by default; `!` and M when failing),
  S server-streaming calls of 5 messages and S client-streaming calls of 3
  messages, over one channel, every call with the metadata given, and
  prints its own tally as JSON: {"Add": {"0": n, "5": f}, ...}.
"""

import argparse
import json
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "shop.Cart"


def serve(args):
    lock = threading.Lock()
    log = open(args.log, "a", buffering=1)

    def record(method, code):
        with lock:
            log.write(f"{method} {code.value[0]}\n")

    def add(request, context):
        if request[:1] == b"!":
            record("Add", grpc.StatusCode.NOT_FOUND)
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                "no such item " + request[1:].decode(errors="replace"),
            )
        record("Add", grpc.StatusCode.OK)
        return b"ok " + request

    def list_items(request, context):
        count = request[0] if request else 0
        for i in range(count):
            yield bytes([i]) * 32
        record("List", grpc.StatusCode.OK)

    def upload(request_iterator, context):
        n = sum(1 for _ in request_iterator)
        record("Upload", grpc.StatusCode.OK)
        return bytes([n])

    handlers = {
        "Add": grpc.unary_unary_rpc_method_handler(add),
        "List": grpc.unary_stream_rpc_method_handler(list_items),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def call(args):
    tally = {}

    def count(method, code):
        tally.setdefault(method, {}).setdefault(str(code.value[0]), 0)
        tally[method][str(code.value[0])] += 1

    metadata = [tuple(kv.split("=", 1)) for kv in args.metadata]
    message = args.message.encode()
    with grpc.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        add = channel.unary_unary(f"/{SERVICE}/Add")
        list_items = channel.unary_stream(f"/{SERVICE}/List")
        upload = channel.stream_unary(f"/{SERVICE}/Upload")
        for i in range(args.unary):
            request = b"!" + message if i < args.failing else message
            try:
                add(request, timeout=10, metadata=metadata)
                count("Add", grpc.StatusCode.OK)
            except grpc.RpcError as e:
                count("Add", e.code())
        for _ in range(args.streams):
            got = list(list_items(bytes([5]), timeout=10, metadata=metadata))
            assert len(got) == 5, got
            count("List", grpc.StatusCode.OK)
        for _ in range(args.streams):
            upload(iter([b"a", b"b", b"c"]), timeout=10, metadata=metadata)
            count("Upload", grpc.StatusCode.OK)
    json.dump(tally, sys.stdout)
    print(flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--log", required=True)
    c = sub.add_parser("call")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--unary", type=int, default=10)
    c.add_argument("--failing", type=int, default=0)
    c.add_argument("--streams", type=int, default=0)
    c.add_argument("--message", default="x")
    c.add_argument("--metadata", action="append", default=[])
    args = parser.parse_args()
    serve(args) if args.mode == "serve" else call(args)


if __name__ == "__main__":
    main()
