"""Process side of `qroute.fabric.probe`: a TCP ping-pong and bulk server and client, each in a namespace.

    python -m qroute.fabric.pingpong serve --netns NS1 --bind ADDR1    # prints its port; serves until stdin closes
    python -m qroute.fabric.pingpong ping --netns NS0 --to ADDR1 --port P --count N     # JSON round trips (s)
    python -m qroute.fabric.pingpong bulk --netns NS0 --to ADDR1 --port P --nbytes B --repeats R   # JSON seconds

The receiver hashes what it gets (SHA-256, ~1-2 GB/s per core): that bounds the rates it can measure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import socket
import struct
import sys
import time

from qroute.fabric.host import FabricError, enter_namespace
from qroute.fabric.probe import CHUNK, CLIENT_TIMEOUT_S, HEADER, recv_exact

SERVER_IDLE_S = 120.0


def receive_digest(conn: socket.socket, nbytes: int) -> bytes:
    digest, left = hashlib.sha256(), nbytes
    while left:
        chunk = conn.recv(min(left, CHUNK))
        if not chunk:
            raise ConnectionError(f"peer closed with {left} of {nbytes} bytes missing")
        digest.update(chunk)
        left -= len(chunk)
    return digest.digest()


def serve_one(conn: socket.socket) -> None:
    mode, count, nbytes = HEADER.unpack(recv_exact(conn, HEADER.size))
    for _ in range(count):
        conn.sendall(recv_exact(conn, 1) if mode == b"p" else receive_digest(conn, nbytes))


def serve(bind: str) -> None:
    """Serve requests one connection at a time until stdin closes (or SERVER_IDLE_S without one)."""
    listener = socket.create_server((bind, 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [], SERVER_IDLE_S)
        if not ready or sys.stdin in ready:
            return
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                serve_one(conn)
            except (OSError, struct.error) as e:  # a client that gave up or spoke garbage: serve the next
                print(f"probe server: {e}", file=sys.stderr)


def connect(to: str, port: int, mode: bytes, count: int, nbytes: int = 1) -> socket.socket:
    sock = socket.create_connection((to, port), timeout=CLIENT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(HEADER.pack(mode, count, nbytes))
    return sock


def ping(to: str, port: int, count: int) -> list[float]:
    rtts = []
    with connect(to, port, b"p", count) as sock:
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"x")
            recv_exact(sock, 1)
            rtts.append(time.perf_counter() - start)
    return rtts


def bulk(to: str, port: int, nbytes: int, count: int) -> list[float]:
    seconds = []
    with connect(to, port, b"b", count, nbytes) as sock:
        for _ in range(count):
            payload = os.urandom(nbytes)
            expected = hashlib.sha256(payload).digest()
            start = time.perf_counter()
            sock.sendall(payload)
            got = recv_exact(sock, len(expected))
            seconds.append(time.perf_counter() - start)
            if got != expected:
                raise FabricError(f"{nbytes} bytes sent to {to}:{port} arrived altered (SHA-256 mismatch)")
    return seconds


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qroute.fabric.pingpong", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("serve", "ping", "bulk"))
    p.add_argument("--netns", required=True)
    p.add_argument("--bind")
    p.add_argument("--to")
    p.add_argument("--port", type=int)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--nbytes", type=int, default=8 << 20)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    enter_namespace(args.netns)
    if args.mode == "serve":
        serve(args.bind)
        return 0
    if args.mode == "ping":
        result = ping(args.to, args.port, args.count)
    else:
        result = bulk(args.to, args.port, args.nbytes, args.repeats)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
